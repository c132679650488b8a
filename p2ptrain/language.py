"""The built-in language-model task ``gpt-char``: a small GPT (gpt.py) learning to predict the next character.

The model reads ``context`` characters and predicts each next one (by
default 5 layers of width 128 with 4 heads over 64 characters: 1,012,992
parameters, the embedding shared with the output layer). Its loss
is the mean cross-entropy in nats per character, and ``val_perplexity`` is
exp of it (the number of equally likely characters the model is, in effect,
choosing between). A model that ignores context can do no better than the
entropy of the character frequencies (``unigram_entropy``); anything below
it was learned from the order of the characters.

The corpus is, by default, the Python standard library's own help texts
(``pydoc_data.topics``: the language reference's topics, about 465,000
characters of English prose and code, about 100 distinct characters), so
the task needs no download. It changes between Python versions, so the
peers of one swarm should run the same one: a different vocabulary is
refused (it is in the fingerprint, ``CharTask.agreement``), even one of as
many characters. ``text=PATH`` trains on any UTF-8 file instead. The
vocabulary is the set of characters of the whole text.

The last ``validation`` fraction of the text is held out: the same for
every peer, and never trained on. The rest is cut into one contiguous
slice per peer. Contiguous, rather than windows dealt out at random,
because that is what separate data owners hold: each peer sees its own
stretch of topics (one the grammar, another the data model), so the
shards differ in content the way real private data does, and only by
exchanging with the others does a peer learn text it never saw. Slices are
also disjoint by construction: no window of one peer overlaps another's.
With one peer (count=1) the slice is the whole training text, the
centralized baseline.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .gpt import GPT, GPTConfig, generate
from .task import TaskError

# Evaluation reads this many windows, evenly spaced over the validation slice: at context 64 that is
# 16,384 characters, a loss steady to about 0.01 nats between window sets, for well under a second a model.
VALIDATION_WINDOWS = 256
SAMPLE_SEED = 1234
PROMPT_LENGTH = 32


def standard_library_text() -> str:
    """The help topics of the standard library's pydoc_data, joined in the sorted order of their names."""
    from pydoc_data.topics import topics

    return "".join(topics[name] for name in sorted(topics))


def read_text(path: str) -> str:
    file = Path(path).expanduser()
    if file.is_dir():
        raise TaskError(f"gpt-char: text={path} is a directory; give the path of a UTF-8 text file in it")
    if not file.is_file():
        raise TaskError(f"gpt-char: text={path}: no such file (relative paths are from {Path.cwd()}); give the path "
                        "of a UTF-8 text file, or leave text out to train on the standard library's help texts")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TaskError(f"gpt-char: text={path} is not UTF-8 text ({error}); convert it, e.g. "
                        f"iconv -f latin1 -t utf-8 {path} > corpus.txt, and pass that file") from None
    except OSError as error:
        raise TaskError(f"gpt-char: text={path}: cannot read it ({error})") from None


def entropy(ids: torch.Tensor, vocab_size: int) -> float:
    """Entropy in nats of the frequencies of ``ids``: the loss of the best model that ignores context."""
    counts = torch.bincount(ids, minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


class Windows(Dataset):
    """Every window of ``context + 1`` consecutive characters of ``ids``: item i is the input ids[i:i+context]
    and the target ids[i+1:i+context+1], the same characters one step ahead."""

    def __init__(self, ids: torch.Tensor, context: int):
        self.ids, self.context = ids, context

    def __len__(self) -> int:
        return max(len(self.ids) - self.context, 0)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} of {len(self)}")
        window = self.ids[i:i + self.context + 1]
        return window[:-1], window[1:]


class CharTask:
    """A GPT of ``layers`` x ``width`` (``heads`` heads) reading ``context`` characters of ``text``
    (a UTF-8 file; by default the standard library's help texts), ``validation`` of it held out."""

    name = "gpt-char"
    headline = "val_loss"  # the figure runs are compared by (the experiment runner's default --metric)
    # For 8 peers in one process on a 2-core CPU (scripts/launch_swarm.py --task gpt-char --in-process),
    # where every peer's steps run one after another on one thread: the default model (1,012,992
    # parameters) takes about 80 to 95 ms a step at batch 16, so 8 peers x 720 steps are about 10 minutes
    # of one core, the 9 evaluations per peer included. One step per round: the peers'
    # slices of the text differ (contiguous stretches of different topics), and every step taken
    # without mixing pulls the replicas apart; with --fragments K a value is mixed only every K
    # rounds, so fragments cost little only when rounds are short (docs/language-model.md).
    # The cosine decay to zero lets the replicas settle onto each other at the end.
    defaults = {"lr": 2e-3, "batch_size": 16, "local_steps": 1, "rounds": 720, "eval_every": 80,
                "lr_schedule": "cosine", "weight_decay": 0.1}

    def __init__(self, layers: int = 5, heads: int = 4, width: int = 128, context: int = 64, text: str = "",
                 validation: float = 0.1, seed_text: str = ""):
        for key, value in (("layers", layers), ("heads", heads), ("width", width), ("context", context)):
            if not isinstance(value, int) or value < 1:
                raise TaskError(f"gpt-char: {key}={value}: use a whole number of at least 1")
        if width % heads:
            raise TaskError(f"gpt-char: width={width} is not a multiple of heads={heads}: each head takes an "
                            f"equal share of the width; try width={heads * max(1, round(width / heads))}")
        if not 0 < validation < 1:
            raise TaskError(f"gpt-char: validation={validation}: give the held-out fraction of the text, "
                            "between 0 and 1 (e.g. 0.1)")
        self.layers, self.heads, self.width, self.context = layers, heads, width, context
        source = str(text)  # a Path, from Python
        corpus = read_text(source) if source else standard_library_text()
        where = f"text={source}" if source else "the standard library's help texts"

        self.vocab = sorted(set(corpus))
        self.ids = self.encode(corpus)
        held_out = int(len(self.ids) * validation)
        self.train_ids, self.validation_ids = self.ids[:len(self.ids) - held_out], self.ids[len(self.ids) - held_out:]
        # Both parts need at least one whole window (context characters and the one after them).
        shortest = min(len(self.train_ids), len(self.validation_ids))
        if shortest <= context:
            need = math.ceil((context + 1) / min(validation, 1 - validation))
            while min(need - int(need * validation), int(need * validation)) <= context:  # the split rounds down
                need += 1
            raise TaskError(f"gpt-char: {where} has {len(corpus)} characters, too few for windows of "
                            f"context={context} in both its training part and its validation={validation} part; "
                            f"give a text of at least {need} characters, or a smaller context")

        if seed_text != "":
            prompt = str(seed_text)
        else:
            # The validation slice's first paragraph, unindented: text no peer trained on, and a sentence start.
            held = corpus[len(corpus) - held_out:]
            paragraph = held.split("\n\n", 1)[-1].lstrip() or held
            prompt = paragraph[:min(PROMPT_LENGTH, context)]
        unknown = sorted(set(prompt) - set(self.vocab))
        if unknown:
            raise TaskError(f"gpt-char: seed_text={prompt!r} has characters the text never uses ({''.join(unknown)!r}); "
                            "the model can only read characters of its vocabulary")
        self.prompt = prompt

    # -- text <-> ids

    def encode(self, text: str) -> torch.Tensor:
        # The code points, looked up in the sorted vocabulary all at once: a Python loop over
        # half a million characters would cost more than building the model.
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.array([ord(c) for c in self.vocab], dtype=np.uint32)
        ids = np.minimum(np.searchsorted(table, points), len(table) - 1)
        if len(points) and (table[ids] != points).any():
            strangers = sorted(set(text) - set(self.vocab))
            raise ValueError(f"characters outside the vocabulary: {''.join(strangers)!r}")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in torch.as_tensor(ids).tolist())

    def agreement(self) -> dict[str, str]:
        """What every peer must share beyond the model's shapes (in the fingerprint): the vocabulary, since
        token k must be one character for all; two texts with as many distinct characters would otherwise
        mix models that read different letters."""
        text = "".join(self.vocab).encode("utf-8", "surrogatepass")
        return {"vocabulary": hashlib.blake2b(text, digest_size=8).hexdigest()}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the training text's characters: the loss a model blind to context cannot beat."""
        return entropy(self.train_ids, self.vocab_size)

    # -- the task protocol

    def build_model(self) -> GPT:
        return GPT(GPTConfig(vocab_size=self.vocab_size, context=self.context, layers=self.layers,
                             heads=self.heads, width=self.width))

    def shard_bounds(self, index: int, count: int) -> tuple[int, int]:
        """Where peer ``index`` of ``count``'s slice of the training text starts and ends."""
        if not 0 <= index < count:
            raise TaskError(f"gpt-char: peer index {index} is not among {count} peers")
        length = len(self.train_ids)
        return index * length // count, (index + 1) * length // count

    def shard(self, index: int, count: int, seed: int) -> Windows:
        # The seed does not enter: the slices are fixed by position, and the batch order is drawn by p2ptrain.
        start, end = self.shard_bounds(index, count)
        if end - start <= self.context:
            most = len(self.train_ids) // (self.context + 1)
            raise TaskError(f"gpt-char: peer {index} of {count} gets {end - start} characters of training text, "
                            f"not enough for one window of context={self.context}; use at most {most} peers, "
                            "a smaller context, or a longer text")
        return Windows(self.train_ids[start:end], self.context)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def validation_starts(self) -> torch.Tensor:
        """The fixed windows evaluation reads: evenly spaced over the validation slice, the same on every peer."""
        last = len(self.validation_ids) - self.context - 1
        count = min(VALIDATION_WINDOWS, last + 1)
        return torch.linspace(0, last, count).round().long().unique()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        windows = Windows(self.validation_ids, self.context)
        total, characters = 0.0, 0
        starts = self.validation_starts()
        for chunk in starts.split(64):  # bounded memory, whatever the number of windows
            x, y = (torch.stack(part).to(device) for part in zip(*(windows[i] for i in chunk.tolist())))
            total += float(self.loss(model, (x, y))) * y.numel()
            characters += y.numel()
        val_loss = total / characters
        return {"val_loss": val_loss, "val_perplexity": math.exp(val_loss)}

    def sample(self, model: nn.Module, length: int = 300) -> str:
        """The fixed prompt and ``length`` characters the model writes after it, from a fixed seed: the same
        model always writes the same text, so samples of runs compare."""
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(SAMPLE_SEED)
        written = generate(model, self.encode(self.prompt), length, generator=generator)
        return self.prompt + self.decode(written)

    def optimizer(self, parameters, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        # Decay only the matrices (and the embedding): shrinking LayerNorm gains and biases towards zero
        # does not regularise anything, it only fights the normalisation. momentum is SGD's; AdamW has betas.
        parameters = list(parameters)
        matrices = [p for p in parameters if p.dim() >= 2]
        others = [p for p in parameters if p.dim() < 2]
        groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))

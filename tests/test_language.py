"""The gpt-char task: its text, shards and validation slice, the GPT's causality and sampling, and a short swarm run."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from p2ptrain.builtin_tasks import task_from_options
from p2ptrain.config import PeerConfig
from p2ptrain.gpt import GPT, GPTConfig, generate, parameter_count
from p2ptrain.language import CharTask
from p2ptrain.replica import exchanged_tensors, resolve_config
from p2ptrain.simulate import simulate
from p2ptrain.task import TaskError, evaluate
from p2ptrain.topology import generate as generate_topology

SMALL = dict(layers=1, heads=2, width=32, context=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared machine: more threads only contend (and a swarm simulation sets one anyway).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task() -> CharTask:
    return CharTask()


@pytest.mark.parametrize("count", [1, 3, 8])
def test_shards_are_contiguous_disjoint_slices_that_cover_the_training_text(task, count):
    pieces, end_before = [], 0
    for index in range(count):
        shard = task.shard(index, count, seed=0)
        start, end = task.shard_bounds(index, count)
        assert start == end_before  # each slice starts where the last ended: no gap, no overlap
        assert torch.equal(shard.ids, task.train_ids[start:end])
        assert len(shard) == (end - start) - task.context
        # The last window's target ends on the slice's last character, never past it.
        x, y = shard[len(shard) - 1]
        assert torch.equal(y, task.train_ids[end - task.context:end])
        assert torch.equal(x[1:], y[:-1]) and x.dtype == y.dtype == torch.int64
        pieces.append(shard.ids)
        end_before = end
    assert torch.equal(torch.cat(pieces), task.train_ids)
    # The seed does not move the slices: every peer computes the same partition.
    assert torch.equal(task.shard(count - 1, count, seed=5).ids, pieces[-1])


def test_the_validation_slice_is_the_held_out_end_of_the_text_and_the_same_for_every_peer(task):
    assert torch.equal(torch.cat([task.train_ids, task.validation_ids]), task.ids)
    assert len(task.validation_ids) == int(len(task.ids) * 0.1)
    again = CharTask()
    assert torch.equal(again.validation_ids, task.validation_ids)
    assert torch.equal(again.validation_starts(), task.validation_starts())
    starts = task.validation_starts()
    assert starts.min() >= 0 and starts.max() + task.context < len(task.validation_ids)


def test_the_default_corpus_and_the_unigram_bound(task):
    assert 400_000 < len(task.ids) < 600_000 and 80 <= task.vocab_size <= 130
    assert task.decode(task.encode("def f(x):\n")) == "def f(x):\n"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        task.encode("\u4e2d")
    with pytest.raises(TaskError, match="characters the text never uses"):
        CharTask(seed_text="\u4e2d", **SMALL)
    # Above zero and below the entropy of a uniform choice: English text is far from uniform.
    assert 2.5 < task.unigram_entropy() < math.log(task.vocab_size)


def test_the_default_model_has_a_million_parameters_and_ties_its_head_to_the_embedding(task):
    torch.manual_seed(0)
    model = task.build_model()
    assert parameter_count(model) >= 1_000_000
    assert model.head.weight is model.token_embedding.weight
    exchanged = exchanged_tensors(model)
    assert "head.weight" not in exchanged and "token_embedding.weight" in exchanged
    assert list(model.buffers()) == []  # no mask: nothing constant goes on the wire
    assert sum(t.numel() for t in exchanged.values()) == parameter_count(model)


def test_the_task_defaults_fill_in_the_options_the_command_line_leaves_out():
    config = resolve_config({"task": "gpt-char", "rounds": 7})
    assert config.rounds == 7 and config.lr == CharTask.defaults["lr"]
    assert config.batch_size == CharTask.defaults["batch_size"] and config.lr_schedule == "cosine"


def test_a_text_file_given_by_path_is_used(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog, naïvely.\n" * 40, encoding="utf-8")
    task = task_from_options("gpt-char", task_args=f"text={path},layers=1,heads=2,width=32,context=16")
    assert task.vocab == sorted(set(path.read_text(encoding="utf-8")))
    assert "ï" in task.vocab
    assert task.decode(task.ids) == path.read_text(encoding="utf-8")
    torch.manual_seed(0)
    figures = evaluate(task, task.build_model())
    assert figures["val_perplexity"] == pytest.approx(math.exp(figures["val_loss"]))


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"caf\xe9 au lait\n" * 100, "not UTF-8 text .* convert it"),
    (b"too short\n", "too few for windows of context=16 .* give a text of at least 170 characters, or a smaller context"),
], ids=["missing", "latin-1", "too-short"])
def test_a_bad_text_file_is_refused_with_the_fix(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TaskError, match=message):
        CharTask(text=str(path), **SMALL)


def test_too_many_peers_for_the_text_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 30)
    task = CharTask(text=str(path), **SMALL)
    with pytest.raises(TaskError, match="use at most 15 peers"):
        task.shard(0, 20, seed=0)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context=12, layers=2, heads=2, width=16)).eval()
    idx = torch.randint(0, 20, (3, 12))
    for t in (0, 5, 10):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 20, changed[:, t + 1:].shape)
        with torch.no_grad():
            before, after = model(idx), model(changed)
        assert torch.allclose(before[:, :t + 1], after[:, :t + 1], atol=1e-6)
        if t + 1 < 12:  # and the change is seen where it should be
            assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])


def test_generation_is_reproducible_and_stays_in_the_vocabulary(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello world, hello peers.\n" * 30)
    task = CharTask(text=str(path), **SMALL)
    torch.manual_seed(0)
    model = task.build_model()
    prompt = task.encode("hello")

    def sample(seed: int, length: int = 40) -> torch.Tensor:
        return generate(model, prompt, length, generator=torch.Generator().manual_seed(seed))

    ids = sample(1)
    assert ids.shape == (40,) and 0 <= ids.min() and ids.max() < task.vocab_size
    assert torch.equal(sample(1), ids) and not torch.equal(sample(2), ids)
    assert model.training  # generate leaves the mode as it found it
    assert len(sample(1, length=3 * task.context)) == 3 * task.context  # longer than the context: cropped windows
    text = task.sample(model, length=50)
    assert text.startswith(task.prompt) and len(text) == len(task.prompt) + 50
    assert set(text) <= set(task.vocab) and task.sample(model, length=50) == text


def test_the_optimizer_is_adamw_and_decays_only_matrices():
    task = CharTask(**SMALL)
    model = task.build_model()
    optimizer = task.optimizer(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=0.1)
    assert isinstance(optimizer, torch.optim.AdamW)
    decayed, kept = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0 and decayed["betas"] == (0.9, 0.95)
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() == 1 for p in kept["params"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_a_short_swarm_run_learns_below_the_unigram_entropy():
    config = PeerConfig(topology="-", task="gpt-char", task_args="layers=1,heads=2,width=64,context=32",
                        rounds=30, local_steps=5, batch_size=16, lr=1e-2, weight_decay=0.1).validate()
    topology = generate_topology("ring", 2)
    final = {}

    def observe(round_, replicas):
        if round_ + 1 == config.rounds:
            final.update({peer: r.evaluate()["val_loss"] for peer, r in replicas.items()})

    simulate(config, topology, observe)
    bound = task_from_options("gpt-char", task_args=config.task_args).unigram_entropy()
    assert set(final) == {"p0", "p1"}
    assert all(loss < bound - 0.3 for loss in final.values()), (final, bound)


@pytest.mark.swarm
def test_the_launcher_prints_the_text_the_swarm_learned_to_write(tmp_path, capsys):
    from p2ptrain import swarm

    out = tmp_path / "run"
    assert swarm.main(["--task", "gpt-char", "--task-args", "layers=1,heads=2,width=32,context=16", "--rounds", "3",
                       "--batch-size", "4", "--local-steps", "1", "--in-process", "--out", str(out),
                       "--log-level", "WARNING"]) == 0
    printed = capsys.readouterr().out
    assert "(gossip, gpt-char) in this process" in printed  # no --partition: the task slices its own text
    samples = {p.name: (p / "sample.txt").read_text(encoding="utf-8") for p in (out / "peers").iterdir()}
    assert len(samples) == 8 and all(text.startswith(CharTask(**SMALL).prompt) for text in samples.values())
    assert f"text generated by p0's model ({out / 'peers' / 'p0' / 'sample.txt'}):\n{samples['p0']}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert all(p["status"] == "completed" and p["test_accuracy"] is None for p in summary["peers"].values())


def test_texts_of_as_many_distinct_characters_give_peers_that_refuse_each_other(tmp_path):
    # Token k is another character in each: their models have one shape but must not mix.
    from p2ptrain.config import PeerConfig
    from p2ptrain.replica import agreement

    lower, upper = tmp_path / "lower.txt", tmp_path / "upper.txt"
    lower.write_text("the quick brown fox jumps over a lazy dog\n" * 40, encoding="utf-8")
    upper.write_text(lower.read_text(encoding="utf-8").upper(), encoding="utf-8")
    tasks = [task_from_options("gpt-char", task_args=f"text={path},layers=1,heads=2,width=16,context=16")
             for path in (lower, upper, lower)]
    assert tasks[0].vocab_size == tasks[1].vocab_size
    config = PeerConfig(topology="-")
    first, other, again = (agreement(config, task) for task in tasks)
    assert first["vocabulary"] != other["vocabulary"] and first == again
    assert first == {"vocabulary": hashlib.blake2b("".join(tasks[0].vocab).encode(), digest_size=8).hexdigest(),
                     "algorithm": "gossip"}  # as PROTOCOL.md section 2 says

"""A small decoder-only transformer (GPT), for character-level language modelling.

The model reads a window of token ids and predicts, at every position, the
next token. Each position may look only at itself and earlier positions
(causal attention), so one forward pass over a window of T tokens yields T
predictions, each a fair next-token forecast.

Layout, as in GPT-2:

    tokens -> token embedding + position embedding
           -> N x [ x + attention(LayerNorm(x)); x + MLP(LayerNorm(x)) ]
           -> LayerNorm -> linear head (sharing the token embedding's weights) -> logits

Normalising before each sublayer (pre-LayerNorm) leaves the residual stream
an unobstructed sum from input to output, which keeps small models stable
without warmup tricks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int
    context: int  # the longest window the model reads; position embeddings exist only this far
    layers: int
    heads: int
    width: int  # the residual stream's size; each head gets width // heads of it
    dropout: float = 0.0

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}: each head takes an "
                             "equal slice of the width")
        for name in ("vocab_size", "context", "layers", "heads", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        # Queries, keys and values of all heads in one matrix product.
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.proj.residual = True  # scaled down at init (GPT._init)
        self.output_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        # (batch, time, width) -> (batch, heads, time, head width): heads attend independently.
        q, k, v = (t.view(batch, time, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        # is_causal masks the future inside the kernel, so the model keeps no mask buffer: a floating
        # buffer would be gossiped along with the weights, and a constant has no business on the wire.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(batch, time, width)
        return self.output_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.width, 4 * config.width)
        self.down = nn.Linear(4 * config.width, config.width)
        self.down.residual = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """One transformer layer: tokens exchange information (attention), then each is transformed alone (MLP)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width)
        self.attention = CausalSelfAttention(config)
        self.norm2 = nn.LayerNorm(config.width)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.context, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        # Tying: reading a token in and scoring it as output use one matrix. It saves vocab x width
        # parameters and helps small models, whose rare characters would otherwise train two rows
        # from few examples. named_parameters() lists the shared tensor once, so it is exchanged once.
        self.head.weight = self.token_embedding.weight
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if getattr(module, "residual", False):
                # Every block adds two projections to the residual stream; shrinking them keeps the
                # stream's variance at initialisation independent of depth.
                std /= math.sqrt(2 * self.config.layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (batch, time, vocab) for token ids ``idx`` (batch, time), time <= context."""
        time = idx.shape[1]
        if time > self.config.context:
            raise ValueError(f"a window of {time} tokens is longer than the model's context {self.config.context}")
        positions = torch.arange(time, device=idx.device)
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters: the tied embedding counts once."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def generate(model: GPT, prompt_ids: torch.Tensor, length: int, temperature: float = 0.8,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``length`` new token ids after the 1-D ``prompt_ids``, sampled one at a time.

    Each step feeds the last ``context`` tokens (the model has no positions beyond
    them) and samples from softmax(logits / temperature): below 1 it favours
    likely characters, which reads better than sampling the raw distribution.
    Passing a seeded ``generator`` (on the model's device) makes the text reproducible.
    """
    if temperature <= 0:
        raise ValueError(f"temperature {temperature} must be positive")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = prompt_ids.to(device).view(1, -1)
    try:
        for _ in range(length):
            logits = model(tokens[:, -model.config.context:])[:, -1, :]
            probabilities = F.softmax(logits / temperature, dim=-1)
            following = torch.multinomial(probabilities, 1, generator=generator)
            tokens = torch.cat([tokens, following], dim=1)
    finally:
        model.train(was_training)
    return tokens[0, prompt_ids.numel():]

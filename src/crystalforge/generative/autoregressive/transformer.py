"""``CrystalGPT``: a small decoder-only transformer with a key/value cache for incremental decoding.

The nanoGPT recipe (Radford et al.'s GPT-2 layout): learned token and position embeddings (plus a
learned embedding of each position's *slot*, what the next token fills: ``decoding``), pre-LayerNorm
blocks of causal multi-head self-attention (``scaled_dot_product_attention``) and a GELU MLP, a final
LayerNorm, and output logits through the token embedding itself (weight tying, written as
``F.linear(h, embedding)`` so the state dict holds the matrix once: a tied second key would be
blended twice per step by the trainer's weight average).

**Cache.** ``KVCache`` holds every layer's keys and values ``[B, H, T_max, D/H]`` and the number
of positions written. A call with a cache appends the new positions and attends over everything
cached so far; a multi-token call (the prefill) masks causally with the offset. Decoding one token
at a time through the cache gives the logits of the full forward pass (tested to 1e-5).
``KVCache.keep(rows)`` drops finished sequences so a batch shrinks as sequences end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import Tensor, nn

from crystalforge.core.elements import TypeVocabulary

__all__ = ["CrystalGPT", "KVCache"]


@dataclass
class KVCache:
    """Keys and values of every layer ``[B, H, T_max, D/H]`` and how many positions are filled."""

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0

    @property
    def capacity(self) -> int:
        """``T_max``, the positions the cache can hold."""
        return int(self.keys[0].shape[2])

    def keep(self, rows: Tensor) -> None:
        """Keep only the sequences ``rows [B']`` (in that order)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


class SelfAttention(nn.Module):
    """Causal multi-head self-attention, optionally reading and extending a cache."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, cache: KVCache | None, layer: int) -> Tensor:  # x: [B, T, D]
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 × [B, H, T, D/H]
        p = self.dropout if self.training else 0.0
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            start = cache.length
            cache.keys[layer][:, :, start : start + t] = k
            cache.values[layer][:, :, start : start + t] = v
            k, v = cache.keys[layer][:, :, : start + t], cache.values[layer][:, :, : start + t]
            mask = None
            if t > 1:  # query i (position start + i) sees keys 0 .. start + i
                rows = torch.arange(t, device=x.device)[:, None] + start
                mask = torch.arange(start + t, device=x.device)[None, :] <= rows
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y: Tensor = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return y


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int) -> Tensor:  # x: [B, T, D]
        x = x + self.drop(self.attn(self.norm1(x), cache, layer))
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class CrystalGPT(nn.Module):
    """Decoder-only transformer over token ids ``[B, T]`` → logits ``[B, T, vocab_size]``.

    Args:
        vocab_size: token ids are ``0 .. vocab_size - 1``.
        block_size: the longest sequence (learned positions).
        num_slots: slot ids are ``0 .. num_slots - 1`` (1: no slots).
        dim: width; heads: attention heads; layers: blocks; dropout: dropout probability.
        type_vocabulary: the elements the model was trained to place (what
            ``sampling.composition.type_vocabulary`` reads to check element sets).

    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        *,
        num_slots: int = 1,
        dim: int = 128,
        heads: int = 4,
        layers: int = 4,
        dropout: float = 0.0,
        type_vocabulary: TypeVocabulary | None = None,
    ) -> None:
        super().__init__()
        if vocab_size < 1 or block_size < 1 or layers < 1:
            raise ValueError(f"vocab_size, block_size, layers must be >= 1, got {vocab_size}, {block_size}, {layers}")
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.heads = heads
        self.type_vocabulary = type_vocabulary
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.position_embedding = nn.Embedding(block_size, dim)
        self.slot_embedding = nn.Embedding(num_slots, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self, batch_size: int, length: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of at most ``length`` (default ``block_size``) positions."""
        t = self.block_size if length is None else min(length, self.block_size)
        weight = self.token_embedding.weight
        dim = weight.shape[1]
        shape = (batch_size, self.heads, t, dim // self.heads)
        n = len(self.blocks)
        return KVCache(
            [weight.new_zeros(shape) for _ in range(n)], [weight.new_zeros(shape) for _ in range(n)], length=0
        )

    def forward(
        self, tokens: Tensor, slots: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:  # tokens, slots: [B, T] → [B, T, V]
        """Logits of the next token at every position; with ``cache``, ``tokens`` continue the cached ones.

        ``slots``: what the token after each position fills (None: slot 0 everywhere).
        """
        start = 0 if cache is None else cache.length
        t = tokens.shape[1]
        limit = self.block_size if cache is None else cache.capacity
        if start + t > limit:
            raise ValueError(f"sequence of {start + t} tokens is longer than the model's {limit} positions")
        positions = torch.arange(start, start + t, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)[None]
        x = self.drop(x + self.slot_embedding(torch.zeros_like(tokens) if slots is None else slots))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length = start + t
        logits: Tensor = F.linear(self.norm(x), self.token_embedding.weight)
        return logits

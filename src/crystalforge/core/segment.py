"""Segment reductions over ragged batches with native torch ops (no torch_scatter).

``index`` assigns each row of ``src`` to a segment (a crystal, or an atom for edge data);
``num_segments`` is explicit so empty segments get the reduction's identity (0 for sums/means).
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_sum(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Sum rows of ``src [M, ...]`` into ``[num_segments, ...]``."""
    out = src.new_zeros((num_segments, *src.shape[1:]))
    return out.index_add_(0, index, src)


def segment_count(index: Tensor, num_segments: int) -> Tensor:
    """Number of rows in each segment ``[num_segments]`` (int64)."""
    return torch.bincount(index, minlength=num_segments)


def segment_mean(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Mean of rows per segment; empty segments give 0."""
    total = segment_sum(src, index, num_segments)
    count = segment_count(index, num_segments).clamp(min=1).to(src.dtype)
    return total / count.view(-1, *([1] * (src.dim() - 1)))


def segment_max(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Max of rows per segment; empty segments give ``-inf`` for floats."""
    fill = torch.finfo(src.dtype).min if src.is_floating_point() else torch.iinfo(src.dtype).min
    out = src.new_full((num_segments, *src.shape[1:]), fill)
    expanded = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    out = out.scatter_reduce(0, expanded, src, reduce="amax", include_self=True)
    if src.is_floating_point():
        empty = segment_count(index, num_segments) == 0
        out[empty] = float("-inf")
    return out


def segment_softmax(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of ``src [M, ...]`` within each segment (numerically stabilised by the segment max)."""
    shifted = src - segment_max(src, index, num_segments)[index]
    exp = shifted.exp()
    return exp / segment_sum(exp, index, num_segments)[index]

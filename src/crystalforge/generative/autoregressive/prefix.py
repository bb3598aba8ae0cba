"""The condition prefix: tokens before ``<bos>`` that tell the model what to generate.

Every sequence starts with the same number of prefix tokens, one per condition and one for the
size, so a batch shares its layout (``ConditionPrefix.length`` positions, then ``<bos>``):

* one token per **continuous property** (MatterGPT's property prefix): the value's bin among
  ``edges`` (bins ``(-inf, e₀), [e₀, e₁), …, [e_last, inf)``), or the property's own "null"
  token when it is hidden (``condition_mask`` False), missing (NaN) or absent from the batch;
* one token per **categorical condition** (``space_group``, ``crystal_system``): its class, or null;
* one **size** token, the number of atoms ``n`` (1 … ``max_atoms``): DNG samples have the
  template's sizes because the model learned what ``n`` means, and the decoder enforces it.

The ids come after the tokenizer's vocabulary (the tokenizer's own ids never move): the size tokens
first, then each condition's null token and its bins or classes, in the order of ``names``.

**Bin edges** are learned from the training data by ``quantile_edges``: interior quantiles of the
data (``DatasetStats.property_quantiles``), so bins hold about equal shares of the crystals; a spike
at the minimum (a band gap of exactly 0 for metals) gets a bin of its own and the quantiles are
taken over the rest. Statistics saved before quantiles existed give the quantiles of a normal with
the data's mean and std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.dataset_stats import DatasetStats
from crystalforge.core.space_groups import CATEGORIES
from crystalforge.nn.conditioning import Conditioner, _class_index

__all__ = ["ConditionPrefix", "quantile_edges"]


def quantile_edges(stats: DatasetStats | None, name: str, bins: int) -> tuple[float, ...]:
    """Interior edges (at most ``bins - 1``, increasing) of ``bins`` equal-share bins of property ``name``.

    Raises ``ValueError`` when the statistics hold no such property.
    """
    quantiles = (stats.property_quantiles or {}) if stats is not None else {}
    moments = (stats.property_moments or {}) if stats is not None else {}
    if bins < 2:
        raise ValueError(f"property_bins must be >= 2, got {bins}")
    if name in quantiles:
        q = np.asarray(quantiles[name], dtype=np.float64)  # [101] percentiles
        low = int(np.flatnonzero(q == q[0])[-1])  # last percentile still at the minimum (a spike)
        edges = []
        if low > 0:  # the spike gets its own bin, the rest is split in equal shares
            edges.append(float(np.nextafter(q[0], np.inf)))
            bins -= 1
        levels = np.linspace(low, 100, bins + 1)[1:-1]
        edges += np.interp(levels, np.arange(len(q)), q).tolist()
    elif name in moments:
        mean, std, _ = moments[name]
        normal = NormalDist(mean, std if std > 0 else 1.0)
        edges = [normal.inv_cdf(k / bins) for k in range(1, bins)]
    else:
        have = ", ".join(sorted(set(quantiles) | set(moments))) or "none"
        raise ValueError(f"cannot condition on {name!r}: the training data has no such property (it has: {have})")
    return tuple(float(e) for e in np.unique(np.asarray(edges, dtype=np.float64)))


class ConditionPrefix:
    """Prefix token ids for a batch: ``[B, length]`` (see the module docstring).

    Args:
        base: the first free id (the tokenizer's vocabulary size).
        max_atoms: the largest size with a token.
        edges: ``{property: interior bin edges}`` of each continuous condition, in prefix order.
        categories: categorical condition names (keys of ``CATEGORIES``), after the properties.

    """

    def __init__(
        self, base: int, max_atoms: int, edges: Mapping[str, Sequence[float]], categories: Sequence[str] = ()
    ) -> None:
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        unknown = sorted(set(categories) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categorical condition(s) {unknown} (known: {', '.join(CATEGORIES)})")
        clash = sorted(set(edges) & set(categories))
        if clash:
            raise ValueError(f"condition(s) {clash} given as both a property and a category")
        self.base = base
        self.max_atoms = max_atoms
        self.edges = {k: torch.tensor(sorted(float(e) for e in v), dtype=torch.float64) for k, v in edges.items()}
        self.properties = tuple(edges)
        self.categories = tuple(categories)
        self.offsets: dict[str, int] = {}  # condition → id of its null token (its classes follow)
        next_id = base + max_atoms
        for name in self.properties:
            self.offsets[name] = next_id
            next_id += 1 + len(self.edges[name]) + 1
        for name in self.categories:
            self.offsets[name] = next_id
            next_id += 1 + CATEGORIES[name]
        self.end = next_id

    @property
    def names(self) -> tuple[str, ...]:
        """The conditions, in prefix order (properties, then categories)."""
        return self.properties + self.categories

    @property
    def length(self) -> int:
        """Prefix tokens per sequence (conditions + the size)."""
        return len(self.names) + 1

    @property
    def num_tokens(self) -> int:
        """How many ids the prefix adds after ``base``."""
        return self.end - self.base

    def size_tokens(self, num_atoms: Tensor, material_ids: Sequence[str | None] | None = None) -> Tensor:
        """The size token of each crystal ``[B]``; ``ValueError`` naming a crystal larger than ``max_atoms``."""
        too_big = torch.nonzero(num_atoms > self.max_atoms).flatten().tolist()
        if too_big:
            i = too_big[0]
            name = material_ids[i] if material_ids else f"crystal {i}"
            raise ValueError(
                f"{name}: {int(num_atoms[i])} atoms is more than the model's largest size {self.max_atoms} "
                "(the largest training crystal)"
            )
        return self.base + num_atoms.to(torch.int64) - 1

    def encode(self, batch: CrystalBatch) -> Tensor:
        """The prefix ``[B, length]`` (int64) of every crystal of ``batch``."""
        columns = []
        for name in self.properties:  # hidden (condition_mask False), NaN or absent: the null token
            shown, value = Conditioner.visible(batch, name)
            index = torch.bucketize(value.detach().double(), self.edges[name].to(value.device), right=True)
            columns.append(torch.where(shown, self.offsets[name] + 1 + index, self.offsets[name]))
        for name in self.categories:
            shown, value = Conditioner.visible(batch, name)
            columns.append(torch.where(shown, self.offsets[name] + 1 + _class_index(name, value), self.offsets[name]))
        columns.append(self.size_tokens(batch.num_atoms, batch.material_ids).to(batch.device))
        return torch.stack([c.to(batch.device, torch.int64) for c in columns], dim=1)

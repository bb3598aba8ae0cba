"""``Conditioner``: what a generative backbone knows of the properties it is asked for.

Each condition gives a per-crystal vector; the sum passes through one output layer into the
backbone's crystal context. Two kinds:

- **continuous** (formation energy, band gap, a user's own column): standardised by the training
  data's mean and std (``moments``, carried in the model config), then an MLP;
- **categorical** (``space_group``: 230 classes, ``crystal_system``: 7): an embedding table, never
  a number fed as a float. ``space_group`` is read from ``space_group`` or the benchmarks'
  ``spacegroup.number`` column; ``crystal_system`` is derived from the space group when not given.

A condition that is masked (``state.condition_mask`` False), missing (NaN) or absent from the
batch gives a learned "unconditioned" vector instead, so classifier-free guidance is a
``state.replace(condition_mask=...)`` and any subset of conditions may be given. Training hides
conditions at random (``drop_conditions``): every condition of a crystal with probability ``p``
together, and each one alone with probability ``p``.

The output layer starts at zero: a conditioner added to a trained unconditional model (an
adapter, MatterGen's fine-tuning route) leaves its predictions unchanged until training moves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.space_groups import CATEGORIES, SPACE_GROUP_COLUMNS, space_group_boundaries

__all__ = ["CATEGORIES", "SPACE_GROUP_COLUMNS", "Conditioner", "drop_conditions", "with_categories"]


def _class_index(name: str, value: Tensor) -> Tensor:
    """Class indices ``[B]`` (long) of categorical values; masked entries are ignored by the caller."""
    if name == "space_group":
        return (value.round().long() - 1).clamp(0, CATEGORIES[name] - 1)
    return value.round().long().clamp(0, CATEGORIES[name] - 1)


def with_categories(batch: CrystalBatch, categories: Sequence[str]) -> CrystalBatch:
    """``batch`` with ``space_group``/``crystal_system`` filled in where derivable and absent.

    ``space_group`` comes from ``spacegroup.number``; ``crystal_system`` (its index in
    ``CRYSTAL_SYSTEMS``) from the space group. Values the batch already has are kept.
    """
    props, masks = dict(batch.properties), dict(batch.condition_mask)
    wanted = set(categories)
    if wanted & {"space_group", "crystal_system"} and "space_group" not in props:
        for column in SPACE_GROUP_COLUMNS[1:]:
            if column in props:
                props["space_group"] = props[column]
                masks["space_group"] = batch.condition_mask.get(column, ~torch.isnan(props[column]))
                break
    if "crystal_system" in wanted and "crystal_system" not in props and "space_group" in props:
        sg = props["space_group"]
        ok = ~torch.isnan(sg) & (sg >= 1) & (sg <= 230)
        bounds = torch.tensor(space_group_boundaries(), dtype=sg.dtype, device=sg.device)
        index = torch.bucketize(torch.where(ok, sg, torch.ones_like(sg)), bounds).to(sg.dtype)
        props["crystal_system"] = torch.where(ok, index, torch.full_like(sg, float("nan")))
        masks["crystal_system"] = masks.get("space_group", ok) & ok
    if props.keys() == batch.properties.keys():
        return batch
    return batch.replace(properties=props, condition_mask=masks)


def drop_conditions(
    batch: CrystalBatch, names: Sequence[str], p: float, *, generator: torch.Generator | None = None
) -> CrystalBatch:
    """Hide conditions at random for classifier-free training (see the module docstring)."""
    if p <= 0 or not names:
        return batch
    b = batch.num_crystals
    every = torch.rand(b, generator=generator, device=batch.device) < p
    masks = dict(batch.condition_mask)
    for name in names:
        value = batch.properties.get(name)
        if value is None:
            continue
        alone = torch.rand(b, generator=generator, device=batch.device) < p
        visible = masks.get(name, ~torch.isnan(value))
        masks[name] = visible & ~every & ~alone
    return batch.replace(condition_mask=masks)


class Conditioner(nn.Module):
    """Per-crystal conditioning vector ``[B, dim]`` from continuous and categorical conditions.

    Args:
        properties: continuous condition names.
        moments: ``{name: (mean, std)}`` standardising each continuous condition (missing: (0, 1)).
        categories: categorical condition names (keys of ``CATEGORIES``).
        dim: output width (the backbone's hidden size).

    """

    def __init__(
        self,
        properties: Sequence[str],
        moments: Mapping[str, Sequence[float]],
        categories: Sequence[str],
        dim: int,
    ) -> None:
        super().__init__()
        unknown = sorted(set(categories) - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categorical condition(s) {unknown} (known: {', '.join(CATEGORIES)})")
        clash = sorted(set(properties) & set(categories))
        if clash:
            raise ValueError(f"condition(s) {clash} given as both continuous and categorical")
        self.properties = tuple(properties)
        self.categories = tuple(categories)
        self.dim = dim
        scale = [tuple(float(v) for v in moments.get(name, (0.0, 1.0))) for name in self.properties]
        for name, (_, std) in zip(self.properties, scale, strict=True):
            if not std > 0:
                raise ValueError(f"condition {name!r}: its standard deviation must be positive, got {std}")
        self.moments = tuple((mean, std) for mean, std in scale)  # plain data: it comes from the model config
        # ModuleDict keys cannot hold dots; conditions are stored by position
        self.value_nets = nn.ModuleList(
            nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim)) for _ in self.properties
        )
        self.tables = nn.ModuleList(nn.Embedding(CATEGORIES[name], dim) for name in self.categories)
        self.null = nn.Parameter(torch.zeros(len(self.names), dim))
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def names(self) -> tuple[str, ...]:
        """Every condition name, continuous first."""
        return self.properties + self.categories

    @staticmethod
    def visible(state: CrystalBatch, name: str) -> tuple[Tensor, Tensor]:
        """``(visible [B] bool, value [B] with hidden entries zeroed)`` of one condition."""
        b = state.num_crystals
        value = state.properties.get(name)
        if value is None:
            return torch.zeros(b, dtype=torch.bool, device=state.device), state.lattice.new_zeros(b)
        if value.shape != (b,):
            raise ValueError(f"condition {name!r} must have shape ({b},), got {tuple(value.shape)}")
        mask = state.condition_mask.get(name)
        shown = ~torch.isnan(value) if mask is None else mask.to(torch.bool) & ~torch.isnan(value)
        return shown, torch.where(shown, value, torch.zeros_like(value))

    def forward(self, state: CrystalBatch) -> Tensor:
        """The conditioning vector ``[B, dim]`` (zero at initialisation)."""
        dtype = self.null.dtype
        total = self.null.new_zeros(state.num_crystals, self.dim)
        for i, name in enumerate(self.properties):
            shown, value = self.visible(state, name)
            mean, std = self.moments[i]
            embedded = self.value_nets[i](((value.to(dtype) - mean) / std)[:, None])
            total = total + torch.where(shown[:, None], embedded, self.null[i].expand_as(embedded))
        for j, name in enumerate(self.categories):
            shown, value = self.visible(state, name)
            embedded = self.tables[j](_class_index(name, value))
            row = self.null[len(self.properties) + j]
            total = total + torch.where(shown[:, None], embedded, row.expand_as(embedded))
        out: Tensor = self.out(total)
        return out

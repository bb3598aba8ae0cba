"""``CrystalBatch``: a ragged torch batch of crystals, the contract of every stage.

Conventions are those of ``core.crystal`` (rows of ``lattice`` are lattice vectors in Å,
``cart = frac @ lattice``, fractional coordinates wrapped to [0, 1), atomic numbers are Z). The
batch is frozen; change it with ``replace``. Which fields are per atom or per crystal, their dtype
and shape come from the field table (``core.fields``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.crystal import Crystal
from crystalforge.core.elements import MASK_Z, MAX_Z
from crystalforge.core.errors import CrystalError
from crystalforge.core.fields import FIELDS, Level
from crystalforge.core.periodic import frac_to_cart


@dataclass(frozen=True, eq=False)
class CrystalBatch:
    """A batch of periodic crystals; atoms of all crystals are concatenated along dim 0.

    ``properties[name]`` is ``[B]`` (or ``[B, ...]``) float with NaN where a crystal has no
    value; ``condition_mask[name]`` is ``[B]`` bool, True where the value is visible to a model.
    ``fixed`` (optional, ``[N]`` bool) marks atoms whose type and position are given (inpainting
    keeps them). ``latents`` holds a generative process's working value of a field (the lattice
    code, type classes) so a sampler's one state is this batch; it is per field, at the field's
    level, and ``replace`` drops a field's latent whenever the field itself changes, so a latent
    is never stale. Construct with ``collate``; change with ``replace``; check with ``validate``
    (cheap, but it synchronises with the device, so hot loops call it only in tests).
    ``collate``/``split``/``to``/``index_select`` are driven by the field table (``core.fields``).
    """

    atomic_numbers: Tensor  # [N] int64
    frac_coords: Tensor  # [N, 3] float
    lattice: Tensor  # [B, 3, 3] float, rows are lattice vectors, Å
    num_atoms: Tensor  # [B] int64
    properties: Mapping[str, Tensor] = field(default_factory=dict)  # each [B, ...]
    condition_mask: Mapping[str, Tensor] = field(default_factory=dict)  # each [B] bool
    material_ids: tuple[str | None, ...] | None = None  # [B] labels, or None
    fixed: Tensor | None = None  # [N] bool, or None (no atom fixed)
    latents: Mapping[str, Tensor] = field(default_factory=dict)  # field name → working value

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def collate(
        cls, crystals: Sequence[Crystal], *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> CrystalBatch:
        """Stack crystals into one batch (float fields in ``dtype``, default torch's default dtype).

        Properties are the union over crystals; a crystal without a value gets NaN and
        ``condition_mask`` False for it.
        """
        if len(crystals) == 0:
            raise ValueError("cannot collate an empty list of crystals")
        dtype = dtype or torch.get_default_dtype()
        keys = sorted({k for c in crystals for k in c.properties})
        props = {
            k: torch.tensor([c.properties.get(k, math.nan) for c in crystals], dtype=dtype, device=device) for k in keys
        }
        ids = tuple(c.material_id for c in crystals)
        values = {
            "atomic_numbers": np.concatenate([c.atomic_numbers for c in crystals]),
            "frac_coords": np.concatenate([c.frac_coords for c in crystals]),
            "lattice": np.stack([c.lattice for c in crystals]),
            "num_atoms": np.asarray([c.num_atoms for c in crystals], dtype=np.int64),
        }
        tensors = {
            name: torch.from_numpy(value).to(device=device, dtype=FIELDS[name].dtype or dtype)
            for name, value in values.items()
        }
        batch = cls(
            atomic_numbers=tensors["atomic_numbers"],
            frac_coords=tensors["frac_coords"],
            lattice=tensors["lattice"],
            num_atoms=tensors["num_atoms"],
            properties=props,
            condition_mask={k: ~torch.isnan(v) for k, v in props.items()},
            material_ids=ids if any(i is not None for i in ids) else None,
        )
        batch.validate()
        return batch

    def split(self) -> list[Crystal]:
        """Back to a list of ``Crystal`` (float64 NumPy); properties with a False mask are dropped.

        Raises ``CrystalError`` (naming the crystal) for one that is not a valid crystal; use
        ``split_checked`` to keep the others.
        """
        crystals, failures = self.split_checked()
        if failures:
            _, error = failures[0]
            raise error
        return [c for c in crystals if c is not None]

    def split_checked(self) -> tuple[list[Crystal | None], list[tuple[int, CrystalError]]]:
        """``split`` that never raises: ``(crystals with None for bad ones, [(index, error)])``."""
        z = self.atomic_numbers.detach().cpu().numpy()
        frac = self.frac_coords.detach().cpu().double().numpy()
        lat = self.lattice.detach().cpu().double().numpy()
        props = {k: v.detach().cpu().double().numpy() for k, v in self.properties.items()}
        masks = {k: self._mask_for(k).cpu().numpy() for k in self.properties}
        out: list[Crystal | None] = []
        failures: list[tuple[int, CrystalError]] = []
        bounds = np.concatenate([[0], np.cumsum(self.num_atoms.cpu().numpy())])
        for b in range(self.num_crystals):
            s, e = bounds[b], bounds[b + 1]
            p = {k: float(v[b]) for k, v in props.items() if masks[k][b] and v.ndim == 1}
            ident = self.material_ids[b] if self.material_ids else None
            try:
                out.append(Crystal(z[s:e], frac[s:e], lat[b], properties=p, material_id=ident))
            except CrystalError as exc:
                out.append(None)
                failures.append((b, exc))
        return out, failures

    def _mask_for(self, key: str) -> Tensor:
        mask = self.condition_mask.get(key)
        if mask is None:
            value = self.properties[key]
            finite = ~torch.isnan(value)
            return finite if finite.dim() == 1 else finite.flatten(1).all(1)
        return mask

    # ---- basic views ----------------------------------------------------------------------
    @property
    def num_crystals(self) -> int:
        """B, the number of crystals."""
        return int(self.num_atoms.shape[0])

    def __len__(self) -> int:
        return self.num_crystals

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.frac_coords.device

    @cached_property
    def crystal_idx(self) -> Tensor:
        """Owning crystal of each atom ``[N]`` int64."""
        return torch.repeat_interleave(torch.arange(self.num_crystals, device=self.device), self.num_atoms)

    @cached_property
    def atom_offsets(self) -> Tensor:
        """Index of each crystal's first atom ``[B]``."""
        return torch.cumsum(self.num_atoms, 0) - self.num_atoms

    @property
    def cart_coords(self) -> Tensor:
        """Cartesian coordinates ``[N, 3]`` in Å."""
        return frac_to_cart(self.frac_coords, self.lattice[self.crystal_idx])

    @property
    def volume(self) -> Tensor:
        """Cell volumes ``[B]`` in Å³."""
        det: Tensor = torch.linalg.det(self.lattice)  # torch.linalg is untyped in torch's stubs
        return det

    @property
    def fixed_mask(self) -> Tensor:
        """``fixed`` as a ``[N]`` bool tensor (all False when no atom is fixed)."""
        if self.fixed is None:
            return torch.zeros_like(self.atomic_numbers, dtype=torch.bool)
        return self.fixed

    # ---- changes ------------------------------------------------------------------------
    def replace(self, **changes: Any) -> CrystalBatch:
        """A copy with some fields changed. Not validated: call ``validate()`` where it matters.

        Changing a field without passing ``latents`` drops that field's latent (it would be stale).
        """
        if "latents" not in changes and self.latents:
            changed = set(changes)
            if "num_atoms" in changed:
                changes["latents"] = {}
            elif changed & set(self.latents):
                changes["latents"] = {k: v for k, v in self.latents.items() if k not in changed}
        return dataclasses.replace(self, **changes)

    def _map_tensors(self, atom: Any, crystal: Any) -> dict[str, Any]:
        """Every tensor of the batch passed through ``atom`` (per-atom) or ``crystal`` (per-crystal)."""
        out: dict[str, Any] = {}
        for name, spec in FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                out[name] = (atom if spec.level is Level.ATOM else crystal)(value)
        out["properties"] = {k: crystal(v) for k, v in self.properties.items()}
        out["condition_mask"] = {k: crystal(v) for k, v in self.condition_mask.items()}
        out["latents"] = {k: (atom if FIELDS[k].level is Level.ATOM else crystal)(v) for k, v in self.latents.items()}
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CrystalBatch:
        """Move to ``device`` and/or cast float fields (and properties and latents) to ``dtype``."""

        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)

        return dataclasses.replace(self, **self._map_tensors(move, move))

    def index_select(self, index: Sequence[int] | Tensor) -> CrystalBatch:
        """The sub-batch of crystals ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        starts = self.atom_offsets[idx]
        counts = self.num_atoms[idx]
        # atom rows of the chosen crystals, in order, without a Python loop over crystals
        within = torch.arange(int(counts.sum()), device=self.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        atoms = torch.repeat_interleave(starts, counts) + within
        changes = self._map_tensors(lambda t: t[atoms], lambda t: t[idx])
        changes["material_ids"] = tuple(self.material_ids[i] for i in idx.tolist()) if self.material_ids else None
        return dataclasses.replace(self, **changes)

    # ---- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Check shapes, dtypes and values; raises ``ValueError`` naming the offending field."""
        n, b = self.atomic_numbers.shape[0] if self.atomic_numbers.dim() == 1 else -1, self.num_atoms.shape[0]
        rows = {Level.ATOM: n, Level.CRYSTAL: b}
        for name, spec in FIELDS.items():
            value = getattr(self, name)
            if value is None and spec.optional:
                continue
            expected = (rows[spec.level], *spec.trailing_shape)
            if not isinstance(value, Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if tuple(value.shape) != expected:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {expected}")
            if spec.dtype is None and not value.is_floating_point():
                raise ValueError(f"{name} must be floating point, got {value.dtype}")
            if spec.dtype is not None and value.dtype != spec.dtype:
                raise ValueError(f"{name} must be {spec.dtype}, got {value.dtype}")
        if self.frac_coords.dtype != self.lattice.dtype:
            raise ValueError(
                f"frac_coords ({self.frac_coords.dtype}) and lattice ({self.lattice.dtype}) differ in dtype"
            )
        if b == 0:
            raise ValueError("batch holds no crystals")
        if int(self.num_atoms.min()) < 1:
            raise ValueError("every crystal needs at least one atom (num_atoms has a value < 1)")
        if int(self.num_atoms.sum()) != n:
            raise ValueError(f"sum(num_atoms) = {int(self.num_atoms.sum())} but there are {n} atoms")
        if n and (int(self.atomic_numbers.min()) < MASK_Z or int(self.atomic_numbers.max()) > MAX_Z):
            raise ValueError(f"atomic_numbers must be in {MASK_Z}..{MAX_Z}")
        if not bool(torch.isfinite(self.frac_coords).all()) or not bool(torch.isfinite(self.lattice).all()):
            raise ValueError("frac_coords or lattice contain NaN or infinite values")
        dets = torch.linalg.det(self.lattice)
        if bool((dets <= 0).any()):
            raise ValueError(f"lattice of crystal(s) {torch.nonzero(dets <= 0).flatten()[:5].tolist()} has det <= 0")
        for key, value in self.properties.items():
            if value.shape[:1] != (b,):
                raise ValueError(f"property {key!r} has shape {tuple(value.shape)}, expected ({b}, ...)")
        for key, mask in self.condition_mask.items():
            if key not in self.properties:
                raise ValueError(f"condition_mask has key {key!r} with no matching property")
            if mask.dtype != torch.bool or tuple(mask.shape) != (b,):
                raise ValueError(f"condition_mask[{key!r}] must be bool of shape ({b},)")
        for key, value in self.latents.items():
            if key not in FIELDS or FIELDS[key].optional:
                raise ValueError(f"latents has key {key!r}, which is not a generated field")
            if value.shape[:1] != (rows[FIELDS[key].level],):
                raise ValueError(
                    f"latents[{key!r}] has shape {tuple(value.shape)}, expected {rows[FIELDS[key].level]} rows"
                )
        if self.material_ids is not None and len(self.material_ids) != b:
            raise ValueError(f"material_ids has {len(self.material_ids)} entries for {b} crystals")

    def __repr__(self) -> str:
        return (
            f"CrystalBatch({self.num_crystals} crystals, {self.atomic_numbers.shape[0]} atoms, "
            f"properties={sorted(self.properties)}, device={self.device}, dtype={self.frac_coords.dtype})"
        )

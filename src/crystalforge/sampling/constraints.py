"""Structural constraints by inpainting: known atoms and lattices written into the sampler's state.

SCIGEN (Okabe et al. 2024) steers a pretrained generator towards a structural pattern without
retraining: after every step, the known part of the structure (motif atoms, lattice shape) is put
on the model's own noising path at the time the step reached and written over the state, while the
model generates the rest around it (the RePaint idea, as a ``Constraint`` rather than a sampler copy).

**Re-noising rule.** At time ``t < 1`` the known clean values go through ``context.noise`` (the
model's path: a fresh draw each call) and the known entries of the result replace the state's, in
the batch fields *and* in ``state.latents`` (the model's working values, so nothing is re-encoded by
hand). At ``t >= 1`` the exact known values are written and the changed fields' latents are dropped
(``CrystalBatch.replace`` drops them; ``JointModel.latent`` re-encodes on demand), so a final state
is exact and never carries a stale latent. Unknown atoms are left as the model made them.

**Lattice ties** (``MotifConstraint``): the motif fixes the cell's shape in the plane, not its size.
At each call the state's lattice is projected: ``a = b := (a + b)/2``, ``c`` kept, angles
``(90°, 90°, gamma)``. The angles are known values, so below ``t = 1`` they are re-noised like any
known value; the lengths are generated values, so they are written as they are. The lattice latent
is then dropped and re-encoded by the model from the written lattice (exact up to round-off, since
the lattice code is the lattice's own parametrisation).

Constraints: ``Inpaint`` (known atoms/lattice of a batch), ``FixedAtoms`` (the template's ``fixed``
atoms), ``FixedLattice`` (one given lattice), ``MotifConstraint`` (a ``sampling.motifs`` pattern on
the first atoms of every crystal, with lattice ties). Each builds ``KnownValues`` and calls
``impose``; a new structural constraint only needs its own ``known_values``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.elements import MASK_Z, MAX_Z, z_to_symbol
from crystalforge.core.lattice import lattice_from_params, lattice_to_params
from crystalforge.core.periodic import wrap_frac
from crystalforge.generative.interfaces import StepContext
from crystalforge.sampling import motifs as motif_library
from crystalforge.sampling.motifs import Motif, parse_motif

__all__ = [
    "FixedAtoms", "FixedLattice", "Inpaint", "KnownValues", "KnownValuesConstraint", "MotifConstraint", "impose",
]  # fmt: skip

_FINAL_TIME = 1.0 - 1e-6
"""A crystal whose time reached this is at the data end: exact values are written."""


@dataclass(frozen=True)
class KnownValues:
    """The clean values a constraint imposes on a state of ``N`` atoms in ``B`` crystals.

    Attributes:
        atoms: ``[N]`` bool, the known atoms (None: no atom is constrained).
        frac_coords: ``[N, 3]`` clean fractional coordinates; rows of known atoms are read.
        atomic_numbers: ``[N]`` Z of the known atoms (None: their types are left to the model).
        lattice: ``[B, 3, 3]`` clean lattice of every crystal (None: the lattice is left alone).
        generated_lengths: the lattice's lengths are the model's own (tied) values, written as they
            are at every ``t``; only its angles are known values that are re-noised.

    """

    atoms: Tensor | None = None
    frac_coords: Tensor | None = None
    atomic_numbers: Tensor | None = None
    lattice: Tensor | None = None
    generated_lengths: bool = False

    def __post_init__(self) -> None:
        if self.atoms is not None and self.frac_coords is None:
            raise ValueError("KnownValues: known atoms need frac_coords")
        if self.atoms is None and (self.frac_coords is not None or self.atomic_numbers is not None):
            raise ValueError("KnownValues: frac_coords/atomic_numbers given without the atoms mask")

    def check(self, state: CrystalBatch, name: str) -> None:
        """``ValueError`` naming the constraint when a tensor does not fit the state's shapes."""
        n, b = int(state.atomic_numbers.shape[0]), state.num_crystals
        expected = {"atoms": (n,), "frac_coords": (n, 3), "atomic_numbers": (n,), "lattice": (b, 3, 3)}
        for key, shape in expected.items():
            value = getattr(self, key)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(
                    f"{name}: known {key} has shape {tuple(value.shape)} but the state needs {shape} "
                    f"({b} crystals, {n} atoms)"
                )


def impose(state: CrystalBatch, t: Tensor, context: StepContext, known: KnownValues, *, name: str) -> CrystalBatch:
    """``state`` with ``known`` written in: re-noised to ``t [B]`` below 1, exact at 1 (module docstring).

    Never changes ``state``; returns a new batch. The noising of every known value shares one
    ``context.noise`` call.
    """
    known.check(state, name)
    done = t.to(state.device).reshape(-1).expand(state.num_crystals) >= _FINAL_TIME  # [B]
    any_done = bool(done.any())
    noised = None if bool(done.all()) else _noised(state, t, context, known, name)
    changes: dict[str, Tensor] = {}
    latents = dict(state.latents)

    def merge(field: str, rows: Tensor, exact: Tensor, rows_done: Tensor) -> None:
        """Known ``rows`` of ``field`` (and its latent) from the noised batch, or exact where done."""
        current: Tensor = getattr(state, field)
        target = exact if noised is None else torch.where(_along(rows_done, exact), exact, getattr(noised, field))
        changes[field] = torch.where(_along(rows, current), target, current)
        old, new = state.latents.get(field), None if noised is None else noised.latents.get(field)
        if any_done or old is None or new is None:
            latents.pop(field, None)  # re-encoded from the field by the model when it needs it
        else:
            latents[field] = torch.where(_along(rows, old), new, old)

    if known.atoms is not None and known.frac_coords is not None:
        atoms = known.atoms.to(state.device)
        atom_done = done[state.crystal_idx]
        frac = wrap_frac(known.frac_coords.to(state.device, state.frac_coords.dtype))
        merge("frac_coords", atoms, frac, atom_done)
        if known.atomic_numbers is not None:
            merge("atomic_numbers", atoms, known.atomic_numbers.to(state.device), atom_done)
    if known.lattice is not None:
        lattice = known.lattice.to(state.device, state.lattice.dtype)
        if not known.generated_lengths:
            merge("lattice", torch.ones_like(done), lattice, done)
        else:  # the known (tied) lengths are the state's own: keep them, take the noised angles
            if noised is not None:
                rows = noised.lattice
                scaled = rows * (lattice.norm(dim=-1) / rows.norm(dim=-1))[..., None]
                lattice = torch.where(done[:, None, None], lattice, scaled)
            changes["lattice"] = lattice
            latents.pop("lattice", None)
    return state.replace(**changes, latents=latents)


def _along(mask: Tensor, like: Tensor) -> Tensor:
    """A row mask ``[R]`` shaped to broadcast against ``like [R, ...]``."""
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


def _noised(state: CrystalBatch, t: Tensor, context: StepContext, known: KnownValues, name: str) -> CrystalBatch:
    """The state's batch carrying the known clean values, put on the model's path at ``t``."""
    clean: dict[str, Tensor] = {}
    if known.atoms is not None and known.frac_coords is not None:
        atoms = known.atoms.to(state.device)
        frac = wrap_frac(known.frac_coords.to(state.device, state.frac_coords.dtype))
        clean["frac_coords"] = torch.where(atoms[:, None], frac, state.frac_coords)
        if known.atomic_numbers is not None:
            clean["atomic_numbers"] = torch.where(atoms, known.atomic_numbers.to(state.device), state.atomic_numbers)
    if known.lattice is not None:
        clean["lattice"] = known.lattice.to(state.device, state.lattice.dtype)
    try:
        return context.noise(state.replace(**clean, latents={}), t)
    except KeyError as exc:  # a type process refuses an element outside its vocabulary
        message = exc.args[0] if exc.args else exc
        raise ValueError(f"{name}: the model cannot represent the known atoms: {message}") from None


class KnownValuesConstraint(ABC):
    """A ``Constraint`` that writes ``known_values(state, context)`` into the state (see ``impose``)."""

    name: str = "constraint"

    @abstractmethod
    def known_values(self, state: CrystalBatch, context: StepContext) -> KnownValues:
        """The clean values to impose on ``state`` (may depend on the state, e.g. lattice ties)."""

    def apply(self, state: CrystalBatch, t: Tensor, context: StepContext) -> CrystalBatch:
        """``state`` with the known values re-noised to ``t [B]`` (exact at ``t = 1``)."""
        return impose(state, t, context, self.known_values(state, context), name=self.name)


def _check_types(atomic_numbers: Tensor, atoms: Tensor, name: str) -> None:
    """``ValueError`` when a known atom has no type (``MASK_Z``) or an impossible one."""
    z = atomic_numbers[atoms]
    bad = (z <= MASK_Z) | (z > MAX_Z)
    if bool(bad.any()):
        where = torch.nonzero(atoms).flatten()[bad].tolist()[:5]
        raise ValueError(
            f"{name}: known atom(s) {where} have no element (Z = 0); pass types=False to fix positions only"
        )


class Inpaint(KnownValuesConstraint):
    """Known atoms of a batch (positions, and types unless ``types=False``), optionally its lattice.

    Args:
        known: a batch with the template's atom counts whose known rows hold the clean values.
        atoms: ``[N]`` bool mask of the known atoms (default ``known.fixed``).
        types: also impose the known atoms' ``atomic_numbers``.
        lattice: also impose ``known.lattice`` on every crystal.

    """

    name = "Inpaint"

    def __init__(
        self,
        known: CrystalBatch,
        *,
        atoms: Tensor | Sequence[bool] | None = None,
        types: bool = True,
        lattice: bool = False,
    ) -> None:
        mask = known.fixed_mask if atoms is None else torch.as_tensor(atoms, dtype=torch.bool, device=known.device)
        n = int(known.atomic_numbers.shape[0])
        if tuple(mask.shape) != (n,):
            raise ValueError(f"Inpaint: atoms mask has shape {tuple(mask.shape)}, the batch has {n} atoms")
        if not bool(mask.any()) and not lattice:
            raise ValueError("Inpaint: no known atom (set `fixed` on the batch or pass atoms=) and lattice=False")
        if types:
            _check_types(known.atomic_numbers, mask, self.name)
        has_atoms = bool(mask.any())
        self.known = KnownValues(
            atoms=mask if has_atoms else None,
            frac_coords=known.frac_coords if has_atoms else None,
            atomic_numbers=known.atomic_numbers if has_atoms and types else None,
            lattice=known.lattice if lattice else None,
        )

    def known_values(self, state: CrystalBatch, context: StepContext) -> KnownValues:
        """The values given at construction."""
        return self.known


class FixedAtoms(KnownValuesConstraint):
    """The template's ``fixed`` atoms keep the template's positions (and types; lattice if asked)."""

    name = "FixedAtoms"

    def __init__(self, *, types: bool = True, lattice: bool = False) -> None:
        self.types = types
        self.lattice = lattice

    def known_values(self, state: CrystalBatch, context: StepContext) -> KnownValues:
        """Read from ``context.template``: its ``fixed`` mask, coordinates, types and lattice."""
        template = context.template
        mask = template.fixed_mask
        if not bool(mask.any()):
            raise ValueError("FixedAtoms: the template marks no atom as fixed (set CrystalBatch.fixed)")
        if self.types:
            _check_types(template.atomic_numbers, mask, self.name)
        return KnownValues(
            atoms=mask,
            frac_coords=template.frac_coords,
            atomic_numbers=template.atomic_numbers if self.types else None,
            lattice=template.lattice if self.lattice else None,
        )


class FixedLattice(KnownValuesConstraint):
    """Every crystal gets the given lattice (``[3, 3]`` for all, or ``[B, 3, 3]``), re-noised below t = 1."""

    name = "FixedLattice"

    def __init__(self, lattice: Tensor | np.ndarray) -> None:
        value = torch.as_tensor(lattice)
        if value.dim() not in (2, 3) or tuple(value.shape[-2:]) != (3, 3):
            raise ValueError(f"FixedLattice: lattice must be [3, 3] or [B, 3, 3], got {tuple(value.shape)}")
        if not value.is_floating_point() or bool((torch.linalg.det(value.double()) <= 0).any()):
            raise ValueError("FixedLattice: the lattice must be a float cell with positive volume (right-handed)")
        self.lattice = value

    @classmethod
    def from_params(cls, lengths: Sequence[float] | Tensor, angles: Sequence[float] | Tensor) -> FixedLattice:
        """From lengths ``(a, b, c)`` in Å and angles ``(alpha, beta, gamma)`` in degrees (``[3]`` or ``[B, 3]``)."""
        lengths_t = torch.as_tensor(lengths, dtype=torch.float64)
        angles_t = torch.as_tensor(angles, dtype=torch.float64)
        return cls(lattice_from_params(lengths_t, angles_t))

    def known_values(self, state: CrystalBatch, context: StepContext) -> KnownValues:
        """The lattice, broadcast to the state's crystals."""
        b = state.num_crystals
        value = self.lattice if self.lattice.dim() == 3 else self.lattice.expand(b, 3, 3)
        if value.shape[0] != b:
            raise ValueError(f"FixedLattice: {value.shape[0]} lattices given for {b} crystals")
        return KnownValues(lattice=value)


class MotifConstraint(KnownValuesConstraint):
    """A ``Motif`` of one element on the first ``k`` atoms of every crystal, with the motif's lattice ties.

    Args:
        motif: a ``sampling.motifs.Motif`` or its name (``"kagome"``).
        element_z: the element on the motif sites, as Z or symbol (``25`` or ``"Mn"``).
        layer: fractional height of the motif layer (default the motif's, 0).
        tie_lattice: project the lattice on the motif's ties at every step (``a = b``, angles).

    Atoms ``k, k+1, ...`` of each crystal are generated freely. Every crystal needs at least
    ``k = motif.num_sites`` atoms (``ValueError`` names the first one that has fewer). A template
    that gives types (CSP) must already hold the motif element on its first ``k`` atoms: the
    constraint never changes a given composition (``ValueError`` otherwise).

    """

    name = "MotifConstraint"

    def __init__(
        self, motif: Motif | str, element_z: int | str, *, layer: float | None = None, tie_lattice: bool = True
    ) -> None:
        self.motif = motif_library.motif(motif) if isinstance(motif, str) else motif
        try:
            z = motif_library.element_z(element_z)
        except ValueError as exc:
            raise ValueError(f"MotifConstraint: {exc}") from None
        self.element_z = z
        self.sites = torch.from_numpy(self.motif.frac_coords(layer))  # [k, 3]
        self.tie_lattice = tie_lattice
        self.name = f"MotifConstraint({self.motif.name}:{z_to_symbol(z)})"

    @classmethod
    def parse(cls, text: str, *, layer: float | None = None, tie_lattice: bool = True) -> MotifConstraint:
        """From ``"kagome:Mn"`` (``sampling.motifs.parse_motif``)."""
        found, z = parse_motif(text)
        return cls(found, z, layer=layer, tie_lattice=tie_lattice)

    def check_template(self, template: CrystalBatch) -> None:
        """``ValueError`` naming the first crystal that cannot carry the motif.

        A crystal cannot when it has fewer atoms than the motif has sites, or when it gives other
        elements (not ``MASK_Z``) on its first ``k`` atoms.
        """
        k = self.motif.num_sites
        short = torch.nonzero(template.num_atoms < k).flatten()
        if short.numel():
            i = int(short[0])
            raise ValueError(
                f"{self.name}: crystal {i} has {int(template.num_atoms[i])} atom(s) but the {self.motif.name} motif "
                f"needs {k} sites ({short.numel()} crystal(s) too small); use templates with at least {k} atoms"
            )
        z = template.atomic_numbers[self._motif_atoms(template)].reshape(-1, k)  # [B, k]
        clash = torch.nonzero(((z != MASK_Z) & (z != self.element_z)).any(-1)).flatten()
        if clash.numel():
            i = int(clash[0])
            given = ", ".join(z_to_symbol(int(v)) if v else "?" for v in z[i].tolist())
            raise ValueError(
                f"{self.name}: crystal {i} gives elements [{given}] on its first {k} atoms, where the motif puts "
                f"{z_to_symbol(self.element_z)}; list the motif element first in the composition"
            )

    def _motif_atoms(self, batch: CrystalBatch) -> Tensor:
        """``[N]`` bool: the first ``k`` atoms of each crystal."""
        within = (
            torch.arange(batch.atomic_numbers.shape[0], device=batch.device) - batch.atom_offsets[batch.crystal_idx]
        )
        return within < self.motif.num_sites

    def known_values(self, state: CrystalBatch, context: StepContext) -> KnownValues:
        """Motif sites and element on each crystal's first ``k`` atoms; the tied lattice of the state."""
        self.check_template(context.template)
        atoms = self._motif_atoms(state)
        sites = self.sites.to(state.device, state.frac_coords.dtype).repeat(state.num_crystals, 1)  # [B·k, 3]
        frac = torch.zeros_like(state.frac_coords).index_put((torch.nonzero(atoms).flatten(),), sites)
        types = torch.full_like(state.atomic_numbers, self.element_z)
        return KnownValues(
            atoms=atoms,
            frac_coords=frac,
            atomic_numbers=types,
            lattice=self.tied_lattice(state.lattice) if self.tie_lattice else None,
            generated_lengths=True,
        )

    def tied_lattice(self, lattice: Tensor) -> Tensor:
        """``lattice [B, 3, 3]`` projected on the ties: ``a = b := (a + b)/2`` (if tied), ``c`` kept, motif angles."""
        lengths, _ = lattice_to_params(lattice)
        a, b, c = lengths.unbind(-1)
        if self.motif.equal_ab:
            a = b = 0.5 * (a + b)
        angles = torch.tensor(self.motif.angles, dtype=lattice.dtype, device=lattice.device).expand_as(lengths)
        return lattice_from_params(torch.stack([a, b, c], -1), angles)

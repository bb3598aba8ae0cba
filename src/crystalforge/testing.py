"""Test helpers shipped with the package: tiny crystals, hypothesis strategies and symmetry asserts.

Outside users test their own backbones and featurisers with the same three-line checks::

    from crystalforge.testing import tiny_batch, assert_rotation_equivariant
    assert_rotation_equivariant(my_model, tiny_batch(), kind="scalar")

``hypothesis`` is needed only for the strategies (test extra).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.lattice import lattice_from_params
from crystalforge.core.symmetry_ops import (
    change_basis,
    permute,
    random_permutation,
    random_rotations,
    random_unimodular,
    rotate,
    translate,
)

if TYPE_CHECKING:  # pragma: no cover
    from hypothesis.strategies import SearchStrategy

Kind = Literal["scalar", "vector", "lattice", "stress"]
Output = Tensor | Mapping[str, Tensor]


def tiny_crystals() -> list[Crystal]:
    """Five small crystals built in code, covering the awkward cases.

    1-atom simple cubic Po; Si in its 2-atom fcc primitive cell; NaCl in its 8-atom conventional
    cell; a 5-atom triclinic cell with obtuse angles; a cell with atoms at frac 0.0 and 1.0.
    """
    si_a = 5.431
    fcc = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]) * si_a
    nacl_frac: list[list[float]] = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    nacl_frac = nacl_frac + [[x + 0.5 if i == 0 else x for i, x in enumerate(r)] for r in nacl_frac]
    triclinic = lattice_from_params(np.array([4.1, 5.3, 6.2]), np.array([100.0, 110.0, 95.0]))
    return [
        Crystal(np.array([84]), np.array([[0.0, 0.0, 0.0]]), np.eye(3) * 3.359, material_id="po_sc_1"),
        Crystal(np.array([14, 14]), np.array([[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]]), fcc, material_id="si_fcc_2"),
        Crystal(np.array([11] * 4 + [17] * 4), np.array(nacl_frac), np.eye(3) * 5.64, material_id="nacl_conv_8"),
        Crystal(
            np.array([8, 8, 22, 56, 8]),
            np.array([[0.1, 0.2, 0.3], [0.6, 0.1, 0.9], [0.35, 0.55, 0.45], [0.8, 0.75, 0.15], [0.05, 0.9, 0.6]]),
            triclinic,
            material_id="triclinic_5",
        ),
        Crystal(
            np.array([6, 6, 6]),
            np.array([[0.0, 0.0, 0.0], [1.0, 0.5, 0.5], [0.5, 1.0, 0.0]]),
            np.diag([2.5, 3.0, 3.5]),
            material_id="edge_3",
        ),
    ]


def tiny_batch(*, dtype: torch.dtype = torch.float64) -> CrystalBatch:
    """``tiny_crystals()`` collated (float64 by default, for tight tolerances)."""
    return CrystalBatch.collate(tiny_crystals(), dtype=dtype)


# ---- hypothesis strategies --------------------------------------------------------------------
def crystals(
    *, max_atoms: int = 8, elements: tuple[int, ...] = tuple(range(1, 84)), min_distance: float = 0.0
) -> SearchStrategy[Crystal]:
    """Hypothesis strategy for random valid ``Crystal``s.

    Lengths in [2.5, 12] Å, angles in [60°, 120°], cells with volume < 0.3·abc rejected;
    ``min_distance`` (Å) rejects crystals with closer atom pairs (minimum image).
    """
    from hypothesis import assume
    from hypothesis import strategies as st

    @st.composite
    def build(draw: st.DrawFn) -> Crystal:
        n = draw(st.integers(1, max_atoms))
        lengths = np.array(draw(st.lists(st.floats(2.5, 12.0), min_size=3, max_size=3)))
        angles = np.array(draw(st.lists(st.floats(60.0, 120.0), min_size=3, max_size=3)))
        try:
            lattice = lattice_from_params(lengths, angles)
        except ValueError:
            assume(False)
        assume(abs(np.linalg.det(lattice)) >= 0.3 * float(np.prod(lengths)))
        frac = np.array(
            draw(
                st.lists(
                    st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=3, max_size=3), min_size=n, max_size=n
                )
            )
        )
        z = np.array(draw(st.lists(st.sampled_from(elements), min_size=n, max_size=n)))
        crystal = Crystal(z, frac, lattice)
        if min_distance > 0 and n > 1:
            assume(min_pair_distance(crystal) >= min_distance)
        return crystal

    return build()


def crystal_batches(
    *, max_atoms: int = 8, max_crystals: int = 3, dtype: torch.dtype = torch.float64
) -> SearchStrategy[CrystalBatch]:
    """Hypothesis strategy for ``CrystalBatch``es of 1..``max_crystals`` random crystals."""
    from hypothesis import strategies as st

    return st.lists(crystals(max_atoms=max_atoms), min_size=1, max_size=max_crystals).map(
        lambda cs: CrystalBatch.collate(cs, dtype=dtype)
    )


def min_pair_distance(crystal: Crystal) -> float:
    """Shortest distance between two different atoms, periodic images included (inf for one atom).

    Exact for any cell: a radius search that grows until it finds a pair of different atoms.
    """
    from crystalforge.core.neighbors import radius_graph

    if crystal.num_atoms < 2:
        return float("inf")
    batch = CrystalBatch.collate([crystal], dtype=torch.float64)
    radius = (abs(crystal.volume) / crystal.num_atoms) ** (1.0 / 3.0)
    while True:
        edges = radius_graph(batch, radius)
        other = edges.edge_index[0] != edges.edge_index[1]
        if bool(other.any()):
            return float(edges.distances[other].min())
        radius *= 2.0


# ---- symmetry assertions ----------------------------------------------------------------------
def _tolerances(dtype: torch.dtype) -> tuple[float, float]:
    return (1e-9, 1e-7) if dtype == torch.float64 else (1e-4, 1e-3)


def _as_dict(out: Output) -> dict[str, Tensor]:
    return {"output": out} if isinstance(out, Tensor) else dict(out)


def _assert_close(actual: Tensor, expected: Tensor, what: str) -> None:
    __tracebackhide__ = True
    rtol, atol = _tolerances(expected.dtype) if expected.is_floating_point() else (0.0, 0.0)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _level(name: str, value: Tensor, batch: CrystalBatch, levels: Mapping[str, str] | None) -> str:
    if levels and name in levels:
        return levels[name]
    n, b = batch.atomic_numbers.shape[0], batch.num_crystals
    if value.shape[:1] == (n,) and n != b:
        return "atom"
    if value.shape[:1] == (b,) and n != b:
        return "crystal"
    raise ValueError(f"cannot tell whether output {name!r} is per atom or per crystal; pass levels={{...}}")


def assert_permutation_equivariant(
    fn: Callable[[CrystalBatch], Output], batch: CrystalBatch, *, levels: Mapping[str, str] | None = None, seed: int = 0
) -> None:
    """Per-atom outputs reorder with the atoms; per-crystal outputs are unchanged."""
    __tracebackhide__ = True
    perm = random_permutation(batch, generator=torch.Generator().manual_seed(seed))
    before, after = _as_dict(fn(batch)), _as_dict(fn(permute(batch, perm)))
    for name, value in before.items():
        level = _level(name, value, batch, levels)
        expected = value[perm] if level == "atom" else value
        _assert_close(after[name], expected, f"permutation, output {name!r} ({level})")


def assert_rotation_equivariant(
    fn: Callable[[CrystalBatch], Output],
    batch: CrystalBatch,
    *,
    kind: Kind | Mapping[str, Kind] = "scalar",
    seed: int = 0,
) -> None:
    """Outputs transform under ``L' = L Rᵀ`` as their kind says.

    scalar: unchanged; vector ``[..., 3]``: ``v Rᵀ``; lattice ``[B, 3, 3]``: ``Y Rᵀ``; stress
    ``[B, 3, 3]``: ``R S Rᵀ``. Per-atom vectors use their crystal's rotation.
    """
    __tracebackhide__ = True
    rot = random_rotations(batch.num_crystals, generator=torch.Generator().manual_seed(seed)).to(batch.lattice)
    before, after = _as_dict(fn(batch)), _as_dict(fn(rotate(batch, rot)))
    for name, value in before.items():
        k = kind if isinstance(kind, str) else kind[name]
        if k == "scalar":
            expected = value
        else:
            per_atom = value.shape[0] == batch.atomic_numbers.shape[0] and value.shape[0] != batch.num_crystals
            r = rot[batch.crystal_idx] if per_atom else rot
            if k == "vector":
                expected = (value.unsqueeze(-2) @ r.transpose(-1, -2)).squeeze(-2)
            elif k == "lattice":
                expected = value @ r.transpose(-1, -2)
            elif k == "stress":
                expected = r @ value @ r.transpose(-1, -2)
            else:
                raise ValueError(f"unknown kind {k!r}")
        _assert_close(after[name], expected, f"rotation, output {name!r} ({k})")


def assert_periodic_translation_invariant(
    fn: Callable[[CrystalBatch], Output], batch: CrystalBatch, *, seed: int = 0
) -> None:
    """Outputs are unchanged when every crystal's atoms are shifted by one random fractional vector."""
    __tracebackhide__ = True
    shift = torch.rand(batch.num_crystals, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    before, after = _as_dict(fn(batch)), _as_dict(fn(translate(batch, shift.to(batch.frac_coords))))
    for name, value in before.items():
        _assert_close(after[name], value, f"periodic translation, output {name!r}")


def assert_cell_choice_invariant(fn: Callable[[CrystalBatch], Output], batch: CrystalBatch, *, seed: int = 0) -> None:
    """Outputs are unchanged when each lattice is described by other vectors ``L' = M L`` (det M = 1)."""
    __tracebackhide__ = True
    m = random_unimodular(batch.num_crystals, generator=torch.Generator().manual_seed(seed))
    before, after = _as_dict(fn(batch)), _as_dict(fn(change_basis(batch, m)))
    for name, value in before.items():
        _assert_close(after[name], value, f"unit-cell choice, output {name!r}")

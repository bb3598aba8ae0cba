"""ASERelaxer: CHGNet relaxes a perturbed NaCl back to its minimum; failures become reasons."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

from crystalforge.core.crystal import Crystal
from crystalforge.execution import ExecutorConfig
from crystalforge.relax import (
    ASERelaxer,
    Relaxer,
    RelaxResult,
    chgnet_relaxer,
    chgnet_static_energies,
    failure_kind,
    get_relaxer,
    relaxation_rmsd,
)

NACL_Z = [11, 17]
FCC = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def nacl(a: float = 5.64, *, material_id: str = "nacl") -> Crystal:
    """Rocksalt NaCl in its 2-atom primitive cell (small, so CHGNet steps are cheap)."""
    return Crystal(NACL_Z, [[0, 0, 0], [0.5, 0.5, 0.5]], FCC * a, material_id=material_id)


def perturbed_nacl(seed: int = 0) -> Crystal:
    """Random 0.1 Å displacements and a 3 % (anisotropic) strain of rocksalt NaCl."""
    rng = np.random.default_rng(seed)
    ideal = nacl()
    cart = ideal.cart_coords + rng.normal(scale=0.1, size=(2, 3))
    lattice = ideal.lattice @ np.diag([1.03, 0.98, 1.02])
    frac = cart @ np.linalg.inv(ideal.lattice)
    return Crystal(NACL_Z, frac, lattice, material_id="perturbed")


# ---- CHGNet ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chgnet() -> ASERelaxer:
    pytest.importorskip("chgnet")
    relaxer = chgnet_relaxer(fmax=0.05, max_steps=300)
    _ = relaxer.calculator  # load once for the module
    return relaxer


def test_chgnet_relaxer_returns_perturbed_nacl_to_its_minimum(chgnet: ASERelaxer) -> None:
    ideal, perturbed = chgnet.relax([nacl(), perturbed_nacl()])
    assert ideal.ok and perturbed.ok and ideal.converged and perturbed.converged
    assert perturbed.energy_per_atom < perturbed.initial_energy_per_atom - 0.002
    assert abs(perturbed.energy_per_atom - ideal.energy_per_atom) < 1e-3
    assert perturbed.crystal is not None and perturbed.crystal.material_id == "perturbed"
    assert np.array_equal(perturbed.crystal.atomic_numbers, NACL_Z)
    assert perturbed.rmsd > 0.01 and ideal.rmsd < 1e-3
    assert math.isclose(perturbed.energy, perturbed.energy_per_atom * 2, rel_tol=1e-12)
    assert 0 < perturbed.steps <= 300 and perturbed.max_force <= 0.05 + 1e-9
    # the strained cell relaxes back to (about) the ideal volume
    assert perturbed.crystal.volume == pytest.approx(ideal.crystal.volume, rel=0.03)


def test_chgnet_static_mode_and_batched_energies_agree(chgnet: ASERelaxer) -> None:
    crystals = [nacl(), perturbed_nacl()]
    static = chgnet_relaxer(static=True)
    static._calculator = chgnet.calculator  # reuse the loaded model
    results = static.relax(crystals)
    assert all(r.ok and r.steps == 0 and r.rmsd == 0 and r.converged for r in results)
    assert results[0].crystal is crystals[0]
    batched = chgnet_static_energies(crystals, batch_size=2, model=chgnet.calculator.model)
    assert np.allclose(batched, [r.energy_per_atom for r in results], atol=1e-4)
    assert static.settings["mode"] == "static" and static.name == "chgnet-0.3.0"


def test_registry_and_protocol() -> None:
    pytest.importorskip("chgnet")
    relaxer = get_relaxer("chgnet", fmax=0.2)
    assert isinstance(relaxer, Relaxer) and relaxer.settings["fmax"] == 0.2
    assert relaxer.settings["cell_filter"] == "FrechetCellFilter" and relaxer.settings["optimizer"] == "FIRE"
    with pytest.raises(KeyError, match="known: chgnet"):
        get_relaxer("nope")


# ---- fake calculators for the failure paths ------------------------------------------------------------
class FakeCalculator(Calculator):
    """Energy, forces and stress from a small Python function; optional delay per call."""

    implemented_properties = ("energy", "forces", "stress")

    def __init__(self, mode: str, *, delay: float = 0.0, nan_after: int = -1) -> None:
        super().__init__()
        self.mode = mode
        self.delay = delay
        self.nan_after = nan_after
        self.calls = 0

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        n = len(self.atoms)
        pos = self.atoms.positions
        energy, forces, stress = 0.0, np.zeros((n, 3)), np.zeros(6)
        if self.mode == "raise":
            raise RuntimeError("model exploded on purpose")
        if self.mode == "nan":
            energy = math.nan
        elif self.mode == "push":  # constant force on every atom: never converges
            forces[:, 0] = 1.0
            energy = -float(pos[:, 0].sum())
        elif self.mode == "expand":  # E = -k V: the cell grows without bound
            k = 0.05
            energy = -k * self.atoms.get_volume()
            stress[:3] = -k
        elif self.mode == "collapse":  # harmonic attraction of atom 1 to atom 0, no repulsion
            d = pos[1] - pos[0]
            energy = 0.5 * float(d @ d)
            forces[0], forces[1] = d, -d
        elif self.mode == "deep":
            energy = -100.0 * n
        if 0 <= self.nan_after < self.calls:
            energy = math.nan
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "stress": stress}


class FakeFactory:
    """Picklable factory, so that worker processes can build the fake calculator."""

    def __init__(self, mode: str, **kwargs: float) -> None:
        self.mode = mode
        self.kwargs = kwargs

    def __call__(self) -> FakeCalculator:
        return FakeCalculator(self.mode, **self.kwargs)


def two_atoms(distance: float = 2.5, a: float = 6.0) -> Crystal:
    return Crystal([1, 1], [[0.2, 0.5, 0.5], [0.2 + distance / a, 0.5, 0.5]], np.eye(3) * a, material_id="h2")


@pytest.mark.parametrize(
    ("mode", "kwargs", "kind", "text"),
    [
        ("raise", {}, "calculator error", "exploded on purpose"),
        ("nan", {}, "non-finite", "initial energy"),
        ("push", {"nan_after": 4}, "non-finite", "energy became nan"),
        ("expand", {}, "explosion", "cell volume changed"),
        ("collapse", {"relax_cell": False}, "explosion", "Å apart"),
        ("deep", {}, "explosion", "below -30"),
    ],
)
def test_failures_are_reasons_not_exceptions(mode: str, kwargs: dict, kind: str, text: str) -> None:
    relax_cell = kwargs.pop("relax_cell", True)
    relaxer = ASERelaxer(FakeFactory(mode, **kwargs), fmax=0.01, max_steps=2000, relax_cell=relax_cell, name="fake")
    (result,) = relaxer.relax([two_atoms()])
    assert not result.ok and result.crystal is None and math.isnan(result.energy)
    assert failure_kind(result.failure) == kind == result.failure_kind
    assert text in result.failure
    assert result.material_id == "h2"


def test_timeout_is_a_failure() -> None:
    relaxer = ASERelaxer(FakeFactory("push", delay=0.02), timeout_s=0.15, max_steps=10_000, relax_cell=False)
    start = time.perf_counter()
    (result,) = relaxer.relax([two_atoms()])
    assert time.perf_counter() - start < 2.0
    assert result.failure_kind == "timeout" and 0 < result.steps < 10_000


def test_max_steps_gives_an_unconverged_result_not_a_failure() -> None:
    relaxer = ASERelaxer(FakeFactory("push"), max_steps=3, relax_cell=False, min_distance=0.0)
    (result,) = relaxer.relax([two_atoms()])
    assert result.ok and not result.converged and result.failure is None and result.steps == 3
    assert result.crystal is not None and result.rmsd == pytest.approx(0.0, abs=1e-12)  # rigid drift removed
    assert result.energy_per_atom < result.initial_energy_per_atom


def test_workers_build_their_own_calculators_and_keep_order() -> None:
    crystals = [two_atoms(d) for d in (2.0, 2.5, 3.0)]
    config = ExecutorConfig(workers=2)  # spawned processes: each builds its own calculator
    with ASERelaxer(FakeFactory("collapse"), relax_cell=False, workers=config, min_distance=0.0, fmax=0.05) as relaxer:
        results = relaxer.relax(crystals)
        again = relaxer.relax(crystals[:2])  # the same worker processes serve later calls
    assert relaxer._executor is None
    assert [r.steps for r in again] == [r.steps for r in results[:2]]
    serial = ASERelaxer(FakeFactory("collapse"), relax_cell=False, min_distance=0.0, fmax=0.05).relax(crystals)
    assert [r.steps for r in results] == [r.steps for r in serial]
    assert all(r.ok and r.converged for r in results)
    assert np.allclose([r.energy for r in results], [r.energy for r in serial])


def test_executor_config_is_accepted_and_workers_must_be_positive() -> None:
    config = ExecutorConfig(workers=3)
    relaxer = ASERelaxer(FakeFactory("collapse"), workers=config)
    assert relaxer.settings["workers"] == 3 and relaxer.execution is config and relaxer.workers == 3
    assert ASERelaxer(FakeFactory("collapse"), workers=2).execution == ExecutorConfig(workers=2)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        ASERelaxer(FakeFactory("collapse"), workers=0)


def test_relaxation_rmsd_uses_minimum_image_and_relaxed_lattice() -> None:
    a = Crystal([1, 1], [[0.99, 0, 0], [0.5, 0.5, 0.5]], np.eye(3) * 4.0)
    b = Crystal([1, 1], [[0.01, 0, 0], [0.5, 0.5, 0.5]], np.eye(3) * 5.0)
    # displacements +0.02 and 0 along x; drift removed → ±0.01 in frac, times 5 Å
    assert relaxation_rmsd(a, b) == pytest.approx(0.05)
    assert relaxation_rmsd(a, b, remove_drift=False) == pytest.approx(np.sqrt(0.5 * 0.1**2))
    with pytest.raises(ValueError, match="same atoms"):
        relaxation_rmsd(a, Crystal([1], [[0, 0, 0]], np.eye(3)))


def test_result_round_trips_through_plain_data() -> None:
    result = RelaxResult(
        crystal=nacl(), energy=-29.0, energy_per_atom=-3.625, initial_energy_per_atom=-3.6, rmsd=0.1, steps=5,
        converged=True, wall_time_s=1.5, material_id="nacl", max_force=0.01,
    )  # fmt: skip
    back = RelaxResult.from_dict(result.to_dict())
    assert back.crystal is not None and back.crystal.allclose(result.crystal)
    assert back.to_dict() == result.to_dict()
    failed = RelaxResult.failed("timeout: 1 s", material_id="x")
    assert RelaxResult.from_dict(failed.to_dict()).failure == "timeout: 1 s"


def test_cells_too_thin_to_search_are_refused_before_the_calculator_runs() -> None:
    # a generated cell of 0.008 Å³ once made CHGNet's neighbour search run for half an hour
    flat = Crystal([1, 1], [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], np.diag([4.0, 4.0, 5e-4]), material_id="flat")
    relaxer = ASERelaxer(FakeFactory("raise"), name="fake")  # the calculator would raise if it were called
    (result,) = relaxer.relax([flat])
    assert result.failure_kind == "invalid input" and "too thin" in result.failure and result.material_id == "flat"

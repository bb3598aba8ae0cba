"""Fixed-length descriptors of crystals from the field's libraries, behind one ``Featurizer`` protocol.

``featurize(crystals)`` returns a ``[B, D]`` float64 array. A crystal the library cannot handle
(an element without tabulated data, too many atoms, ...) gives a NaN row, never an exception; the
featurizer's ``failures`` then lists it (a ``Candidate`` without a crystal, source
``"crystal <index> (<material_id>)"``; the rows are in ``failed_indices``) and one warning is logged
per call. ``workers`` (a count or an ``ExecutorConfig``) spreads crystals over an executor.

The two fingerprints of the coverage metrics (CDVAE/DiffCSP protocol) are reproduced exactly:

- ``CrystalNNFingerprint``: matminer ``CrystalNNFingerprint.from_preset("ops")`` per site,
  averaged over sites (61 values).
- ``MagpieComposition``: matminer ``ElementProperty.from_preset("magpie")`` on the composition
  (132 values). matminer >= 0.9 imputes missing element data by default (``impute_nan=True``); the
  protocol used matminer 0.7, which left NaN, so the default here is ``impute_nan=False``. With a
  ``scaler`` the values become ``(x − mean) / std`` and NaN becomes 0 *after* that normalisation
  (rows of failed crystals stay NaN).

matminer is an optional extra (``pip install "crystalforge[descriptors]"``): building a matminer
featurizer without it raises ``MissingDependencyError`` at once; its featurizers are imported when
first used. ``XRDPattern`` needs only pymatgen.

(About 500 lines: the shared featurize loop and its four registered featurizers are one unit.)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.core.extras import require
from crystalforge.execution import ExecutorConfig, make_executor

if TYPE_CHECKING:  # pragma: no cover
    from matminer.featurizers.composition import ElementProperty
    from matminer.featurizers.structure import SineCoulombMatrix as MatminerSineCoulomb
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

logger = logging.getLogger(__name__)
Impl = TypeVar("Impl")
"""The library object a featurizer wraps."""

MAGPIE_DIM = 132
CRYSTALNN_DIM = 61


def _import_matminer(module: str) -> Any:
    """Import a matminer module, or raise ``MissingDependencyError`` naming the ``descriptors`` extra."""
    return require(module, "this featurizer", extra="descriptors")


def require_matminer(feature: str) -> None:
    """Raise ``MissingDependencyError`` (extra ``descriptors``) unless matminer can be imported."""
    require("matminer", feature, extra="descriptors")


def featurization_failure(index: int, material_id: str | None, reason: str) -> Candidate:
    """The record of a crystal that got a NaN row: source ``"crystal <index> (<material_id>)"``."""
    ident = f" ({material_id})" if material_id else ""
    return Candidate.failure(f"crystal {index}{ident}", reason, material_id=material_id)


@runtime_checkable
class Featurizer(Protocol):
    """Maps crystals to fixed-length float64 vectors; NaN rows for crystals it cannot featurize."""

    name: str
    dim: int
    failures: list[Candidate]  # failures of the last ``featurize`` call (no crystal, ``error`` = reason)

    def labels(self) -> list[str]:
        """Names of the ``dim`` features."""
        ...

    def featurize(self, crystals: Sequence[Crystal]) -> np.ndarray:
        """Features ``[B, dim]`` float64, NaN rows where featurization failed."""
        ...


# ---- shared machinery ---------------------------------------------------------------------------
_WORKER_FEATURIZER: BaseFeaturizer | None = None
"""The featurizer of a pool worker process (set once per worker by ``_init_worker``)."""


def _init_worker(featurizer: BaseFeaturizer) -> None:
    global _WORKER_FEATURIZER
    _WORKER_FEATURIZER = featurizer


_Chunk = tuple[np.ndarray, list[tuple[int, Candidate]]]
"""Features of a chunk and its failures as ``(index, failure)``."""


def _featurize_chunk_in_worker(task: tuple[int, Sequence[Crystal]]) -> _Chunk:
    if _WORKER_FEATURIZER is None:  # pragma: no cover - the executor initializer always runs first
        raise RuntimeError("featurizer worker was not initialised")
    start, crystals = task
    return _WORKER_FEATURIZER._featurize_chunk(start, crystals)


class BaseFeaturizer(ABC, Generic[Impl]):
    """Common ``featurize`` loop: NaN rows and failure records, optional parallel executor.

    Subclasses set ``name`` and ``dim``, and implement ``_build`` (create the library object,
    called lazily once per process), ``_featurize_one`` and ``labels``.

    Args:
        workers: Worker count or ``ExecutorConfig`` used by ``featurize`` (1 = in this process).

    """

    name: str = ""
    dim: int = 0
    needs_matminer: bool = False
    """True for matminer featurizers: building one without matminer raises ``MissingDependencyError``."""

    def __init__(self, *, workers: int | ExecutorConfig = 1) -> None:
        if isinstance(workers, int) and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if self.needs_matminer:
            require_matminer(f"the {self.name!r} featurizer")
        self._execution = ExecutorConfig.of(workers)
        self.workers = self._execution.workers
        self.failures: list[Candidate] = []
        self._failed_indices: list[int] = []
        self._impl: Impl | None = None

    # -- for subclasses
    @abstractmethod
    def _build(self) -> Impl:
        """Create the library object doing the work (called lazily, once per process)."""

    @abstractmethod
    def _featurize_one(self, crystal: Crystal, impl: Impl) -> np.ndarray:
        """Features ``[dim]`` of one crystal; may raise for a crystal the library cannot handle."""

    @abstractmethod
    def labels(self) -> list[str]:
        """Names of the ``dim`` features."""

    def _postprocess(self, features: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Transform ``[B, dim]`` features once all rows are in (``ok [B]`` marks successes); identity here."""
        return features

    # -- shared
    @property
    def failed_indices(self) -> list[int]:
        """Positions (in the last ``featurize`` call's input) of the rows in ``failures``."""
        return list(self._failed_indices)

    @property
    def impl(self) -> Impl:
        """The library featurizer (built on first use)."""
        if self._impl is None:
            self._impl = self._build()
        return self._impl

    def __getstate__(self) -> dict[str, Any]:
        # library objects are rebuilt in worker processes rather than pickled
        state = self.__dict__.copy()
        state["_impl"] = None
        state["failures"] = []
        state["_failed_indices"] = []
        return state

    def _featurize_chunk(self, start: int, crystals: Sequence[Crystal]) -> _Chunk:
        out = np.full((len(crystals), self.dim), np.nan, dtype=np.float64)
        failures: list[tuple[int, Candidate]] = []
        impl = self.impl
        for offset, crystal in enumerate(crystals):
            try:
                with warnings.catch_warnings():
                    # per-site chatter from matminer/pymatgen ("no oxidation states", np.matrix use)
                    # would flood logs; it never changes the numbers
                    warnings.simplefilter("ignore", UserWarning)
                    warnings.simplefilter("ignore", PendingDeprecationWarning)
                    row = np.asarray(self._featurize_one(crystal, impl), dtype=np.float64).reshape(-1)
                if row.shape != (self.dim,):
                    raise ValueError(f"library returned {row.shape[0]} features, expected {self.dim}")
                out[offset] = row
            except Exception as exc:  # noqa: BLE001 - any library failure becomes a NaN row and a report
                index = start + offset
                reason = f"{type(exc).__name__}: {exc}"
                failures.append((index, featurization_failure(index, crystal.material_id, reason)))
        return out, failures

    def featurize(self, crystals: Sequence[Crystal]) -> np.ndarray:
        """Features ``[B, dim]`` float64; NaN rows (listed in ``failures``) where the library failed."""
        crystals = list(crystals)
        for i, c in enumerate(crystals):
            if not isinstance(c, Crystal):
                raise TypeError(f"{self.name}: item {i} is a {type(c).__name__}, expected a Crystal")
        if not crystals:
            self.failures, self._failed_indices = [], []
            return np.empty((0, self.dim), dtype=np.float64)
        if not _is_parallel(self._execution) or len(crystals) == 1:
            features, indexed = self._featurize_chunk(0, crystals)
        else:
            features, indexed = self._featurize_in_pool(crystals)
        failures = [f for _, f in indexed]
        self.failures = failures
        self._failed_indices = [i for i, _ in indexed]
        ok = np.ones(len(crystals), dtype=bool)
        ok[self._failed_indices] = False
        if failures:
            logger.warning(
                "%s: %d of %d crystals could not be featurized (NaN rows); first: %s",
                self.name,
                len(failures),
                len(crystals),
                failures[0],
            )
            for failure in failures:
                logger.debug("%s: %s", self.name, failure)
        return self._postprocess(features, ok)

    def _featurize_in_pool(self, crystals: list[Crystal]) -> _Chunk:
        workers = min(self.workers, len(crystals))
        size = max(1, math.ceil(len(crystals) / (4 * workers)))  # a few chunks per worker to balance load
        tasks = [(s, crystals[s : s + size]) for s in range(0, len(crystals), size)]
        config = dataclasses.replace(self._execution, workers=workers)
        # Build the library object here first: forked workers inherit its imports (matminer's take
        # seconds, and a chunked job starts a pool per chunk) instead of importing them again.
        _ = self.impl
        executor = make_executor(config, initializer=_init_worker, initargs=(self,))
        try:
            results = executor.map(_featurize_chunk_in_worker, tasks)
        finally:
            executor.close()
        features = np.concatenate([r[0] for r in results], axis=0)
        failures = [f for r in results for f in r[1]]
        return features, failures

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, workers={self.workers})"


def _is_parallel(execution: ExecutorConfig) -> bool:
    """True when featurization goes to other processes (local workers or a Ray cluster)."""
    return execution.workers > 1 or execution.ray is not None


# ---- composition ----------------------------------------------------------------------------------
Scaler = tuple[Sequence[float], Sequence[float]] | str | os.PathLike


CDVAE_SCALER = Path(__file__).parent / "data" / "cdvae_comp_scaler.json"
"""CDVAE's Magpie normalisation constants (132 means and stds), shipped with the package."""


def load_scaler(scaler: Scaler, *, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(means [dim], stds [dim])`` from a pair of sequences or a JSON file with "means" and "stds".

    ``"cdvae"`` names the shipped CDVAE constants (``CDVAE_SCALER``).
    """
    if isinstance(scaler, str) and scaler == "cdvae":
        scaler = CDVAE_SCALER
    if isinstance(scaler, (str, os.PathLike)):
        path = Path(scaler)
        try:
            raw = json.loads(path.read_text())
            means, stds = raw["means"], raw["stds"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a scaler JSON with 'means' and 'stds' lists ({exc})") from None
    else:
        means, stds = scaler
    m = np.asarray(means, dtype=np.float64).reshape(-1)
    s = np.asarray(stds, dtype=np.float64).reshape(-1)
    if m.shape != (dim,) or s.shape != (dim,):
        raise ValueError(f"scaler needs {dim} means and {dim} stds, got {m.shape[0]} and {s.shape[0]}")
    return m, s


class MagpieComposition(BaseFeaturizer["ElementProperty"]):
    """matminer Magpie ``ElementProperty`` statistics of the composition (132 features).

    Args:
        scaler: Optional ``(means, stds)`` or path to a JSON file with ``"means"`` and ``"stds"``
            (e.g. CDVAE's constants, ``cdvae_comp_scaler.json``); applied as ``(x − mean) / std``,
            then NaN → 0 on successfully featurized rows.
        impute_nan: matminer's imputation of missing element data (False reproduces matminer 0.7
            and the CDVAE/DiffCSP coverage numbers).
        workers: Worker count or ``ExecutorConfig`` used by ``featurize``.

    """

    name = "magpie"
    dim = MAGPIE_DIM
    needs_matminer = True

    def __init__(
        self, *, scaler: Scaler | None = None, impute_nan: bool = False, workers: int | ExecutorConfig = 1
    ) -> None:
        super().__init__(workers=workers)
        self.impute_nan = impute_nan
        self.scaler = None if scaler is None else load_scaler(scaler, dim=self.dim)

    def _build(self) -> ElementProperty:
        composition = _import_matminer("matminer.featurizers.composition")
        return composition.ElementProperty.from_preset("magpie", impute_nan=self.impute_nan)

    def _featurize_one(self, crystal: Crystal, impl: ElementProperty) -> np.ndarray:
        from pymatgen.core import Composition

        return np.asarray(impl.featurize(Composition(crystal.composition)), dtype=np.float64)

    def _postprocess(self, features: np.ndarray, ok: np.ndarray) -> np.ndarray:
        if self.scaler is None:
            return features
        means, stds = self.scaler
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = (features - means) / stds
        scaled[ok] = np.nan_to_num(scaled[ok], nan=0.0, posinf=np.inf, neginf=-np.inf)
        return scaled

    def labels(self) -> list[str]:
        """Matminer's feature names, e.g. ``"MagpieData mean Number"``."""
        return list(self.impl.feature_labels())


MIN_FINGERPRINT_VOLUME_PER_ATOM = 1.0
"""Cells below this volume per atom (Å³) get no CrystalNN fingerprint: it covers CDVAE's
'unrealistically small lattice' (< 0.1 Å³ in all) and is 6× below the densest mp_20 test crystal."""


# ---- structure -------------------------------------------------------------------------------------
class CrystalNNFingerprint(BaseFeaturizer[Any]):
    """Mean over sites of matminer ``CrystalNNFingerprint.from_preset("ops")`` (61 features).

    The structure fingerprint of the CDVAE/DiffCSP coverage metrics. Elements without the radius
    data CrystalNN needs (e.g. Cf and heavier) give a NaN row, and so does a collapsed cell (below
    ``MIN_FINGERPRINT_VOLUME_PER_ATOM``, 1 Å³ per atom), on which CrystalNN does not finish.

    Args:
        implementation: ``"arrays"`` (default) computes CrystalNN's neighbours and the order
            parameters as array operations (``crystalnn_neighbours.py``, ``crystalnn_ops.py``),
            handing pymatgen the sites where rounding could take another branch (agrees with
            matminer to 1e-6 per component, about 5× faster); ``"matminer"`` calls matminer's
            featurizer on every site. The two have different cache keys.
        workers: Worker count or ``ExecutorConfig`` used by ``featurize``.

    """

    name = "crystalnn"
    dim = CRYSTALNN_DIM
    needs_matminer = True
    IMPLEMENTATIONS = ("arrays", "matminer")

    def __init__(self, *, implementation: str = "arrays", workers: int | ExecutorConfig = 1) -> None:
        if implementation not in self.IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {self.IMPLEMENTATIONS}, got {implementation!r}")
        super().__init__(workers=workers)
        self.implementation = implementation

    def _build(self) -> Any:
        site = _import_matminer("matminer.featurizers.site")
        library = site.CrystalNNFingerprint.from_preset("ops")
        if self.implementation == "matminer":
            return library
        from crystalforge.representations.crystalnn_ops import CrystalNNOps

        return CrystalNNOps(library.cnn)

    def _featurize_one(self, crystal: Crystal, impl: Any) -> np.ndarray:
        per_atom = crystal.volume / crystal.num_atoms
        if per_atom < MIN_FINGERPRINT_VOLUME_PER_ATOM:
            # CrystalNN walks every periodic image within its cutoff (~ r^3 / V of them): on generated
            # cells of 0.04 and 0.22 A^3 it ran for minutes without finishing.
            raise ValueError(
                f"{per_atom:.3g} A^3 per atom is below {MIN_FINGERPRINT_VOLUME_PER_ATOM} A^3 (no fingerprint "
                "for a collapsed cell)"
            )
        structure = crystal.to_pymatgen()
        if self.implementation == "matminer":
            site_fps = np.array([impl.featurize(structure, i) for i in range(len(structure))], dtype=np.float64)
        else:
            site_fps = impl.structure(structure)  # [n, 61]
        return site_fps.mean(axis=0)

    def labels(self) -> list[str]:
        """Matminer's feature names, e.g. ``"wt CN_1"``."""
        impl = self.impl
        return list(impl.feature_labels() if self.implementation == "matminer" else impl.labels())


class SineCoulombMatrix(BaseFeaturizer["MatminerSineCoulomb"]):
    """Eigenvalues of matminer's sine Coulomb matrix, sorted, zero-padded to ``max_atoms``.

    The values are those of matminer ``SineCoulombMatrix(flatten=True)``, except that they are
    sorted in decreasing order (matminer keeps ``np.linalg.eig``'s order, which depends on the atom
    order) and padded to a fixed ``max_atoms`` chosen here instead of by ``fit``. Crystals with more
    than ``max_atoms`` atoms give NaN rows. Invariant to rotation, translation and atom order, but
    not to the choice of unit cell (a property of the descriptor).

    Args:
        max_atoms: Feature length (largest crystal handled).
        diag_elems: matminer's option: diagonal ``0.5 Z^2.4`` (True) or zero.
        workers: Worker count or ``ExecutorConfig`` used by ``featurize``.

    """

    name = "sine_coulomb"
    needs_matminer = True

    def __init__(self, *, max_atoms: int = 52, diag_elems: bool = True, workers: int | ExecutorConfig = 1) -> None:
        super().__init__(workers=workers)
        if max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {max_atoms}")
        self.dim = max_atoms
        self.diag_elems = diag_elems

    def _build(self) -> MatminerSineCoulomb:
        structure = _import_matminer("matminer.featurizers.structure")
        return structure.SineCoulombMatrix(diag_elems=self.diag_elems, flatten=False)

    def _featurize_one(self, crystal: Crystal, impl: MatminerSineCoulomb) -> np.ndarray:
        if crystal.num_atoms > self.dim:
            raise ValueError(f"{crystal.num_atoms} atoms exceed max_atoms={self.dim}")
        matrix = np.asarray(impl.featurize(crystal.to_pymatgen())[0], dtype=np.float64)  # [n, n], symmetric
        eigs = np.sort(np.linalg.eigvalsh(matrix))[::-1]
        out = np.zeros(self.dim, dtype=np.float64)
        out[: len(eigs)] = eigs
        return out

    def labels(self) -> list[str]:
        """``"sine coulomb matrix eig {i}"`` for i < ``max_atoms``."""
        return [f"sine coulomb matrix eig {i}" for i in range(self.dim)]


class XRDPattern(BaseFeaturizer["XRDCalculator"]):
    """Powder XRD pattern (pymatgen ``XRDCalculator``) on a fixed 2θ grid, normalised to max 1.

    Each peak is a Gaussian of standard deviation ``sigma`` (degrees) integrated over every bin, so
    the pattern changes smoothly when a peak moves; ``sigma=0`` adds each peak's intensity to the bin
    holding it. A crystal without peaks in range gives a zero row.

    Args:
        num_bins: Number of 2θ bins over ``two_theta_range``.
        two_theta_range: (min, max) 2θ in degrees.
        sigma: Gaussian broadening in degrees 2θ (0 for plain binning).
        wavelength: Radiation name (pymatgen's table, e.g. ``"CuKa"``) or wavelength in Å.
        workers: Worker count or ``ExecutorConfig`` used by ``featurize``.

    """

    name = "xrd"

    def __init__(
        self,
        *,
        num_bins: int = 512,
        two_theta_range: tuple[float, float] = (5.0, 90.0),
        sigma: float = 0.1,
        wavelength: str | float = "CuKa",
        workers: int | ExecutorConfig = 1,
    ) -> None:
        super().__init__(workers=workers)
        lo, hi = (float(v) for v in two_theta_range)
        if num_bins < 1 or not 0 <= lo < hi <= 180 or sigma < 0:
            raise ValueError(f"bad XRD grid: num_bins={num_bins}, two_theta_range={two_theta_range}, sigma={sigma}")
        self.dim = num_bins
        self.two_theta_range = (lo, hi)
        self.sigma = float(sigma)
        self.wavelength = wavelength

    @property
    def bin_edges(self) -> np.ndarray:
        """2θ bin edges ``[num_bins + 1]`` in degrees."""
        return np.linspace(*self.two_theta_range, self.dim + 1)

    @property
    def bin_centers(self) -> np.ndarray:
        """2θ bin centres ``[num_bins]`` in degrees."""
        edges = self.bin_edges
        return 0.5 * (edges[1:] + edges[:-1])

    def _build(self) -> XRDCalculator:
        from pymatgen.analysis.diffraction.xrd import XRDCalculator

        return XRDCalculator(wavelength=self.wavelength)

    def _featurize_one(self, crystal: Crystal, impl: XRDCalculator) -> np.ndarray:
        pattern = impl.get_pattern(crystal.to_pymatgen(), scaled=False, two_theta_range=self.two_theta_range)
        two_theta = np.asarray(pattern.x, dtype=np.float64)  # [P]
        intensity = np.asarray(pattern.y, dtype=np.float64)  # [P]
        edges = self.bin_edges
        if self.sigma > 0:
            from scipy.special import erf

            z = (edges[None, :] - two_theta[:, None]) / (self.sigma * math.sqrt(2.0))  # [P, num_bins + 1]
            cdf = 0.5 * (1.0 + erf(z))
            profile = (intensity[:, None] * np.diff(cdf, axis=1)).sum(axis=0)  # [num_bins]
        else:
            profile, _ = np.histogram(two_theta, bins=edges, weights=intensity)
        peak = profile.max() if profile.size else 0.0
        return profile / peak if peak > 0 else np.zeros(self.dim)

    def labels(self) -> list[str]:
        """``"xrd 2theta {centre:.3f}"`` per bin."""
        return [f"xrd 2theta {c:.3f}" for c in self.bin_centers]


# ---- registry ---------------------------------------------------------------------------------------
FEATURIZERS: dict[str, Callable[..., BaseFeaturizer]] = {
    "magpie": MagpieComposition,
    "crystalnn": CrystalNNFingerprint,
    "sine_coulomb": SineCoulombMatrix,
    "xrd": XRDPattern,
}


def get_featurizer(name: str, **kwargs: Any) -> BaseFeaturizer:
    """Build the featurizer registered as ``name`` with ``kwargs``; ``KeyError`` lists the known names."""
    try:
        factory = FEATURIZERS[name]
    except KeyError:
        raise KeyError(f"unknown featurizer {name!r}; known: {', '.join(sorted(FEATURIZERS))}") from None
    return factory(**kwargs)

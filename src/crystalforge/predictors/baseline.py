"""The classic property baseline: gradient boosting on Magpie composition and simple structure features.

``featurize``: Magpie ``ElementProperty`` statistics (132 values, once per distinct reduced
composition) and ``STRUCTURE_FEATURES`` (atom count, volume per atom, density, packing fraction,
successive minima and plane spacings of the lattice, nearest-neighbour statistics), all invariant
to atom order, rotation, periodic translation and cell choice.

``GradientBoostingPredictor``: ``HistGradientBoostingRegressor`` mean and std of one property.
``method="quantile"``: quantile models at 15.87 % and 84.13 % give ``std = hypot((q_hi − q_lo) / 2,
mean − (q_hi + q_lo) / 2)`` (a mean outside a collapsed band still gets a width);
``method="bootstrap"``: the spread of ``members`` bootstrap models. A seeded hold-out of the
training rows then sets ``std = sqrt((a·raw)² + b²)`` (``a``: 68.27 % within 1 std; ``b``: 2-std
coverage nearest 95.45 %). ``save``: a magic line, a JSON header (settings, feature names,
scikit-learn version, checksum), the pickled models, written atomically; ``load`` checks version
and checksum first. Load only files you trust.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import pickle
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import AVOGADRO, Crystal
from crystalforge.core.elements import element_table, z_to_symbol
from crystalforge.core.extras import require
from crystalforge.core.lattice import lll_reduction
from crystalforge.core.neighbors import knn_graph, searchable
from crystalforge.io.atomic import atomic_write

__all__ = ["STRUCTURE_FEATURES", "BaselineConfig", "GradientBoostingPredictor", "featurize", "train_baseline"]

logger = logging.getLogger(__name__)

FEATURE = "the gradient-boosting baseline"
STRUCTURE_FEATURES: tuple[str, ...] = (
    *("num_atoms", "volume_per_atom", "density", "packing_fraction"),
    *(f"lattice_minimum_{k}" for k in (1, 2, 3)),
    *(f"plane_spacing_{k}" for k in (1, 2, 3)),
    *(f"nn_distance_{s}" for s in ("min", "mean", "max", "std", "over_radii_min", "over_radii_mean")),
    "coordination_mean",
)
"""Names of the structure features, in column order (after the Magpie columns)."""

NEIGHBOURS, SHELL = 12, 1.2  # neighbours searched per atom; coordination: those within SHELL × the nearest
FALLBACK_RADIUS = 1.5  # Å, packing fraction of elements without a tabulated radius (noble gases, actinides)
COEFFICIENT_RANGE, INDEPENDENT = 2, 1e-6  # lattice search per LLL basis vector; dependence tolerance
CHUNK = 2000  # crystals per structure-feature batch (bounds memory)
FILE_MAGIC, FILE_FORMAT = b"crystalforge-gradient-boosting\n", 1
ONE_SIGMA, TWO_SIGMA = 0.6826894921370859, 0.9544997361036416  # normal mass within 1 and 2 std
CompositionKey = tuple[tuple[int, int], ...]


# ---- features ---------------------------------------------------------------------------------
def _composition_key(crystal: Crystal) -> CompositionKey:
    z, counts = np.unique(crystal.atomic_numbers, return_counts=True)
    divisor = int(np.gcd.reduce(counts))
    return tuple(zip(z.tolist(), (counts // divisor).tolist(), strict=True))


@lru_cache(maxsize=1)
def _magpie_impl() -> Any:
    composition = require("matminer.featurizers.composition", FEATURE, extra="descriptors")
    return composition.ElementProperty.from_preset("magpie", impute_nan=False)


def _magpie_row(key: CompositionKey) -> np.ndarray:
    """Magpie features of one composition; NaN where matminer fails (logged)."""
    from pymatgen.core import Composition

    impl = _magpie_impl()
    try:
        return np.asarray(impl.featurize(Composition({z_to_symbol(z): n for z, n in key})), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - matminer raises many types; the row stays NaN
        logger.warning("Magpie features failed for composition %s: %s", key, exc)
        return np.full(len(impl.feature_labels()), np.nan)


def _magpie(crystals: Sequence[Crystal], workers: int) -> np.ndarray:
    keys = [_composition_key(c) for c in crystals]
    unique = list(dict.fromkeys(keys))  # each distinct composition once
    if workers > 1 and len(unique) > 200:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_magpie_row, unique, chunksize=math.ceil(len(unique) / (4 * workers))))
    else:
        rows = [_magpie_row(key) for key in unique]
    where = {key: i for i, key in enumerate(unique)}
    return np.stack(rows)[[where[k] for k in keys]]


def _successive_minima(lattices: np.ndarray) -> np.ndarray:
    """Successive minima ``[n, 3]`` (Å) of the lattices spanned by the rows of ``lattices [n, 3, 3]``.

    ``λ_k`` is the smallest radius holding ``k`` linearly independent lattice vectors, a property of
    the lattice, not of its basis; greedy selection over the sorted vectors ``Σ n_i b_i`` of the
    LLL-reduced basis, ``|n_i| <= COEFFICIENT_RANGE``, finds it (a matroid: ties do not matter).
    """
    changes = [lll_reduction(lat) for lat in lattices]
    bases = np.stack([lat if m is None else m @ lat for m, lat in zip(changes, lattices, strict=True)])
    grid = np.arange(-COEFFICIENT_RANGE, COEFFICIENT_RANGE + 1)
    coeff = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    vectors = np.einsum("kc,ncd->nkd", coeff[np.abs(coeff).sum(1) > 0], bases)  # [n, K, 3]
    order = np.argsort(np.linalg.norm(vectors, axis=2), axis=1, kind="stable")
    vectors = np.take_along_axis(vectors, order[..., None], axis=1)
    length, rows, first = np.linalg.norm(vectors, axis=2), np.arange(len(bases)), vectors[:, 0]
    cross = np.linalg.norm(np.cross(first[:, None], vectors), axis=2)
    second = np.argmax(cross > INDEPENDENT * length[:, :1] * length, axis=1)
    triple = np.abs(np.einsum("nd,nkd->nk", np.cross(first, vectors[rows, second]), vectors))
    third = np.argmax(triple > INDEPENDENT * length[:, :1] * length[rows, second][:, None] * length, axis=1)
    return np.stack([length[:, 0], length[rows, second], length[rows, third]], axis=1)


def _structure(crystals: Sequence[Crystal], radii: np.ndarray) -> np.ndarray:
    """``STRUCTURE_FEATURES [n, 17]`` of ≤ ``CHUNK`` crystals; NaN rows: < 1 Å³/atom or not ``searchable``."""
    batch = CrystalBatch.collate(crystals, dtype=torch.float64)
    volume = batch.volume.abs().numpy()
    ok = searchable(batch, 4.0).numpy() & (volume / batch.num_atoms.numpy() >= 1.0)
    if not ok.all():
        out = np.full((len(crystals), len(STRUCTURE_FEATURES)), np.nan)
        if ok.any():
            out[ok] = _structure([c for c, keep in zip(crystals, ok, strict=True) if keep], radii)
        return out
    z, starts = batch.atomic_numbers.numpy(), batch.atom_offsets.numpy()
    counts = batch.num_atoms.numpy().astype(np.float64)
    mass = np.add.reduceat(element_table().masses[z], starts)
    packing = 4.0 / 3.0 * math.pi * np.add.reduceat(radii[z] ** 3, starts) / volume
    head = [counts, volume / counts, mass / AVOGADRO / (volume * 1e-24), packing]
    lattices = batch.lattice.numpy()
    shape = [_successive_minima(lattices), 1.0 / _successive_minima(np.linalg.inv(lattices).transpose(0, 2, 1))]
    edges = knn_graph(batch, NEIGHBOURS)  # every atom gets exactly NEIGHBOURS edges, nearest first
    dist = edges.distances.numpy().reshape(len(z), NEIGHBOURS)
    nearest = edges.edge_index[1].numpy().reshape(len(z), NEIGHBOURS)[:, 0]
    d1 = dist[:, 0]
    ratio = d1 / (radii[z] + radii[z[nearest]])
    coordination = (dist <= SHELL * d1[:, None]).sum(axis=1).astype(np.float64)
    mean = np.add.reduceat(d1, starts) / counts
    spread = np.sqrt(np.add.reduceat((d1 - mean[batch.crystal_idx.numpy()]) ** 2, starts) / counts)
    neighbours = [np.minimum.reduceat(d1, starts), mean, np.maximum.reduceat(d1, starts), spread]
    neighbours += [np.minimum.reduceat(ratio, starts), np.add.reduceat(ratio, starts) / counts]
    neighbours += [np.add.reduceat(coordination, starts) / counts]
    return np.concatenate([np.stack(head, 1), *shape, np.stack(neighbours, 1)], axis=1)


def featurize(crystals: Sequence[Crystal], *, workers: int = 1) -> tuple[np.ndarray, list[str]]:
    """Magpie composition statistics and structure features ``[n, 149]`` float64, with the column names.

    ``workers`` > 1 spreads the distinct compositions over processes. Missing element data stays
    NaN (gradient boosting handles it).
    """
    require("matminer", FEATURE, extra="descriptors")
    names = [*_magpie_impl().feature_labels(), *STRUCTURE_FEATURES]
    crystals = list(crystals)
    if not crystals:
        return np.empty((0, len(names))), names
    radii = np.nan_to_num(element_table().atomic_radius, nan=FALLBACK_RADIUS)
    structure = [_structure(crystals[lo : lo + CHUNK], radii) for lo in range(0, len(crystals), CHUNK)]
    features = np.concatenate([_magpie(crystals, workers), np.concatenate(structure)], axis=1)
    return np.ascontiguousarray(features, dtype=np.float64), names


# ---- the predictor ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineConfig:
    """Settings of ``GradientBoostingPredictor`` (stored in its file).

    ``members``: bootstrap models. ``early_stopping``: each model stops after 20 rounds without
    gain on a seeded 10 % of its own rows. ``calibration_fraction``: training rows held out to
    calibrate the std (0, or fewer than 10 rows, leaves it raw).
    """

    method: Literal["quantile", "bootstrap"] = "quantile"
    members: int = 5
    max_iter: int = 500
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    early_stopping: bool = True
    calibration_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("quantile", "bootstrap"):
            raise ValueError(f"method must be 'quantile' or 'bootstrap', got {self.method!r}")
        if self.members < 2:
            raise ValueError(f"members must be >= 2, got {self.members}")
        if not 0.0 <= self.calibration_fraction < 0.5:
            raise ValueError(f"calibration_fraction must be in [0, 0.5), got {self.calibration_fraction}")


def _check_values(values: np.ndarray, rows: int, ids: Sequence[str | None] | None) -> np.ndarray:
    if values.ndim != 1 or values.shape[0] != rows:
        raise ValueError(f"expected {rows} target values, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        ident = f" (material_id {ids[i]})" if ids is not None and ids[i] else ""
        raise ValueError(f"target value of row {i}{ident} is {values[i]}; {bad.size} row(s) are NaN or infinite")
    return values


def _calibration(error: np.ndarray, raw: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of ``std = sqrt((a·raw)² + b²)`` from hold-out ``|error|`` and raw stds (module docstring)."""
    best = (math.inf, 1.0, 0.0)
    for b in [0.0, *np.quantile(error, np.linspace(0.05, 0.5, 10)).tolist()]:
        needed = np.sqrt(np.maximum(error**2 - b * b, 0.0)) / raw  # the smallest a covering each point
        a = float(np.quantile(needed, ONE_SIGMA))
        miss = abs(float(np.mean(error <= 2 * np.sqrt((a * raw) ** 2 + b * b))) - TWO_SIGMA)
        if math.isfinite(a) and a + b > 0 and miss < best[0] - 1e-12:
            best = (miss, a, b)
    return best[1], best[2]


class GradientBoostingPredictor:
    """One property from Magpie + structure features: ``predict`` gives mean and std arrays.

    ``workers``: processes for the Magpie features. ``threads``: OpenMP threads of scikit-learn
    (None: its default, all cores; on a busy machine its spinning threads make small fits many
    times slower, so pass 1 there).
    """

    def __init__(self, config: BaselineConfig | None = None, *, workers: int = 1, threads: int | None = None) -> None:
        self.config = config or BaselineConfig()
        self.workers, self.threads = workers, threads
        self.feature_names: list[str] = []
        self.std_scale, self.std_offset, self.std_floor = 1.0, 0.0, 0.0
        self._models: list[Any] = []

    @property
    def is_fitted(self) -> bool:
        """True once ``fit`` or ``load`` has given it models."""
        return bool(self._models)

    def _regressor(self, seed: int, quantile: float | None = None) -> Any:
        ensemble = require("sklearn.ensemble", FEATURE, extra="descriptors")
        shared = ("max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf", "l2_regularization")
        settings: dict[str, Any] = {k: getattr(self.config, k) for k in (*shared, "early_stopping")}
        settings.update({"loss": "squared_error"} if quantile is None else {"loss": "quantile", "quantile": quantile})
        settings.update(validation_fraction=0.1, n_iter_no_change=20, random_state=seed)
        return ensemble.HistGradientBoostingRegressor(**settings)

    def _thread_limit(self) -> contextlib.AbstractContextManager[Any]:
        if self.threads is None:
            return contextlib.nullcontext()
        threadpoolctl = require("threadpoolctl", FEATURE, extra="descriptors")
        return threadpoolctl.threadpool_limits(limits=self.threads, user_api="openmp")  # type: ignore[no-any-return]

    def fit(self, crystals: Sequence[Crystal], values: Sequence[float] | np.ndarray | str) -> GradientBoostingPredictor:
        """Fit on crystals and their targets (an array, or the name of a property every crystal has)."""
        crystals = list(crystals)
        ids = [c.material_id for c in crystals]
        if isinstance(values, str):
            missing = [i for i, c in enumerate(crystals) if values not in c.properties]
            if missing:
                raise ValueError(f"crystal at row {missing[0]} (material_id {ids[missing[0]]}) has no {values!r}")
            values = [c.properties[values] for c in crystals]
        target = _check_values(np.asarray(values, dtype=np.float64), len(crystals), ids)
        features, names = featurize(crystals, workers=self.workers)
        return self.fit_features(features, target, names=names, material_ids=ids)

    def fit_features(
        self,
        features: np.ndarray,
        values: Sequence[float] | np.ndarray,
        *,
        names: Sequence[str] | None = None,
        material_ids: Sequence[str | None] | None = None,
    ) -> GradientBoostingPredictor:
        """Fit on a precomputed ``featurize`` matrix ``[n, d]`` and targets ``[n]``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [n, d], got shape {x.shape}")
        y = _check_values(np.asarray(values, dtype=np.float64), x.shape[0], material_ids)
        if names is not None and len(names) != x.shape[1]:
            raise ValueError(f"{len(names)} feature names for {x.shape[1]} feature columns")
        c = self.config
        rng = np.random.default_rng(c.seed)
        order = rng.permutation(len(y))
        n_cal = round(c.calibration_fraction * len(y))
        n_cal = n_cal if n_cal >= 10 else 0
        cal, train = order[:n_cal], np.sort(order[n_cal:])
        with self._thread_limit():
            if c.method == "quantile":
                levels = (None, 0.5 - ONE_SIGMA / 2, 0.5 + ONE_SIGMA / 2)
                models = [self._regressor(c.seed + k, q).fit(x[train], y[train]) for k, q in enumerate(levels)]
            else:
                samples = [train[rng.integers(0, len(train), len(train))] for _ in range(c.members)]
                models = [self._regressor(c.seed + k).fit(x[rows], y[rows]) for k, rows in enumerate(samples)]
        self._models = models
        self.feature_names = list(names) if names is not None else [f"f{i}" for i in range(x.shape[1])]
        self.std_floor = 1e-6 * max(float(np.std(y)), 1e-12)
        self.std_scale, self.std_offset = 1.0, 0.0
        if n_cal:
            mean, raw = self.predict_features(x[cal], calibrated=False)
            self.std_scale, self.std_offset = _calibration(np.abs(y[cal] - mean), raw)
        return self

    def predict(self, crystals: Sequence[Crystal]) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``[n]`` and std ``[n]`` (> 0) of the property for ``crystals``."""
        features, _ = featurize(list(crystals), workers=self.workers)
        return self.predict_features(features)

    def predict_features(self, features: np.ndarray, *, calibrated: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std from a ``featurize`` matrix; ``calibrated=False`` gives the raw std."""
        if not self.is_fitted:
            raise RuntimeError("the predictor is not fitted: call fit() or load() first")
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"expected features [n, {len(self.feature_names)}], got shape {x.shape}")
        if x.shape[0] == 0:
            return np.empty(0), np.empty(0)
        with self._thread_limit():
            if self.config.method == "quantile":
                mean, low, high = (m.predict(x) for m in self._models)
                std = np.hypot((high - low) / 2.0, mean - (high + low) / 2.0)  # half-width, off-centre mean
            else:
                members = np.stack([m.predict(x) for m in self._models])
                mean, std = members.mean(axis=0), members.std(axis=0, ddof=1)
        std = np.maximum(std, self.std_floor)
        if calibrated:
            std = np.sqrt((self.std_scale * std) ** 2 + self.std_offset**2)
        return np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)

    # ---- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted predictor to ``path`` atomically (format in the module docstring)."""
        if not self.is_fitted:
            raise RuntimeError("cannot save an unfitted predictor")
        sklearn = require("sklearn", FEATURE, extra="descriptors")
        payload = pickle.dumps(self._models, protocol=pickle.HIGHEST_PROTOCOL)
        header = {"format": FILE_FORMAT, "sklearn_version": sklearn.__version__}
        header.update(config=dataclasses.asdict(self.config), feature_names=self.feature_names)
        header.update(std_scale=self.std_scale, std_offset=self.std_offset, std_floor=self.std_floor)
        header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
        path = Path(path)
        with atomic_write(path, "wb") as handle:
            handle.write(FILE_MAGIC + json.dumps(header).encode() + b"\n" + payload)
        return path

    @classmethod
    def load(cls, path: str | Path, *, workers: int = 1, threads: int | None = None) -> GradientBoostingPredictor:
        """A predictor written by ``save``; refuses another scikit-learn version or a damaged file."""
        sklearn = require("sklearn", FEATURE, extra="descriptors")
        data = Path(path).read_bytes()
        if not data.startswith(FILE_MAGIC):
            raise ValueError(f"{path} is not a crystalforge gradient-boosting file")
        end = data.index(b"\n", len(FILE_MAGIC))
        header, payload = json.loads(data[len(FILE_MAGIC) : end]), data[end + 1 :]
        if header.get("format") != FILE_FORMAT:
            raise ValueError(f"{path}: file format {header.get('format')} is not {FILE_FORMAT}")
        if header["sklearn_version"] != sklearn.__version__:
            found, have = header["sklearn_version"], sklearn.__version__
            raise ValueError(
                f"{path} was saved with scikit-learn {found} but {have} is installed: refit it, or use {found}"
            )
        if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
            raise ValueError(f"{path}: the model payload does not match its checksum (truncated or altered file)")
        predictor = cls(BaselineConfig(**header["config"]), workers=workers, threads=threads)
        predictor.feature_names = list(header["feature_names"])
        predictor.std_scale, predictor.std_offset = float(header["std_scale"]), float(header["std_offset"])
        predictor.std_floor = float(header["std_floor"])
        predictor._models = pickle.loads(payload)  # our own format; version and checksum checked above
        return predictor


def train_baseline(
    train_crystals: Sequence[Crystal],
    train_values: Sequence[float] | np.ndarray | str,
    *,
    seed: int = 0,
    workers: int = 1,
    threads: int | None = None,
    **settings: Any,
) -> GradientBoostingPredictor:
    """A ``GradientBoostingPredictor`` fitted on ``train_crystals``; ``settings`` are ``BaselineConfig`` fields."""
    config = BaselineConfig(seed=seed, **settings)
    return GradientBoostingPredictor(config, workers=workers, threads=threads).fit(train_crystals, train_values)

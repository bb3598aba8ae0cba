"""``PredictorEnsemble``: deep-ensemble mean and calibrated standard deviation; checkpoints.

Each member is a ``PropertyGNN`` trained from its own seed with a variance head. The ensemble's
predictive variance is the mixture's (Lakshminarayanan et al. 2017): the mean of the members'
variances (noise) plus the variance of their means (disagreement). That variance is then scaled
by ``calibration²``, one factor per property fitted on a validation split so that the mean
squared z-score there is 1 (variance scaling, Levi et al. 2022); ``calibration_report`` gives the
interval coverages to check it on the test split.

A checkpoint is one ``torch.save`` dict: ``format``, ``config`` (plain data), member weights,
``calibration`` and a free-form ``record`` (training data, command, metrics); written atomically.

``predict_batches`` is per structure where it matters: a structure over a resource limit
(``core.limits``) is refused before the graph is built, a batch whose forward pass raises is
retried one structure at a time, and a NaN or infinite prediction stays in its own row; each such
structure gets NaN and a reason in ``Prediction.failures`` (logged with its id), the others keep
their values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.limits import StructureLimits
from crystalforge.io.atomic import atomic_write
from crystalforge.io.torch_files import read_torch_file
from crystalforge.predictors.gnn import PropertyGNN, PropertyGNNConfig

__all__ = ["CHECKPOINT_FORMAT", "Prediction", "PredictorEnsemble", "calibration_report", "torch_save_atomic"]

CHECKPOINT_FORMAT = "crystalforge-predictor-1"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Per-crystal predictions: ``mean`` and ``std`` ``[B, P]`` in the properties' units.

    ``failures`` maps the row of each crystal without a prediction (NaN row) to the reason.
    """

    properties: tuple[str, ...]
    mean: Tensor
    std: Tensor
    failures: Mapping[int, str] = field(default_factory=dict)

    def column(self, name: str) -> tuple[Tensor, Tensor]:
        """``(mean [B], std [B])`` of one property; unknown names are refused with the known ones."""
        if name not in self.properties:
            raise KeyError(f"no prediction for {name!r} (this predictor gives: {', '.join(self.properties)})")
        k = self.properties.index(name)
        return self.mean[:, k], self.std[:, k]


class PredictorEnsemble(nn.Module):
    """Members with one config; ``forward(batch, t)`` gives ensemble ``(mean, std)`` ``[B, P]``."""

    calibration: Tensor

    def __init__(self, members: Sequence[PropertyGNN], *, record: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        configs = {m.config for m in members}
        if len(configs) != 1:
            raise ValueError("ensemble members must share one PropertyGNNConfig")
        self.members = nn.ModuleList(members)
        self.register_buffer("calibration", torch.ones(len(members[0].properties)))
        self.record: dict[str, Any] = dict(record or {})

    def gnns(self) -> list[PropertyGNN]:
        """The members, typed."""
        return [m for m in self.members if isinstance(m, PropertyGNN)]

    @property
    def config(self) -> PropertyGNNConfig:
        """The members' architecture."""
        return self.gnns()[0].config

    @property
    def properties(self) -> tuple[str, ...]:
        """Predicted property names."""
        return self.config.properties

    @property
    def time_conditioned(self) -> bool:
        """Whether this is a noise-aware predictor (reads the generator's time)."""
        return self.config.time_dim > 0

    def forward(
        self, batch: CrystalBatch, t: Tensor | None = None, *, type_weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Ensemble ``(mean, std)`` ``[B, P]`` (mixture variance × calibration²), differentiable in the state.

        ``type_weights``: soft atom types, see ``PropertyGNN.forward``.
        """
        means, variances = [], []
        for member in self.gnns():
            m, s = member.predict(batch, t, type_weights=type_weights)
            means.append(m)
            variances.append(s * s)
        mean = torch.stack(means).mean(0)
        spread = torch.stack(means).var(0, unbiased=False) if len(means) > 1 else torch.zeros_like(mean)
        variance = torch.stack(variances).mean(0) + spread
        return mean, torch.sqrt(variance) * self.calibration

    def predict_batches(self, batches: Iterable[CrystalBatch], *, limits: StructureLimits | None = None) -> Prediction:
        """Predictions for every crystal of ``batches``, in order (no gradients).

        A noise-aware (time-conditioned) ensemble reads clean structures at ``t = 1``, the data
        end of the generator's path it was trained along. A crystal over ``limits`` (None:
        ``StructureLimits.from_env()``), one whose forward pass raises or one with a non-finite
        prediction gets a NaN row and its reason in ``failures``; the other rows are unaffected.
        """
        limits = limits or StructureLimits.from_env()
        means: list[Tensor] = []
        stds: list[Tensor] = []
        failures: dict[int, str] = {}
        offset = 0
        with torch.no_grad():
            for batch in batches:
                m, s, why = self._predict_guarded(batch, limits)
                failures.update({offset + k: reason for k, reason in why.items()})
                offset += batch.num_crystals
                means.append(m)
                stds.append(s)
        if not means:
            raise ValueError("no structures to predict")
        return Prediction(self.properties, torch.cat(means), torch.cat(stds), failures)

    def _predict_guarded(self, batch: CrystalBatch, limits: StructureLimits) -> tuple[Tensor, Tensor, dict[int, str]]:
        """``(mean, std)`` ``[B, P]`` of one batch with NaN rows for failures, and ``{row: reason}``."""
        b, p = batch.num_crystals, len(self.properties)
        dtype = self.calibration.dtype
        mean = torch.full((b, p), math.nan, dtype=dtype, device=batch.device)
        std = mean.clone()
        crystals, bad = batch.split_checked()
        why = {k: f"invalid crystal: {error}" for k, error in bad}
        for k, crystal in enumerate(crystals):
            problem = None if crystal is None else limits.problem(crystal)
            if problem is not None:
                why[k] = f"over limit: {problem}"
        todo = [k for k in range(b) if k not in why]
        groups = [todo] if todo else []
        while groups:
            rows = groups.pop()
            part = batch.index_select(rows)
            try:
                t = part.lattice.new_ones(len(rows)) if self.time_conditioned else None
                m, s = self(part, t)
            except Exception as exc:  # noqa: BLE001 - find the structure that raised, keep the others
                if len(rows) > 1:
                    groups.extend([[k] for k in rows])
                else:
                    why[rows[0]] = f"prediction failed: {type(exc).__name__}: {exc}"
                continue
            finite = torch.isfinite(m).all(dim=1) & torch.isfinite(s).all(dim=1)
            index = torch.as_tensor(rows, device=mean.device)
            mean[index] = torch.where(finite[:, None], m.to(dtype), mean[index])
            std[index] = torch.where(finite[:, None], s.to(dtype), std[index])
            why.update(
                {k: "non-finite prediction (NaN or inf)" for k, ok in zip(rows, finite.tolist(), strict=True) if not ok}
            )
        ids = batch.material_ids or (None,) * b
        for k, reason in sorted(why.items()):
            logger.warning("%s: no prediction: %s", ids[k] or f"crystal {k} of the batch", reason)
        return mean, std, why

    def calibrate(self, mean: Tensor, std: Tensor, target: Tensor, *, method: str = "area") -> Tensor:
        """Fit ``calibration`` (one std factor per property) on ``target [B, P]`` (NaN targets ignored).

        ``method="area"``: the factor minimising the miscalibration area (the mean gap between the
        expected and observed coverage of central intervals, see ``calibration_report``), searched
        on a log grid; robust to heavy-tailed errors (band gaps: many exact zeros, a few large
        misses), where ``method="z2"`` (mean squared z-score = 1) lets the tail inflate every
        interval. ``mean``/``std`` are this ensemble's uncalibrated outputs (``calibration`` = 1).
        """
        if method not in ("area", "z2"):
            raise ValueError(f"calibration method must be 'area' or 'z2', got {method!r}")
        z = ((target - mean).abs() / std.clamp(min=1e-12)).double()
        finite = torch.isfinite(z)
        scale = torch.ones_like(self.calibration)
        for k in range(z.shape[1]):
            values = z[finite[:, k], k]
            if not values.numel():
                continue
            if method == "z2":
                scale[k] = torch.sqrt((values**2).mean()).to(scale)
                continue
            grid = torch.logspace(-2, 2, 401, dtype=torch.float64)
            areas = torch.stack([_miscalibration_area(values / g) for g in grid])
            scale[k] = grid[int(torch.argmin(areas))].to(scale)
        self.calibration.copy_(scale)
        return scale

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the ensemble to ``path`` atomically (``io.atomic``)."""
        path = Path(path)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "members": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.members],
            "calibration": self.calibration.detach().cpu(),
            "record": self.record,
        }
        torch_save_atomic(payload, path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> PredictorEnsemble:
        """Read a checkpoint written by ``save`` onto ``map_location``; another kind of file is refused in one line.

        The file is read with ``io.torch_files.read_torch_file`` (weights only; a missing, truncated,
        foreign or hostile file is one error naming it).
        """
        path = Path(path)
        payload = read_torch_file(path, what="predictor checkpoint")
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a crystalforge predictor checkpoint (expected format {CHECKPOINT_FORMAT})")
        config = PropertyGNNConfig.from_dict(payload["config"])
        members = []
        for state in payload["members"]:
            member = PropertyGNN(config)
            member.load_state_dict(state)
            members.append(member)
        ensemble = cls(members, record=payload.get("record"))
        ensemble.calibration.copy_(payload["calibration"])
        return ensemble.eval().to(map_location)


def _miscalibration_area(z: Tensor) -> Tensor:
    """Mean |expected − observed| coverage of central Gaussian intervals at 99 levels, for |z| scores."""
    levels = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    half_widths = math.sqrt(2.0) * torch.special.erfinv(levels)  # central interval of probability p: ±√2·erfinv(p)
    observed = (z[None, :] <= half_widths[:, None]).double().mean(dim=1)
    area: Tensor = (observed - levels).abs().mean()
    return area


def torch_save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` through ``io.atomic.atomic_write`` (no half-written checkpoint on a crash)."""
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def calibration_report(mean: np.ndarray, std: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Error and calibration of one property: MAE, RMSE, coverage of ±1σ/±2σ, miscalibration area, NLL.

    The miscalibration area is the mean absolute gap between the expected and observed coverage
    of central Gaussian intervals at 99 levels (0 is perfect). NaN targets are skipped.
    """
    mean, std, target = (np.asarray(a, dtype=np.float64) for a in (mean, std, target))
    keep = np.isfinite(target) & np.isfinite(mean) & np.isfinite(std)
    if not keep.any():
        raise ValueError("calibration_report: no finite targets")
    err = np.abs(target[keep] - mean[keep])
    sigma = np.maximum(std[keep], 1e-12)
    z = err / sigma
    nll = 0.5 * np.mean(np.log(2 * math.pi * sigma**2) + z**2)
    return {
        "n": int(keep.sum()),
        "mae": float(err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "coverage_1sigma": float((z <= 1.0).mean()),
        "coverage_2sigma": float((z <= 2.0).mean()),
        "miscalibration_area": float(_miscalibration_area(torch.from_numpy(z))),
        "nll": float(nll),
        "mean_std": float(sigma.mean()),
    }

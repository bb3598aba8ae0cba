"""Training a ``PredictorEnsemble``: members one after another, resumable, then calibrated on validation.

Loss per member, on standardised targets (NaN targets are masked out): the L1 error of the mean
(the metric the field reports) plus the Gaussian negative log-likelihood of the variance head with
the mean detached, so the variance head learns the error scale without pulling the mean toward
the easy crystals (a known failure of plain NLL training). AdamW with a cosine learning rate; the
weights with the lowest validation MAE are kept (early stopping by selection).

The noise-aware variant passes ``corrupt(clean, t, generator) -> noisy``: the generator's own
``noise`` (a clean batch put on its path at time ``t``); times are drawn uniformly per crystal and
the target stays the clean crystal's property.

With ``work_dir`` set, every member's state is written there after each epoch (atomically), and a
rerun with the same arguments continues where it stopped; finished members are reused.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from crystalforge.core.batch import CrystalBatch
from crystalforge.core.crystal import Crystal
from crystalforge.core.neighbors import searchable
from crystalforge.interrupt import check_interrupted
from crystalforge.io.torch_files import read_torch_file
from crystalforge.predictors.batch_predict import predict_crystals
from crystalforge.predictors.ensemble import PredictorEnsemble, torch_save_atomic
from crystalforge.predictors.gnn import MAX_LOG_VAR, MIN_LOG_VAR, PropertyGNN, PropertyGNNConfig

__all__ = [
    "Corrupt", "FineTuneConfig", "PredictorTrainConfig", "fine_tune_heads", "fit_ensemble", "predict_crystals",
    "targets_of",
]  # fmt: skip

log = logging.getLogger(__name__)

Corrupt = Callable[[CrystalBatch, Tensor, torch.Generator], CrystalBatch]
"""``corrupt(clean, t [B], generator) -> noisy state``: the generator's noising, for noise-aware training."""


@dataclass(frozen=True)
class PredictorTrainConfig:
    """Optimisation settings (plain data, recorded with the checkpoint)."""

    members: int = 3
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 2e-5
    weight_decay: float = 1e-4
    seed: int = 0
    grad_clip: float = 5.0

    def __post_init__(self) -> None:
        if self.members < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("members, epochs and batch_size must be >= 1")


def targets_of(crystals: Sequence[Crystal], properties: Sequence[str], *, source: str = "data") -> np.ndarray:
    """``[n, P]`` float64 property values (NaN where a crystal has none); non-finite values refused by record.

    A property no crystal has is an error naming it and the properties that exist.
    """
    out = np.full((len(crystals), len(properties)), np.nan)
    for i, crystal in enumerate(crystals):
        for k, name in enumerate(properties):
            value = crystal.properties.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if not math.isfinite(float(value)):
                who = crystal.material_id or f"record {i}"
                raise ValueError(f"{source}: {who}: property {name!r} is {value} (not a finite number)")
            out[i, k] = float(value)
    for k, name in enumerate(properties):
        if not np.isfinite(out[:, k]).any():
            known = sorted({p for c in crystals for p in c.properties})
            raise ValueError(
                f"{source}: no crystal has property {name!r} (properties present: {', '.join(known) or 'none'})"
            )
    return out


def _batches(
    crystals: Sequence[Crystal], targets: np.ndarray, order: np.ndarray, batch_size: int
) -> list[tuple[CrystalBatch, Tensor]]:
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = CrystalBatch.collate([crystals[i] for i in idx], dtype=torch.float32)
        out.append((batch, torch.from_numpy(targets[idx]).float()))
    return out


def _loss(member: PropertyGNN, batch: CrystalBatch, target: Tensor, t: Tensor | None) -> Tensor:
    mean, log_var = member(batch, t)
    y = (target - member.target_mean) / member.target_std
    # a noised crystal the network cannot score (a cell too thin to search: NaN) teaches nothing
    mask = torch.isfinite(y) & torch.isfinite(mean)
    y = torch.where(mask, y, torch.zeros_like(y))
    mean = torch.where(mask, mean, torch.zeros_like(mean))
    log_var = torch.where(mask, log_var, torch.zeros_like(log_var))
    l1 = (mean - y).abs()
    nll = 0.5 * (log_var + (mean.detach() - y) ** 2 * torch.exp(-log_var))
    loss: Tensor = ((l1 + nll) * mask).sum() / mask.sum().clamp(min=1)
    return loss


def _times(batch: CrystalBatch, generator: torch.Generator) -> Tensor:
    return torch.rand(batch.num_crystals, generator=generator)


def _val_predictions(
    predict: Callable[[CrystalBatch, Tensor | None], tuple[Tensor, Tensor]],
    batches: list[tuple[CrystalBatch, Tensor]],
    corrupt: Corrupt | None,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, std, target)`` over the validation batches, noised with fixed draws when noise-aware."""
    generator = torch.Generator().manual_seed(seed)
    means, stds, targets = [], [], []
    with torch.no_grad():
        for batch, target in batches:
            t = None
            if corrupt is not None:
                t = _times(batch, generator)
                batch = corrupt(batch, t, generator)
            mean, std = predict(batch, t)
            means.append(mean)
            stds.append(std)
            targets.append(target)
    return torch.cat(means), torch.cat(stds), torch.cat(targets)


def _val_mae(
    member: PropertyGNN, batches: list[tuple[CrystalBatch, Tensor]], corrupt: Corrupt | None, seed: int
) -> float:
    """Mean over properties of the standardised validation MAE (NaN predictions and targets skipped)."""
    member.eval()
    mean, _, target = _val_predictions(member.predict, batches, corrupt, seed)
    member.train()
    err = ((mean - target).abs() / member.target_std).double()
    finite = torch.isfinite(err)
    total = torch.where(finite, err, torch.zeros_like(err)).sum(0)
    return float((total / finite.sum(0).clamp(min=1)).mean())


def _train_member(
    k: int,
    config: PropertyGNNConfig,
    train: tuple[Sequence[Crystal], np.ndarray],
    val_batches: list[tuple[CrystalBatch, Tensor]],
    settings: PredictorTrainConfig,
    corrupt: Corrupt | None,
    work_dir: Path | None,
    on_epoch: Callable[[int, int, float, float], None] | None,
) -> tuple[PropertyGNN, list[dict[str, float]]]:
    crystals, targets = train
    seed = settings.seed + 1000 * k
    torch.manual_seed(seed)
    member = PropertyGNN(config)
    finite = np.isfinite(targets)
    mean = np.array([targets[finite[:, p], p].mean() for p in range(targets.shape[1])])
    std = np.array([targets[finite[:, p], p].std() for p in range(targets.shape[1])])
    member.set_normalisation(torch.from_numpy(mean).float(), torch.from_numpy(std).float())
    optimiser = torch.optim.AdamW(member.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.epochs, eta_min=settings.min_lr)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, Tensor]] = (math.inf, {})
    start = 0
    state_path = work_dir / f"member-{k}.last.pt" if work_dir else None
    if state_path is not None and state_path.is_file():
        saved = read_torch_file(state_path, what="predictor training state")
        if not isinstance(saved, dict):
            raise ValueError(f"{state_path}: not a predictor training state")
        if saved.get("config") != config.to_dict() or saved.get("settings") != asdict(settings):
            raise ValueError(
                f"{state_path}: this work folder holds a run with other settings; use a new folder or delete it"
            )
        member.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        rng.bit_generator.state = saved["rng"]
        generator.set_state(saved["generator"])
        history, best, start = saved["history"], (saved["best_mae"], saved["best_state"]), saved["epoch"]
        log.info("member %d: resuming after epoch %d", k, start)
    member.train()
    for epoch in range(start, settings.epochs):
        check_interrupted()
        order = rng.permutation(len(crystals))
        total, n = 0.0, 0
        for batch, target in _batches(crystals, targets, order, settings.batch_size):
            t = None
            if corrupt is not None:
                t = _times(batch, generator)
                batch = corrupt(batch, t, generator)
            loss = _loss(member, batch, target, t)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(member.parameters(), settings.grad_clip)
            optimiser.step()
            total += float(loss.detach()) * batch.num_crystals
            n += batch.num_crystals
        schedule.step()
        val = _val_mae(member, val_batches, corrupt, seed=settings.seed)
        history.append({"epoch": epoch + 1, "train_loss": total / n, "val_mae_std_units": val})
        if val < best[0]:
            best = (val, {key: v.detach().clone() for key, v in member.state_dict().items()})
        if on_epoch is not None:
            on_epoch(k, epoch + 1, total / n, val)
        if state_path is not None:
            torch_save_atomic(
                {
                    "model": member.state_dict(), "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(), "rng": rng.bit_generator.state,
                    "generator": generator.get_state(), "history": history, "best_mae": best[0],
                    "best_state": best[1], "epoch": epoch + 1, "config": config.to_dict(),
                    "settings": asdict(settings),
                },
                state_path,
            )  # fmt: skip
    member.load_state_dict(best[1])
    return member.eval(), history


def fit_ensemble(
    config: PropertyGNNConfig,
    train: Sequence[Crystal],
    val: Sequence[Crystal],
    settings: PredictorTrainConfig | None = None,
    *,
    corrupt: Corrupt | None = None,
    work_dir: str | Path | None = None,
    on_epoch: Callable[[int, int, float, float], None] | None = None,
) -> PredictorEnsemble:
    """Train ``settings.members`` members on ``train``, pick epochs and fit the calibration on ``val``.

    ``on_epoch(member, epoch, train_loss, val_mae)`` is called after every epoch (progress).
    The returned ensemble's ``record`` holds the settings, each member's history and the
    validation calibration factors.
    """
    settings = settings or PredictorTrainConfig()
    if config.time_dim > 0 and corrupt is None:
        raise ValueError("a time-conditioned (noise-aware) predictor needs corrupt= (the generator's noising)")
    if corrupt is not None and config.time_dim == 0:
        raise ValueError("corrupt= given but the predictor has time_dim = 0 (it would not see the time)")
    if len(train) == 0 or len(val) == 0:
        raise ValueError("fit_ensemble: train and val must both hold structures")
    y_train = targets_of(train, config.properties, source="train")
    y_val = targets_of(val, config.properties, source="val")
    val_batches = _batches(val, y_val, np.arange(len(val)), 256)
    folder = Path(work_dir) if work_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    members, histories = [], []
    for k in range(settings.members):
        member, history = _train_member(k, config, (train, y_train), val_batches, settings, corrupt, folder, on_epoch)
        members.append(member)
        histories.append(history)
    ensemble = PredictorEnsemble(members)
    mean, std, target = _val_predictions(ensemble, val_batches, corrupt, settings.seed)
    scale = ensemble.calibrate(mean, std, target)
    ensemble.record = {
        "train_settings": asdict(settings),
        "train_structures": len(train),
        "val_structures": len(val),
        "histories": histories,
        "calibration_from_val": [float(s) for s in scale],
        "noise_aware": corrupt is not None,
    }
    return ensemble.eval()


# ---- fine-tuning on new labels (active learning) ---------------------------------------------------
@dataclass(frozen=True)
class FineTuneConfig:
    """``fine_tune_heads`` settings; ``anchor`` weighs the squared drift from the starting weights (the prior)."""

    epochs: int = 300
    lr: float = 0.02
    anchor: float = 1e-3
    folds: int = 5
    min_calibration: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or not self.lr > 0 or not self.anchor >= 0 or self.folds < 2 or self.min_calibration < 2:
            raise ValueError("FineTuneConfig: epochs >= 1, lr > 0, anchor >= 0, folds >= 2, min_calibration >= 2")


def _head_inputs(member: PropertyGNN, crystals: Sequence[Crystal]) -> Tensor:
    """``[n, hidden]``: what each (searchable) crystal feeds the member's last layer."""
    captured: list[Tensor] = []
    hook = member.head[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    with torch.no_grad():  # the member is a fine-tune's own copy: an error leaves the hook on nothing that lives
        for start in range(0, len(crystals), 256):
            batch = CrystalBatch.collate(list(crystals[start : start + 256]), dtype=member.target_std.dtype)
            member(batch, batch.lattice.new_ones(batch.num_crystals) if member.time_conditioned else None)
    hook.remove()
    return torch.cat(captured)


def _fit_rows(x: Tensor, y: Tensor, w0: Tensor, b0: Tensor, settings: FineTuneConfig) -> tuple[Tensor, Tensor]:
    """Adam on last-layer rows ``w0 [2K, h]``, ``b0 [2K]`` for ``x [n, h]``, ``y [n, K]`` (standardised; NaN: none)."""
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([w, b], lr=settings.lr)
    y, mask = y.nan_to_num(0.0), torch.isfinite(y)
    for _ in range(settings.epochs):
        mean, log_var = (x @ w.T + b).chunk(2, dim=1)
        log_var = log_var.clamp(MIN_LOG_VAR, MAX_LOG_VAR)
        terms = (mean - y).abs() + 0.5 * (log_var + (mean.detach() - y) ** 2 * torch.exp(-log_var))
        drift = settings.anchor * (((w - w0) ** 2).sum() + ((b - b0) ** 2).sum())
        loss = (terms * mask).sum() / mask.sum().clamp(min=1) + drift
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return w.detach(), b.detach()


def _cross_validated(
    fits: Sequence[tuple[PropertyGNN, Tensor, Tensor, Tensor, Tensor]], cols: list[int], settings: FineTuneConfig
) -> tuple[Tensor, Tensor]:
    """Out-of-fold ``(mean, std)`` ``[n, K]``, uncalibrated; ``fits``: per member ``(member, x, y, w0, b0)``."""
    n = fits[0][1].shape[0]
    folds = torch.from_numpy(np.random.default_rng(settings.seed).permutation(n) % min(settings.folds, n))
    mean, std = torch.zeros(n, len(cols), dtype=torch.float64), torch.zeros(n, len(cols), dtype=torch.float64)
    for f in range(int(folds.max()) + 1):
        means, variances = [], []
        for member, x, y, w0, b0 in fits:
            w, b = _fit_rows(x[folds != f], y[folds != f], w0, b0, settings)
            m, log_var = (x[folds == f] @ w.T + b).double().chunk(2, dim=1)
            scale = member.target_std[cols].double()
            means.append(m * scale + member.target_mean[cols].double())
            variances.append(torch.exp(log_var.clamp(MIN_LOG_VAR, MAX_LOG_VAR)) * scale**2)
        stacked = torch.stack(means)
        mean[folds == f] = stacked.mean(0)
        std[folds == f] = torch.sqrt(torch.stack(variances).mean(0) + stacked.var(0, unbiased=False))
    return mean, std


def fine_tune_heads(
    ensemble: PredictorEnsemble, crystals: Sequence[Crystal], targets: np.ndarray, settings: FineTuneConfig | None
) -> PredictorEnsemble:
    """A copy of ``ensemble`` whose labelled properties' output rows are refitted on ``targets [n, P]`` (NaN: none).

    Only the last layer's mean and log-variance rows of labelled properties change (loss: ``_loss``'s
    terms plus the anchor; full-batch Adam): the trunk and every other property stay bit for bit (a
    few hundred labels cannot retrain a graph network and must not unlearn what it knew). With
    ``min_calibration`` labels or more, their calibration factors are refitted on cross-validated
    predictions. Unsearchable crystals are skipped. ``record["fine_tune"]``: properties, ``pairs``,
    ``skipped``, settings, ``cv_mae`` and ``calibration`` per property.
    """
    settings = settings or FineTuneConfig()
    names, y = ensemble.properties, np.asarray(targets, dtype=np.float64)
    if y.shape != (len(crystals), len(names)):
        raise ValueError(f"fine_tune_heads: targets must be [{len(crystals)}, {len(names)}], got {list(y.shape)}")
    if not (cols := [k for k in range(len(names)) if np.isfinite(y[:, k]).any()]):
        raise ValueError("fine_tune_heads: no finite label")
    ok = searchable(CrystalBatch.collate(list(crystals), dtype=torch.float64), ensemble.config.cutoff).tolist()
    keep = [i for i in range(len(crystals)) if ok[i] and np.isfinite(y[i, cols]).any()]
    tuned = copy.deepcopy(ensemble).eval()
    labels, rows = torch.from_numpy(y[np.ix_(keep, cols)]), [*cols, *(len(names) + k for k in cols)]
    fits: list[tuple[PropertyGNN, Tensor, Tensor, Tensor, Tensor]] = []
    for member in tuned.gnns() if keep else []:
        layer: torch.nn.Linear = member.head[-1]  # type: ignore[assignment]
        standard = (labels.to(layer.weight) - member.target_mean[cols]) / member.target_std[cols]
        fits.append((member, _head_inputs(member, [crystals[i] for i in keep]), standard,
                     layer.weight.data[rows].clone(), layer.bias.data[rows].clone()))  # fmt: skip
        layer.weight.data[rows], layer.bias.data[rows] = _fit_rows(*fits[-1][1:], settings)
    cv_mae: dict[str, float] = {}
    if len(keep) >= settings.min_calibration:
        mean, std = _cross_validated(fits, cols, settings)
        before, t = tuned.calibration.clone(), torch.full((len(keep), len(names)), math.nan, dtype=torch.float64)
        m, s = t.nan_to_num(0.0), t.nan_to_num(1.0)
        m[:, cols], s[:, cols], t[:, cols] = mean, std, labels
        tuned.calibrate(m, s, t)  # a property without labels gets 1: put its factor back
        others = [k for k in range(len(names)) if k not in cols]
        tuned.calibration[others] = before[others]
        cv_mae = {names[k]: float((mean[:, j] - labels[:, j]).abs().nanmean()) for j, k in enumerate(cols)}
    tuned.record = {**ensemble.record, "fine_tune": {"properties": [names[k] for k in cols], "pairs": len(keep),
                    "skipped": len(crystals) - len(keep), "settings": asdict(settings), "cv_mae": cv_mae,
                    "calibration": {names[k]: float(tuned.calibration[k]) for k in cols}}}  # fmt: skip
    return tuned

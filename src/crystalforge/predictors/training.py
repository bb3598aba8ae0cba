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
from crystalforge.predictors.ensemble import PredictorEnsemble, torch_save_atomic
from crystalforge.predictors.gnn import PropertyGNN, PropertyGNNConfig

__all__ = ["Corrupt", "PredictorTrainConfig", "fit_ensemble", "predict_crystals", "targets_of"]

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
        saved = torch.load(state_path, weights_only=False)
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


def predict_crystals(
    ensemble: PredictorEnsemble, crystals: Sequence[Crystal], *, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Clean-structure predictions ``(mean, std)`` ``[n, P]`` as float64 arrays (a noise-aware one at t = 1)."""
    dtype = next(ensemble.parameters()).dtype
    batches = (
        CrystalBatch.collate(list(crystals[i : i + batch_size]), dtype=dtype)
        for i in range(0, len(crystals), batch_size)
    )
    prediction = ensemble.predict_batches(batches)
    return prediction.mean.double().numpy(), prediction.std.double().numpy()

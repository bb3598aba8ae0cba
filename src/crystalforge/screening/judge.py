"""Judges: predictors that score property targets, kept apart from the predictors that steer.

A steering route must never be scored by the model that guided it (it would grade its own
homework). A judge is any predictor of another architecture or seed, ideally trained on data the
generator did not see: a GNN ensemble (``predictor.pt`` or a shipped name) or gradient-boosting
baselines (a ``<property>.gbm`` file, or a folder of them, as ``train-predictor --baseline``
writes). ``judge_candidates`` writes the judged value into each crystal's properties, where the
targeting metric reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.predictors.shipped import load_predictor
from crystalforge.predictors.training import predict_crystals

__all__ = ["Judge", "judge_candidates", "judged", "load_judge"]

PredictFn = Callable[[Sequence[Crystal]], tuple[np.ndarray, np.ndarray]]
BASELINE_SUFFIX = ".gbm"


@dataclasses.dataclass(frozen=True)
class Judge:
    """Per property, a function ``crystals -> (mean [n], std [n])``; ``name`` says where it came from."""

    name: str
    predictors: dict[str, PredictFn]

    @property
    def properties(self) -> tuple[str, ...]:
        """The properties this judge can score."""
        return tuple(sorted(self.predictors))

    def predict(self, prop: str, crystals: Sequence[Crystal]) -> tuple[np.ndarray, np.ndarray]:
        """Judged mean and std of ``prop``; an unknown property is refused with the known ones."""
        if prop not in self.predictors:
            raise KeyError(f"judge {self.name} cannot score {prop!r} (it scores: {', '.join(self.properties)})")
        return self.predictors[prop](crystals)


def _baseline(path: Path) -> PredictFn:
    from crystalforge.predictors.baseline import GradientBoostingPredictor

    model = GradientBoostingPredictor.load(path, threads=1)
    return model.predict


def load_judge(spec: str | Path) -> Judge:
    """A judge from a GNN predictor (name or file), a ``<property>.gbm`` file, or a folder of ``.gbm`` files."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == BASELINE_SUFFIX:
        return Judge(str(spec), {path.stem: _baseline(path)})
    if path.is_dir() and any(path.glob(f"*{BASELINE_SUFFIX}")):
        return Judge(str(spec), {p.stem: _baseline(p) for p in sorted(path.glob(f"*{BASELINE_SUFFIX}"))})
    ensemble = load_predictor(spec)

    def column(k: int) -> PredictFn:
        def predict(crystals: Sequence[Crystal]) -> tuple[np.ndarray, np.ndarray]:
            mean, std = predict_crystals(ensemble, crystals)
            return mean[:, k], std[:, k]

        return predict

    return Judge(str(spec), {name: column(k) for k, name in enumerate(ensemble.properties)})


def judge_candidates(candidates: Sequence[Candidate], judge: Judge, prop: str) -> list[Candidate]:
    """The candidates with ``prop`` (and ``<prop>_judge_std``) set to the judge's value on each crystal.

    A value the sample carried before is replaced: only the judge's opinion is scored.
    """
    crystals = [c.crystal for c in candidates if c.crystal is not None]
    mean, std = judge.predict(prop, crystals) if crystals else (np.empty(0), np.empty(0))
    out, k = [], 0
    for candidate in candidates:
        if candidate.crystal is None:
            out.append(candidate)
            continue
        props = {**candidate.crystal.properties, prop: float(mean[k]), f"{prop}_judge_std": float(std[k])}
        out.append(dataclasses.replace(candidate, crystal=candidate.crystal.replace(properties=props)))
        k += 1
    return out


def judged(candidates: list[Candidate], judge: str | Path | None, prop: str | None) -> list[Candidate]:
    """``judge_candidates`` with the judge loaded from ``judge``; unchanged when either is None."""
    if judge is None or prop is None:
        return candidates
    return judge_candidates(candidates, load_judge(judge), prop)

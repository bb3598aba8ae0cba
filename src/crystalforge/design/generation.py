"""Generation in rounds and batches: which batches a run owes, their seeds, and storing them.

A run's budget is cut into **rounds**: round 0 is the first budget, and each later raise of
``budget`` adds one round of the difference. A round is cut into **batches** of ``batch_size``
candidates. Batch ``(round, batch)`` is generated into ``RUN/generate/r<round>-b<batch>/`` (an
ordinary, resumable generation folder) with a seed drawn from ``(seed, round, batch)``, so it is
the same whichever runs came before. Its candidates get the keys ``r<round>-<start + i>``
(``start = batch × batch_size``), one per requested structure: a structure the generator could not
make is stored as a candidate without one (its ``error`` says why), so the keys of a batch are
always complete. A batch whose first key is in the store is done (the store adds a batch in one
transaction, the filter's rejection of its missing structures included) and is never generated
again; a kill before that transaction leaves a resumable generation folder, which the rerun reads
back without sampling again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.design.spec import DesignSpec
from crystalforge.interrupt import check_interrupted
from crystalforge.io.run_folder import RunFolder
from crystalforge.progress import ProgressBar
from crystalforge.sampling.steering import Steering

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.design.store import CandidateStore

__all__ = ["Batch", "Generate", "batch_seed", "generate_batches", "plan_batches"]


class Generate(Protocol):
    """What the pipeline calls to generate one batch: ``api.generate`` (``api.design`` passes it).

    It writes a resumable generation folder ``out``, may return fewer than ``n`` crystals (a
    structure that is not a crystal is listed in ``failures.csv``) and calls ``progress(k)`` as it
    samples.
    """

    def __call__(
        self, model: str, *, n: int, out: Path, num_atoms: int | None, steps: int | None, steering: Steering | None,
        seed: int, device: str, batch_size: int, progress: Callable[[int], object],
    ) -> Sequence[Crystal]:  # fmt: skip
        """The generated crystals, in job order."""
        ...


@dataclass(frozen=True)
class Batch:
    """One generation batch: ``n`` candidates of round ``round`` from index ``start``."""

    round: int
    index: int
    start: int
    n: int

    @property
    def name(self) -> str:
        """Its folder name under ``RUN/generate``."""
        return f"r{self.round:03d}-b{self.index:04d}"


def batch_seed(seed: int, round: int, batch: int) -> int:
    """The generation seed of batch ``batch`` of round ``round`` (a 31-bit integer)."""
    state = np.random.SeedSequence([seed, round, batch]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


def plan_batches(rounds: Sequence[int], batch_size: int) -> list[Batch]:
    """The batches of rounds of the given sizes, in order."""
    out = []
    for r, size in enumerate(rounds):
        for b, start in enumerate(range(0, size, batch_size)):
            out.append(Batch(r, b, start, min(batch_size, size - start)))
    return out


def _failure_reasons(folder: Path) -> list[str]:
    """Why structures of a batch folder are missing (its own and its importance pool's ``failures.csv``)."""
    reasons = []
    for root in (folder, folder / "pool"):
        reasons += [c.error or "generation failed" for c in RunFolder(root).failures()]
    return reasons


def generate_batches(
    store: CandidateStore,
    generate: Generate,
    batches: Sequence[Batch],
    spec: DesignSpec,
    *,
    run: Path,
    bar: ProgressBar,
) -> int:
    """Generate and store every batch not yet in the store; return how many candidates were added."""
    from crystalforge.design.store import candidate_key

    added = 0
    steering = spec.steering()
    for batch in batches:
        if candidate_key(batch.round, batch.start) in store:
            continue
        check_interrupted()
        folder = run / "generate" / batch.name
        made = list(generate(
            spec.model, n=batch.n, out=folder, num_atoms=spec.num_atoms, steps=spec.steps, steering=steering,
            seed=batch_seed(spec.seed, batch.round, batch.index), device=spec.device, batch_size=spec.batch_size,
            progress=bar.update,
        ))  # fmt: skip
        if len(made) > batch.n:
            raise RuntimeError(f"{folder}: the generator returned {len(made)} structures for {batch.n}")
        source = f"generate/{batch.name}"
        rows = [Candidate(source, crystal=c, material_id=c.material_id) for c in made]
        reasons = _failure_reasons(folder)
        for k in range(batch.n - len(made)):
            reason = reasons[k] if k < len(reasons) else "generation failed: no structure"
            # the filter never sees a missing structure: its rejection is stored with the row, in one step
            rejected = {"status": "rejected", "reason": reason}
            rows.append(Candidate.failure(source, reason).with_stage("filter", rejected))
        store.add(rows, round=batch.round, start=batch.start)
        added += len(rows)
    return added

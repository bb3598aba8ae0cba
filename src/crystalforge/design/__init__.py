"""The design pipeline (``crystalforge design``): property targets → ranked candidates (docs/design.md).

Generated, filtered, deduplicated, screened, relaxed, hull-checked, predicted and ranked
candidates, the top N exported with their CIFs:

- ``spec``: ``DesignSpec`` and ``load_spec`` (YAML, CLI flags, keywords; checked once);
- ``pipeline``: ``run_design`` (resumable, extendable) and its ``DesignResult``;
- ``generation``, ``stages``, ``export``: the stages, one small function each;
- ``store``: ``CandidateStore``, every candidate and stage result in an ASE database;
- ``rank``: ``Objective``, ``rank``, ``pareto_fronts``, ``weighted_score``;
- ``active``: rounds, one after another, and active learning of the screen's stability surrogate;
- ``report``, ``report_data``, ``plots``, ``serve``: the self-contained HTML report and ``serve``.

Imports sampling, screening, evaluation, relax, predictors, io, core, execution and data; only the
api and the cli import it. Names are loaded from their modules on first access, so importing the
package (or ``design.spec``) loads neither ASE's database nor the stages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from crystalforge.design.pipeline import DesignResult, run_design
    from crystalforge.design.rank import Objective, Ranking, pareto_fronts, rank, weighted_score
    from crystalforge.design.spec import STAGES, DesignSpec, SpecError, load_spec
    from crystalforge.design.store import CandidateStore, StoreError, candidate_key

_EXPORTS: dict[str, str] = {
    "DesignResult": "pipeline",
    "run_design": "pipeline",
    "Objective": "rank",
    "Ranking": "rank",
    "pareto_fronts": "rank",
    "rank": "rank",
    "weighted_score": "rank",
    "STAGES": "spec",
    "DesignSpec": "spec",
    "SpecError": "spec",
    "load_spec": "spec",
    "CandidateStore": "store",
    "StoreError": "store",
    "candidate_key": "store",
}
"""Public name → the submodule defining it."""

__all__ = [
    "STAGES",
    "CandidateStore",
    "DesignResult",
    "DesignSpec",
    "Objective",
    "Ranking",
    "SpecError",
    "StoreError",
    "candidate_key",
    "load_spec",
    "pareto_fronts",
    "rank",
    "run_design",
    "weighted_score",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

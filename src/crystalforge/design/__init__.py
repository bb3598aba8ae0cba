"""The design pipeline (``crystalforge design``): so far its candidate store and its ranking.

Imports sampling, screening, evaluation, relax, predictors, io, core, execution and data; only
the api and the cli import it.
"""

from __future__ import annotations

from crystalforge.design.rank import Objective, Ranking, pareto_fronts, rank, weighted_score
from crystalforge.design.store import CandidateStore, StoreError, candidate_key

__all__ = [
    "CandidateStore",
    "Objective",
    "Ranking",
    "StoreError",
    "candidate_key",
    "pareto_fronts",
    "rank",
    "weighted_score",
]

"""Search baselines as model families: random symmetric structures (PyXtal) and ion substitution.

Both "train" by remembering training compositions or structures (``memory``) and fitting one
volume scale (``base.SearchModel``), and sample in one step. They are registered in
``crystalforge.registry`` as ``random_symmetric`` and ``substitution`` (docs/models.md, "Search baselines").
"""

from crystalforge.generative.search.base import SearchModel
from crystalforge.generative.search.memory import CrystalMemory
from crystalforge.generative.search.random_symmetric import (
    RandomSymmetric,
    RandomSymmetricConfig,
    build_random_symmetric,
    resolve_random_symmetric,
)
from crystalforge.generative.search.substitution import (
    Substitution,
    SubstitutionConfig,
    build_substitution,
    resolve_substitution,
)

__all__ = [
    "CrystalMemory", "RandomSymmetric", "RandomSymmetricConfig", "SearchModel", "Substitution", "SubstitutionConfig",
    "build_random_symmetric", "build_substitution", "resolve_random_symmetric", "resolve_substitution",
]  # fmt: skip

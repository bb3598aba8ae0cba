"""The benchmark datasets in CDVAE's CSV layout, and the reduced protocols used on this machine.

Each benchmark is a folder ``<data_dir>/<name>/`` holding ``train``, ``val`` and ``test`` as
``.csv`` or ``.csv.gz`` with a ``cif`` column, a ``material_id`` column and property columns.
Numeric property columns are kept as named properties (booleans as 0/1); text columns
(formulas, element lists) are dropped.

Reduced protocols (``<name>_reduced``) exist for benchmarks whose standard train split is not
available here (mp_20, mpts_52, carbon_24): **train** = the standard val split minus a fixed,
seeded 10 % holdout; **val** = that holdout; **test** = the standard test split. Every figure
produced under a reduced protocol is labelled with its name and is not comparable to numbers
trained on the standard train split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to find and read one CDVAE-format benchmark."""

    name: str
    description: str
    id_column: str = "material_id"
    cif_column: str = "cif"
    extra_splits: tuple[str, ...] = ()  # e.g. "train_partial"
    source: str = ""  # where to download the CSVs (see docs/data.md)
    citation: str = ""

    def split_file(self, root: Path, split: str) -> Path:
        """The CSV(.gz) path of ``split``; raises ``FileNotFoundError`` with what to do."""
        known = SPLITS + self.extra_splits
        if split not in known:
            raise ValueError(f"{self.name} has no split {split!r} (known: {', '.join(known)})")
        folder = root / self.name
        for suffix in (".csv.gz", ".csv"):
            candidate = folder / f"{split}{suffix}"
            if candidate.is_file():
                return candidate
        hint = ""
        if split == "train" and (folder / "train_partial.csv.gz").exists():
            hint = (
                f" Only a partial train file is present; use split='train_partial' for smoke tests or the "
                f"'{self.name}_reduced' protocol for benchmarks."
            )
        raise FileNotFoundError(
            f"{self.name} {split} split not found: expected {folder / (split + '.csv.gz')} or .csv "
            f"(data directory {root}; set CRYSTALFORGE_DATA_DIR or pass root=). Download: {self.source}.{hint}"
        )


@dataclass(frozen=True)
class ReducedProtocol:
    """Train/val carved from a benchmark's val split with a seeded holdout; test unchanged."""

    base: str
    holdout_fraction: float = 0.1
    seed: int = 0
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"{self.base}_reduced")

    def source_split(self, split: str) -> str:
        """Which standard split a reduced split's rows come from."""
        if split not in SPLITS:
            raise ValueError(f"{self.name} has no split {split!r} (known: {', '.join(SPLITS)})")
        return "test" if split == "test" else "val"

    def select(self, split: str, material_ids: np.ndarray) -> np.ndarray:
        """Row indices of ``split`` among the rows of its source split (sorted)."""
        if split == "test":
            return np.arange(len(material_ids))
        order = np.argsort(material_ids, kind="stable")  # independent of row order in the file
        perm = order[np.random.default_rng(self.seed).permutation(len(order))]
        n_hold = round(self.holdout_fraction * len(order))
        chosen = perm[:n_hold] if split == "val" else perm[n_hold:]
        return np.sort(chosen)

    def describe(self) -> str:
        """One line for reports."""
        return (
            f"{self.name}: train = {self.base} val minus a {self.holdout_fraction:.0%} holdout (seed {self.seed}), "
            f"val = that holdout, test = {self.base} test"
        )


_CDVAE = "https://github.com/txie-93/cdvae/tree/main/data"
_DIFFCSP = "https://github.com/jiaor17/DiffCSP/tree/main/data"

BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in (
        BenchmarkSpec(
            "perov_5",
            "18,928 cubic perovskites (5 atoms), Castelli et al. 2012",
            source=_CDVAE + "/perov_5",
            citation="Castelli et al., Energy Environ. Sci. 5, 9034 (2012); Xie et al., CDVAE (2022)",
        ),
        BenchmarkSpec(
            "carbon_24",
            "10,153 carbon allotropes (6-24 atoms) from AIRSS at 10 GPa",
            extra_splits=("train_partial",),
            source=_CDVAE + "/carbon_24",
            citation="Pickard, Materials Cloud 2020.0026/v1; Xie et al., CDVAE (2022)",
        ),
        BenchmarkSpec(
            "mp_20",
            "45,231 Materials Project structures with at most 20 atoms",
            extra_splits=("train_partial",),
            source=_CDVAE + "/mp_20",
            citation="Jain et al., APL Materials 1, 011002 (2013); Xie et al., CDVAE (2022)",
        ),
        BenchmarkSpec(
            "mpts_52",
            "40,476 Materials Project structures with at most 52 atoms, time split",
            source=_DIFFCSP + "/mpts_52",
            citation="Jiao et al., DiffCSP (NeurIPS 2023); Jain et al. (2013)",
        ),
    )
}

REDUCED: dict[str, ReducedProtocol] = {
    p.name: p for p in (ReducedProtocol(b) for b in ("mp_20", "mpts_52", "carbon_24"))
}


def known_datasets() -> list[str]:
    """Names ``load_dataset`` accepts besides paths."""
    return sorted(BENCHMARKS) + sorted(REDUCED)

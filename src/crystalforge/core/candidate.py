"""``Candidate``: one row of the candidate table, a crystal or the reason there is none.

Everything after sampling (reading files, parsing dataset rows, generation runs, evaluation,
relaxation, screening) passes candidates around, so "a structure or why it is missing" has one
type. A candidate's ``ident`` is its name (material id, job name or file-derived name), ``source``
says where it came from (``path``, ``path:frame``, ``mp_20/test.csv row 7``, ``failures.csv``) and
``stages`` collects per-stage results (``{"relax": RelaxResult, "hull": {...}}``) without the type
knowing the stages. ``CandidateTable`` is an ordered list of them with the table-level views.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from crystalforge.core.crystal import Crystal


@dataclass(frozen=True)
class Candidate:
    """One structure (``crystal``) or the reason it has none (``error``), with its name and origin.

    Attributes:
        source: where the record came from (file, ``file:frame``, dataset row, generation folder).
        crystal: the structure, or None when the record gave none.
        error: why there is no structure (None when ``crystal`` is set).
        material_id: the record's own id when it has one (kept also when there is no crystal).
        stages: per-stage results keyed by stage name; values are whatever the stage returns.

    """

    source: str
    crystal: Crystal | None = None
    error: str | None = None
    material_id: str | None = None
    stages: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.crystal is None) == (self.error is None):
            raise ValueError(f"{self.source}: a candidate holds either a crystal or an error, not both or neither")

    @property
    def ok(self) -> bool:
        """True when the candidate holds a crystal."""
        return self.crystal is not None

    @property
    def ident(self) -> str:
        """The candidate's name: the crystal's material id, else the record's, else its source."""
        if self.crystal is not None and self.crystal.material_id:
            return self.crystal.material_id
        return self.material_id or self.source

    def with_stage(self, name: str, result: object) -> Candidate:
        """A copy with one more (or a replaced) stage result."""
        return dataclasses.replace(self, stages={**self.stages, name: result})

    def failed(self, reason: str) -> Candidate:
        """The candidate without its structure, because of ``reason`` (its id is kept)."""
        return dataclasses.replace(self, crystal=None, error=reason, material_id=self.ident)

    def __str__(self) -> str:
        return f"{self.source}: {self.error}" if self.error is not None else f"{self.source}: {self.crystal!r}"

    @classmethod
    def of(cls, crystal: Crystal, source: str | None = None) -> Candidate:
        """A candidate holding ``crystal`` (source defaults to its material id)."""
        return cls(source or crystal.material_id or "<crystal>", crystal=crystal, material_id=crystal.material_id)

    @classmethod
    def failure(cls, source: str, error: str, *, material_id: str | None = None) -> Candidate:
        """A candidate with no structure because of ``error``."""
        return cls(source, error=error, material_id=material_id)


class CandidateTable(Sequence[Candidate]):
    """An ordered table of candidates (index = row), with the views every stage needs."""

    def __init__(self, rows: Iterable[Candidate] = ()) -> None:
        self._rows = list(rows)

    @overload
    def __getitem__(self, index: int) -> Candidate: ...

    @overload
    def __getitem__(self, index: slice) -> CandidateTable: ...

    def __getitem__(self, index: int | slice) -> Candidate | CandidateTable:
        if isinstance(index, slice):
            return CandidateTable(self._rows[index])
        return self._rows[index]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self._rows)

    def __add__(self, other: Iterable[Candidate]) -> CandidateTable:
        return CandidateTable([*self._rows, *other])

    def __repr__(self) -> str:
        return f"CandidateTable({len(self)} rows, {len(self.failures)} without a structure)"

    @property
    def crystals(self) -> list[Crystal]:
        """The structures of the rows that have one, in order."""
        return [c.crystal for c in self._rows if c.crystal is not None]

    @property
    def failures(self) -> list[Candidate]:
        """The rows without a structure, in order."""
        return [c for c in self._rows if c.crystal is None]

    def stage(self, name: str) -> list[Any]:
        """Each row's result of stage ``name`` (None where the row has none)."""
        return [c.stages.get(name) for c in self._rows]

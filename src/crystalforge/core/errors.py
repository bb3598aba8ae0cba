"""The one exception type for bad crystal data, carrying where the data came from."""

from __future__ import annotations


class CrystalError(ValueError):
    """A crystal record is malformed or physically impossible.

    The message always names the record (``source``: a file path, ``path:index`` or a dataset
    row such as ``mp_20/test.csv.gz row 17 (mp-1234)``) and the problem, so batch jobs can report
    it and move on.
    """

    def __init__(self, problem: str, *, source: str | None = None) -> None:
        self.problem = problem
        self.source = source
        super().__init__(f"{source}: {problem}" if source else problem)

    def with_source(self, source: str) -> CrystalError:
        """The same error attributed to ``source`` (keeps an existing, more precise source)."""
        if self.source:
            return self
        return CrystalError(self.problem, source=source)

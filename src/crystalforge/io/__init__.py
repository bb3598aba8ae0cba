"""Structure files, the crystal text format, conversions and the generation run-folder layout."""

from crystalforge.io.files import iter_records, read_structures, write_structures

__all__ = ["iter_records", "read_structures", "write_structures"]

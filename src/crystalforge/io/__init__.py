"""Conversions and file formats: pymatgen, ASE, CIF, POSCAR, extxyz and our ``.npz`` archive."""

from __future__ import annotations

from crystalforge.io.files import Record, iter_records, read_structures, write_structures

__all__ = ["Record", "iter_records", "read_structures", "write_structures"]

"""The ``crystalforge`` command line: a thin layer over ``crystalforge.api``."""

"""Representations of crystals: graphs, text tokens, voxel grids, symmetry and descriptors.

Each invertible representation implements ``Representation`` (``encode``/``decode`` with a
stated ``lossless`` flag) and inherits the round-trip contract test in
``tests/representations/test_contract.py``.
"""

"""Evaluation of generated crystals: one pinned protocol; never imports generative code."""

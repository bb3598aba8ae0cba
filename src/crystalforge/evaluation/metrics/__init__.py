"""Metrics of the evaluation protocol, one module per metric (``validity``, ...)."""

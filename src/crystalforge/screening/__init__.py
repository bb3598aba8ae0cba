"""Screening candidates: predicted properties (with uncertainty) for any structures or generation run."""

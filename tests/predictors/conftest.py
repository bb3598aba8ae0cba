"""Single-threaded torch for every test here (see ``tests/conftest.py::one_thread``)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    return

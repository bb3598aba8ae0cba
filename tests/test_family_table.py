"""The family comparison of BENCHMARKS.md is assembled from committed result rows and shipped cards only."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("family_table", REPO / "benchmarks" / "family_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up by name
    spec.loader.exec_module(module)
    return module


def test_mp_20_table_reads_its_rows_from_the_results(tmp_path, monkeypatch):
    family_table = _script()
    text = family_table.table("mp_20_reduced")
    lines = text.strip().splitlines()
    assert len(lines) == 2 + len(family_table.ROWS["mp_20_reduced"])
    flow = json.loads((REPO / "benchmarks/results/families-mp_20-dng-flow.json").read_text())["rows"][0]
    assert lines[2].startswith("| flow (flagship) | " + f"{flow['validity']:.1f} (")
    # a row pointing at a file that is not there is refused by name, not printed as an empty cell
    broken = family_table.Row("ghost", ("mp_20-dng",), "no-such-file.json:0")
    monkeypatch.setitem(family_table.ROWS, "mp_20_reduced", (broken,))
    with pytest.raises(SystemExit, match=r"no-such-file\.json:0"):
        family_table.table("mp_20_reduced")
    wrong_k = family_table.Row("ghost", ("mp_20-csp",), None, "families-mp_20-csp-k20.json:0")
    monkeypatch.setitem(family_table.ROWS, "mp_20_reduced", (wrong_k,))
    with pytest.raises(SystemExit, match=r"k=20 row where k=1"):
        family_table.table("mp_20_reduced")

"""The same seed gives identical files on CPU: across torch thread counts, design workers, runs in pieces.

Two ``generate`` runs with 1 and 2 torch intra-op threads must write the same bytes (``generate
--workers``: ``tests/reliability/test_generate_workers.py``). ``design --workers`` spreads matching
and relaxation over processes; 1 and 2 workers must give the same candidates and top list. A run
grown in pieces (``-n 4``, then ``-n 8``) must equal one run of ``-n 8``. The chunk size
(``--batch-size``) is different: it decides which structures share a sampling seed, so it is a
recorded setting, and a folder refuses to resume with another one rather than mixing two streams.
"""

from __future__ import annotations

import json

import torch

from crystalforge import api
from crystalforge.cli.main import main
from tests.reliability.test_crash_design import DESIGN, results
from tests.reliability.test_crash_generate import snapshot

GENERATE = ["generate", "--model", "perov_5-dng", "-n", "6", "--steps", "5", "--batch-size", "3", "--seed", "4"]


def test_generate_is_byte_identical_on_1_and_2_threads(tmp_path):
    folders = {}
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert main([*GENERATE, "--out", str(tmp_path / f"threads-{threads}")]) == 0
            folders[threads] = snapshot(tmp_path / f"threads-{threads}")
    finally:
        torch.set_num_threads(before)
    assert folders[1] == folders[2]


def test_a_run_grown_in_pieces_equals_one_run(tmp_path):
    pieces, whole = tmp_path / "pieces", tmp_path / "whole"
    options = {"steps": 5, "batch_size": 2, "seed": 4}
    api.generate("perov_5-dng", n=4, out=pieces, **options)
    api.generate("perov_5-dng", n=8, out=pieces, **options)
    api.generate("perov_5-dng", n=8, out=whole, **options)
    assert snapshot(pieces) == snapshot(whole)


def test_another_chunk_size_is_refused_not_mixed(tmp_path, capsys):
    out = tmp_path / "gen"
    assert main([*GENERATE, "--out", str(out)]) == 0
    before = snapshot(out)
    assert main([*GENERATE[:-4], "--batch-size", "2", "--seed", "4", "--out", str(out)]) == 2
    assert "batch_size: 3 before, 2 now" in capsys.readouterr().err
    assert snapshot(out) == before
    assert json.loads((out / "run.json").read_text())["batch_size"] == 3


def test_design_is_identical_with_1_and_2_workers(tmp_path, capsys):
    found = []
    for workers in ("1", "2"):
        out = tmp_path / f"workers-{workers}"
        assert main([*DESIGN, "--workers", workers, "--out", str(out)]) == 0
        found.append(results(out))
    assert found[0]["design"]["spec"].pop("workers") == 1  # type: ignore[index]
    assert found[1]["design"]["spec"].pop("workers") == 2  # type: ignore[index]
    assert found[0] == found[1]

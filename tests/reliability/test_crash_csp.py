"""``crystalforge csp`` killed with ``kill -9`` at three random points resumes to the files of an unbroken run.

Kill points and checks as in ``test_crash_generate``: after the first chunk record, after the fifth,
and while the CIFs are written, each plus a random delay from a seeded RNG.
"""

from __future__ import annotations

from crystalforge.io.files import read_structures
from tests.reliability.test_crash_generate import kill_points, kill_repeatedly, run_cli, snapshot, temporaries

FORMULAS = ["SrTiO3", "BaTiO3", "CaTiO3", "SrZrO3"]
CSP = ["csp", "--model", "perov_5-csp", "--formula", *FORMULAS, "--k", "4", "--steps", "50", "--batch-size", "2",
       "--seed", "3"]  # fmt: skip


def test_kill_9_three_times_then_resume_gives_the_unbroken_run(tmp_path):
    reference = tmp_path / "reference"
    done = run_cli([*CSP, "--out", str(reference)])
    assert done.returncode == 0, done.stderr
    assert not temporaries(reference)
    out = tmp_path / "pred"
    kill_repeatedly([*CSP, "--out", str(out)], kill_points(out), seed=11)
    assert snapshot(out) == snapshot(reference)
    predicted = read_structures(out / "samples.extxyz")
    # k = 4 rounds of every formula, each once, each with its composition
    assert [c.material_id for c in predicted] == [f"{f}_{j}" for j in range(4) for f in FORMULAS]
    assert [c.formula for c in predicted[:4]] == FORMULAS

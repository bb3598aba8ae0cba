"""A Ctrl-C that library code swallows still stops the command (``crystalforge.interrupt``).

The CI once saw a design run go on to its end (exit 0) after a Ctrl-C: some library's bare
``except:`` had caught the ``KeyboardInterrupt``. Here a sampler does that on purpose.
"""

from __future__ import annotations

import signal

from crystalforge.cli import main as cli_main
from crystalforge.io.run_folder import RunFolder
from crystalforge.sampling import runner
from tests.test_interrupt import swallowing_library

LINE = "interrupted: finished work is kept; rerun the same command to resume"


def test_generate_stops_at_the_next_chunk_and_the_rerun_finishes(tmp_path, monkeypatch, capsys):
    sample = runner._sample_chunk
    calls = []

    def sampled_with_a_swallowed_ctrl_c(model, task):
        calls.append(task.seed)
        if len(calls) == 1:
            swallowing_library()  # the chunk itself finishes: the sampler swallowed it
        return sample(model, task)

    monkeypatch.setattr(runner, "_sample_chunk", sampled_with_a_swallowed_ctrl_c)
    out = tmp_path / "gen"
    args = ["generate", "--model", "perov_5-dng", "-n", "6", "--steps", "3", "--batch-size", "2", "--seed", "1",
            "--out", str(out)]  # fmt: skip
    before = signal.getsignal(signal.SIGINT)
    assert cli_main.main(args) == 130
    assert signal.getsignal(signal.SIGINT) is before
    assert capsys.readouterr().err.strip() == LINE
    assert len(calls) == 1  # stopped before the second chunk
    assert [p.name for p in sorted(RunFolder(out).chunk_dir.glob("chunk_*.json"))] == ["chunk_00000.json"]

    assert cli_main.main(args) == 0  # no Ctrl-C left over: the rerun resumes and finishes
    assert len(calls) == 3


def test_work_that_ran_to_its_end_after_a_swallowed_ctrl_c_still_exits_130(monkeypatch, capsys):
    def swallows_then_finishes(args):
        swallowing_library()
        return 0

    monkeypatch.setattr(cli_main.COMMANDS["models"], "run", swallows_then_finishes)
    assert cli_main.main(["models"]) == 130
    assert capsys.readouterr().err.strip() == LINE


def test_an_error_a_library_makes_of_a_ctrl_c_is_the_ctrl_c(monkeypatch, capsys):
    """Seen here: a Ctrl-C in the import of matplotlib's C extension became ``ImportError: initialization failed``."""

    def import_interrupted(args):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    monkeypatch.setattr(cli_main.COMMANDS["models"], "run", import_interrupted)
    assert cli_main.main(["models"]) == 130
    assert capsys.readouterr().err.strip() == LINE


def test_an_error_without_a_ctrl_c_is_still_that_error(monkeypatch, capsys):
    def fails(args):
        raise ValueError("a bad value")

    monkeypatch.setattr(cli_main.COMMANDS["models"], "run", fails)
    assert cli_main.main(["models"]) == 2
    assert capsys.readouterr().err.strip() == "error: a bad value"

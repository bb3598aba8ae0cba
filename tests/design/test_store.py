"""The candidate store: round trip, idempotent adds, resume after a crash, stage semantics, bad input, ``ase db``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.db
import numpy as np
import pytest

from crystalforge.core.candidate import Candidate
from crystalforge.core.crystal import Crystal
from crystalforge.design.rank import Objective, rank
from crystalforge.design.store import CandidateStore, StoreError, candidate_key

REPO = Path(__file__).resolve().parents[2]


def _crystal(scale: float = 1.0, material_id: str | None = "si-1") -> Crystal:
    return Crystal(
        [14, 14],
        [[0.0, 0.0, 0.0], [0.25, 0.25, 0.25]],
        np.array([[0.0, 2.7, 2.7], [2.7, 0.0, 2.7], [2.7, 2.7, 0.0]]) * scale,
        properties={"band_gap": 1.1},
        material_id=material_id,
    )


def _batch(n: int = 3) -> list[Candidate]:
    rows = [Candidate.of(_crystal(1.0 + 0.01 * i, f"si-{i}"), f"gen/{i}") for i in range(n - 1)]
    return [*rows, Candidate.failure("gen/bad", "3.5", material_id="x-1")]  # an error that reads as a number


def test_round_trip_keeps_structures_records_and_failures(tmp_path):
    path = tmp_path / "run" / "candidates.db"
    candidates = _batch(3)
    keys = CandidateStore(path).add(candidates, round=2)
    assert keys == [candidate_key(2, i) for i in range(3)] == ["r002-000000", "r002-000001", "r002-000002"]
    back = CandidateStore(path).candidates()
    for original, stored in zip(candidates, back, strict=True):
        assert (stored.source, stored.error, stored.material_id) == (
            original.source,
            original.error,
            original.material_id,
        )
        if original.crystal is not None:
            assert stored.crystal is not None and stored.crystal.allclose(original.crystal, atol=1e-10)
            assert stored.crystal.material_id == original.crystal.material_id
            assert dict(stored.crystal.properties) == {"band_gap": 1.1}
    assert back[2].crystal is None and back[2].stages == {}
    table = CandidateStore(path).table()
    assert [row["cid"] for row in table] == keys and [row["round"] for row in table] == [2, 2, 2]
    assert table[0]["formula"] == "Si2" and table[2]["natoms"] == 0 and table[2]["error"] == "3.5"


def test_add_is_idempotent_on_the_key(tmp_path):
    store = CandidateStore(tmp_path / "c.db")
    first = store.add(_batch(3), round=0)
    again = store.add([Candidate.of(_crystal(2.0), "other")] * 3, round=0)  # same keys: the first write wins
    assert again == first and len(store) == 3
    assert store.candidates([first[0]])[0].source == "gen/0"
    more = store.add(_batch(2), round=0, start=3)
    assert more == ["r000-000003", "r000-000004"] and len(store) == 5 and store.keys == first + more
    assert first[1] in store and "r009-000000" not in store


def test_pending_can_stop_at_a_round(tmp_path):
    store = CandidateStore(tmp_path / "c.db")
    first, second, third = (store.add(_batch(3), round=r)[:2] for r in range(3))  # the last one: no structure
    assert store.pending("filter", upto_round=0) == first
    assert store.pending("filter", upto_round=1) == first + second
    assert store.pending("filter") == store.pending("filter", upto_round=2) == first + second + third


def test_stage_results_pending_and_funnel(tmp_path):
    store = CandidateStore(tmp_path / "c.db")
    keys = store.add(_batch(5), round=0)  # 4 structures, 1 failure
    assert store.pending("filter") == keys[:4]  # a candidate without a structure has nothing to do
    store.record("filter", keys[0], {"valid": True, "min_distance": np.float32(2.3)})
    store.record("filter", keys[1], {"valid": True})
    store.record("filter", keys[2], {"valid": False, "reason": "too close"}, status="rejected")
    store.fail("filter", keys[3], "ValueError: boom")
    store.record("filter", keys[4], {"valid": False}, status="rejected")  # a failure may be recorded too
    assert store.pending("filter") == []
    assert store.pending("relax", after=["filter"]) == keys[:2]
    store.record("relax", keys[0], {"energy_per_atom": -5.4, "trajectory": [1.0, 0.5], "note": None})
    assert store.pending("relax", after=["filter"]) == [keys[1]]
    assert store.status("relax", keys[0]) == "done" and store.status("relax", keys[1]) is None
    assert store.funnel(["filter", "relax", "hull"]) == {"filter": 2, "relax": 1, "hull": 0}
    assert store.funnel(["relax", "filter"]) == {"relax": 1, "filter": 1}

    rows = {row["cid"]: row for row in store.table()}
    assert rows[keys[0]]["filter_min_distance"] == pytest.approx(2.3)
    assert rows[keys[0]]["relax_trajectory"] == [1.0, 0.5] and rows[keys[0]]["relax_note"] is None
    assert rows[keys[2]]["filter"] == "rejected" and rows[keys[2]]["filter_reason"] == "too close"
    assert rows[keys[3]]["filter"] == "failed" and rows[keys[3]]["filter_error"] == "ValueError: boom"
    stages = store.candidates([keys[0]])[0].stages
    assert stages["relax"] == {"status": "done", "energy_per_atom": -5.4, "trajectory": [1.0, 0.5], "note": None}
    assert stages["filter"]["status"] == "done" and stages["filter"]["valid"] is True

    # recording a stage again replaces all its earlier values
    store.record("relax", keys[0], {"energy": "12"}, status="failed")
    again = store.candidates([keys[0]])[0].stages["relax"]
    assert again == {"status": "failed", "energy": "12"}


def test_a_new_structure_keeps_the_first_one(tmp_path):
    store = CandidateStore(tmp_path / "c.db")
    (key,) = store.add([Candidate.of(_crystal(1.0))], round=0)
    store.record("relax", key, {"energy_per_atom": -5.4}, crystal=_crystal(1.05))
    store.record("relax", key, {"energy_per_atom": -5.5}, crystal=_crystal(1.02))  # a rerun keeps the very first
    relaxed = CandidateStore(tmp_path / "c.db").candidates([key])[0].crystal
    assert relaxed is not None and relaxed.allclose(_crystal(1.02), atol=1e-10)
    initial = ase.db.connect(str(tmp_path / "c.db")).get(cid=key).data["initial"]
    assert np.allclose(initial["lattice"], _crystal(1.0).lattice)


def test_reopening_after_a_crash_resumes(tmp_path):
    path = tmp_path / "c.db"
    store = CandidateStore(path)
    keys = store.add(_batch(4), round=0)
    store.record("filter", keys[0], {"valid": True})
    del store  # never closed: the "crash"
    resumed = CandidateStore(path)
    assert resumed.pending("filter") == keys[1:3] and resumed.add(_batch(4), round=0) == keys and len(resumed) == 4


def _killed_store_script(path: Path) -> str:
    """The start of a script that opens the store at ``path`` in a process the test then kills (one Si crystal)."""
    return textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from crystalforge.core.candidate import Candidate
        from crystalforge.core.crystal import Crystal
        from crystalforge.design.store import CandidateStore

        crystal = Crystal([14], [[0, 0, 0]], np.eye(3) * 3.0)
        store = CandidateStore({str(path)!r})
        """
    )


def test_kill_9_loses_at_most_the_item_in_flight(tmp_path):
    path = tmp_path / "c.db"
    script = _killed_store_script(path) + textwrap.dedent(
        """
        keys = store.add([Candidate.of(crystal)] * 4, round=0)
        for key in keys[:3]:
            store.record("relax", key, {"energy_per_atom": -1.0})
        calls = []
        def dying_to_ase(self):
            calls.append(1)
            if len(calls) == 2:  # in the middle of the next batch
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self)
        original = Crystal.to_ase
        Crystal.to_ase = dying_to_ase
        store.add([Candidate.of(crystal)] * 3, round=1)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == -9, result.stderr
    store = CandidateStore(path)
    assert len(store) == 4  # the interrupted batch left nothing behind
    assert store.pending("relax") == ["r000-000003"] and store.funnel(["relax"]) == {"relax": 3}


def test_a_kill_9_inside_a_write_does_not_block_the_resumed_run(tmp_path):
    """A kill inside ASE's write (where its lock file, if used, is held) leaves nothing for the next open to wait on."""
    path = tmp_path / "c.db"
    script = _killed_store_script(path) + textwrap.dedent(
        """
        import ase.db.sqlite
        keys = store.add([Candidate.of(crystal)] * 2, round=0)
        def dying_write(self, *args, **kwargs):  # inside Database.update's locked section
            os.kill(os.getpid(), signal.SIGKILL)
        ase.db.sqlite.SQLite3Database._write = dying_write
        store.record("relax", keys[0], {"energy_per_atom": -1.0}, crystal=crystal)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == -9, result.stderr
    resumed = subprocess.run(  # without the fix this waited forever for ASE's stale lock file
        [sys.executable, "-c", f"from crystalforge.design.store import CandidateStore as S; s = S({str(path)!r}); "
         f"s.record('relax', 'r000-000000', {{'energy_per_atom': -2.0}}); print(s.pending('relax'))"],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "['r000-000001']"


def test_bad_input_is_named(tmp_path):
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_text("hello")
    with pytest.raises(StoreError, match=r"junk\.db: not a crystalforge candidate store"):
        CandidateStore(not_a_db)
    foreign = tmp_path / "foreign.db"
    ase.db.connect(str(foreign)).write(_crystal().to_ase(), name="x")
    with pytest.raises(StoreError, match=r"foreign\.db: an ASE database, but not"):
        CandidateStore(foreign)
    with pytest.raises(StoreError, match=r"c\.json: a candidate store is a \.db file"):
        CandidateStore(tmp_path / "c.json")

    store = CandidateStore(tmp_path / "c.db")
    (key,) = store.add([Candidate.of(_crystal())], round=0)
    for stage in ("Relax", "e_hull", "has space", "energy", "cid", "material", "data", "", "1st"):
        with pytest.raises(StoreError, match=r"c\.db: record 'r000-000000', stage .*bad stage name"):
            store.record(stage, key, {"x": 1.0})
    with pytest.raises(StoreError, match="bad value name 'e-hull'"):
        store.record("hull", key, {"e-hull": 0.1})
    with pytest.raises(StoreError, match="status must be"):
        store.record("hull", key, {}, status="maybe")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match=r"c\.db: no candidate 'r005-000000'"):
        store.record("hull", "r005-000000", {})
    with pytest.raises(StoreError, match="bad stage name"):
        store.pending("relax", after=["not ok"])
    assert store.table()[0].keys() >= {"cid", "round"} and "hull" not in store.table()[0]  # nothing was written


def test_ase_db_reads_the_store(tmp_path):
    path = tmp_path / "candidates.db"
    store = CandidateStore(path)
    keys = store.add(_batch(3), round=0)
    store.record("relax", keys[0], {"energy_per_atom": -5.4})
    if shutil.which("ase"):
        command = ["ase", "db", str(path), "relax=done", "-c", "cid,formula,relax,relax_energy_per_atom"]
    else:
        code = (
            "import sys, ase.db\n"
            "for r in ase.db.connect(sys.argv[1]).select('relax=done'): print(r.cid, r.formula, r.relax)"
        )
        command = [sys.executable, "-c", code, str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert keys[0] in result.stdout and "Si2" in result.stdout and keys[1] not in result.stdout


def test_the_table_feeds_the_ranking(tmp_path):
    store = CandidateStore(tmp_path / "c.db")
    keys = store.add(_batch(4), round=0)
    for key, e_hull in zip(keys[:3], [0.2, 0.0, None], strict=True):
        store.record("hull", key, {"e_above_hull": e_hull})
    ranking = rank(store.table(), [Objective("hull_e_above_hull")])
    assert [keys[i] for i in ranking.order] == [keys[1], keys[0], keys[2], keys[3]]

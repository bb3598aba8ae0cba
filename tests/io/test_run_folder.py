"""``RunFolder.record_settings``: a resumed run must have the settings of the run that made the folder."""

from __future__ import annotations

import json

import pytest

from crystalforge.io.run_folder import RunFolder

SETTINGS = {"model": "m", "seed": 0, "batch_size": 4, "sampler": {"steps": 5, "min_volume_fraction": 0.5}}


def test_the_same_settings_resume_and_other_ones_are_named(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.record_settings(SETTINGS, resuming=False)
    folder.record_settings(SETTINGS, resuming=True)  # no error
    with pytest.raises(ValueError, match=r"other settings \(seed: 0 before, 1 now\)"):
        folder.record_settings({**SETTINGS, "seed": 1}, resuming=True)


def test_a_folder_from_before_a_new_setting_says_so(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    old = {**SETTINGS, "sampler": {"steps": 5}}  # written before min_volume_fraction existed
    folder.run_file.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"earlier crystalforge \(its run record has no sampler.min_volume_fraction\)"):
        folder.record_settings(SETTINGS, resuming=True)
    changed_too = {**SETTINGS, "seed": 3}  # another difference besides the new key: the usual message
    with pytest.raises(ValueError, match="other settings"):
        folder.record_settings(changed_too, resuming=True)

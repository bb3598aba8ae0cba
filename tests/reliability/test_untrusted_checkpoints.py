"""Model files are untrusted input: a damaged or hostile one is refused in one line naming it.

Every ``torch.load`` in the package reads with ``weights_only=True`` (checked over the source), so a
pickle that asks for ``os.system`` is refused before anything runs; truncated, empty and random
files, and valid archives with tampered contents, are told apart in the message. The CLI prints
``error: <file>: <problem>`` and exits with 2, without a traceback.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from crystalforge.cli.main import main
from crystalforge.config import load_config, to_dict
from crystalforge.io.files import write_structures
from crystalforge.testing import tiny_crystals
from crystalforge.training.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from crystalforge.training.config import TrainConfig
from crystalforge.training.loading import load_model
from crystalforge.training.run import prepare

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "crystalforge"


class RunsACommand:
    """Unpickling this calls ``os.system``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    """A real (untrained) ``model.pt`` of the flow family, written without training."""
    folder = tmp_path_factory.mktemp("good")
    write_structures(tiny_crystals()[1:], folder / "tiny.extxyz")
    config = load_config(
        TrainConfig,
        None,
        [
            "model.backbone={hidden: 16, layers: 1, fourier_frequencies: 2, time_dim: 8}",
            f"data.dataset={folder / 'tiny.extxyz'}",
            "data.val_split=null",
        ],
    )
    _, _, stats, resolved, model = prepare(config)
    return save_checkpoint(
        folder / "model.pt",
        family=resolved.family,
        config=to_dict(resolved),
        weights=model.state_dict(),  # type: ignore[attr-defined]
        dataset_stats=stats.to_dict(),
    )


def _tampered(change: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    """A valid checkpoint archive whose data ``change`` edited."""

    def write(good: Path, bad: Path) -> None:
        data = copy.deepcopy(torch.load(good, weights_only=True))
        change(data)
        torch.save(data, bad)

    return write


def _drop_a_weight(data: dict) -> None:
    del data["weights"][next(iter(data["weights"]))]


def _reshape_a_weight(data: dict) -> None:
    data["weights"][next(iter(data["weights"]))] = torch.zeros(3, 3, 3)


CASES: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "cut in half": (
        lambda good, bad: bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
        r"not a crystalforge checkpoint \(not a PyTorch archive: truncated, or another kind of file\)",
    ),
    "random bytes": (
        lambda good, bad: bad.write_bytes(os.urandom(4096)),
        r"not a crystalforge checkpoint \(not a PyTorch archive",
    ),
    "empty": (lambda good, bad: bad.write_bytes(b""), r"an empty file, not a crystalforge checkpoint"),
    "pickle calling os.system": (
        lambda good, bad: torch.save({"format_version": 1, "x": RunsACommand(bad.with_suffix(".ran"))}, bad),
        r"refused, not a crystalforge checkpoint: its pickle asks for \w+\.system \(nothing was run\)",
    ),
    "a weight missing": (
        _tampered(_drop_a_weight),
        r"cannot build its model \(RuntimeError: Error\(s\) in loading state_dict .* Missing key\(s\)",
    ),
    "a weight of another shape": (_tampered(_reshape_a_weight), r"cannot build its model .* size mismatch"),
    "weights not tensors": (
        _tampered(lambda d: d.update(weights={"w": "not a tensor"})),
        r"damaged crystalforge checkpoint \(its weights are not a table of named tensors\)",
    ),
    "unknown family": (
        _tampered(lambda d: (d.update(family="nope"), d["config"].pop("family"))),
        r"cannot build its model \(KeyError: unknown model family 'nope'",
    ),
    "a newer format": (
        _tampered(lambda d: d.update(format_version=FORMAT_VERSION + 1)),
        rf"checkpoint format {FORMAT_VERSION + 1} is newer than this crystalforge reads",
    ),
    "a config of wrong types": (
        _tampered(lambda d: d["config"]["model"]["backbone"].update(hidden="wide")),
        r"cannot build its model \(ConfigError: model\.backbone\.hidden: expected an integer",
    ),
}


def _tiny_run_config(good_model: Path, folder: Path) -> Path:
    """A one-epoch training config on the fixture's tiny structures."""
    config = folder / "run.yaml"
    config.write_text(
        "model: {backbone: {hidden: 16, layers: 1, fourier_frequencies: 2, time_dim: 8}}\n"
        f"data: {{dataset: {good_model.parent / 'tiny.extxyz'}, val_split: null, batch_size: 2}}\n"
        "trainer: {max_epochs: 1, accelerator: cpu, threads: 1}\n"
    )
    return config


def test_the_untampered_file_loads(good_model):
    assert load_model(good_model).config.family == "joint"


@pytest.mark.parametrize("case", list(CASES))
def test_generate_refuses_a_bad_model_file_in_one_line(case, good_model, tmp_path, capsys):
    make, expected = CASES[case]
    bad = tmp_path / "BAD.pt"
    make(good_model, bad)
    code = main(["generate", "--model", str(bad), "-n", "1", "--steps", "1", "--out", str(tmp_path / "gen")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), err
    assert re.search(expected, lines[0]), lines[0]
    assert not bad.with_suffix(".ran").exists()  # the hostile pickle never ran
    assert not (tmp_path / "gen").exists() or not any((tmp_path / "gen").iterdir())


def test_a_damaged_resume_checkpoint_is_named(good_model, tmp_path, capsys):
    pytest.importorskip("lightning")
    config = _tiny_run_config(good_model, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(good_model.read_bytes()[:1000])
    assert main(["train", str(config), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # Lightning's start-up lines, then one line of error
    assert err.strip().splitlines()[-1] == (
        f"error: {run / 'last.ckpt'}: not a crystalforge resume checkpoint (not a PyTorch archive: "
        "truncated, or another kind of file)"
    )


def test_every_torch_load_in_the_package_reads_weights_only():
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start() : text.find(")", match.start()) + 1]
            calls.append((path.relative_to(PACKAGE).as_posix(), call))
    assert calls, "no torch.load found: the scan is broken"
    unsafe = [(path, call) for path, call in calls if "weights_only=True" not in call]
    assert not unsafe, unsafe


def test_the_loader_itself_refuses_before_running(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"format_version": 1, "weights": RunsACommand(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "hostile", "missing"])
def test_a_bad_predictor_file_is_one_line_naming_it(damage, tmp_path, capsys):
    from crystalforge.predictors.ensemble import PredictorEnsemble

    bad, marker = tmp_path / "predictor.pt", tmp_path / "ran"
    if damage == "truncated":
        bad.write_bytes((PACKAGE / "pretrained" / "mp_20-properties.pt").read_bytes()[:2000])
    elif damage == "hostile":
        torch.save({"format": 1, "members": RunsACommand(marker)}, bad)
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        PredictorEnsemble.load(bad)
    message = str(caught.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message, message
    assert not marker.exists()  # the hostile pickle never ran
    data = tiny_crystals()[1]
    write_structures([data], tmp_path / "one.cif")
    assert main(["predict", str(tmp_path / "one.cif"), "--predictor", str(bad), "--out", str(tmp_path / "p.csv")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], lines


def test_training_prints_lightnings_lines_once_and_only_with_verbose(good_model, tmp_path, capfd):
    pytest.importorskip("lightning")
    import logging

    config = _tiny_run_config(good_model, tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        for handler in handlers:  # let the CLI's logging set-up take effect, as in a fresh process
            root.removeHandler(handler)
        assert main(["-v", "train", str(config), "--out", str(tmp_path / "verbose")]) == 0
        err = capfd.readouterr().err
        assert err.count("GPU available") == 1, err
        root.setLevel(logging.WARNING)
        assert main(["train", str(config), "--out", str(tmp_path / "quiet")]) == 0
        err = capfd.readouterr().err
        assert "GPU available" not in err and "exists and is not empty" not in err, err
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)

"""The CLI's shape: examples in every help, api-only imports, clean exits for missing extras, --ray."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import crystalforge.api as api
from crystalforge.cli.main import build_parser, main

CLI_DIR = Path(__file__).resolve().parents[2] / "src" / "crystalforge" / "cli"
ALLOWED = {"crystalforge", "crystalforge.api", "crystalforge.config", "crystalforge.interrupt"}  # leaves: light imports


def _leaf_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [words]
    return [leaf for name, p in subs[0].choices.items() for leaf in _leaf_commands(p, (*words, name))]


LEAVES = _leaf_commands(build_parser())


def test_every_command_is_found():
    assert {" ".join(w) for w in LEAVES} == {
        "data list", "data info", "data prepare", "convert", "evaluate", "models", "train", "train-predictor",
        "generate", "csp", "refine", "predict", "design", "serve",
    }  # fmt: skip


@pytest.mark.parametrize("words", LEAVES, ids=" ".join)
def test_help_shows_an_example_of_that_command(words, capsys):
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out
    assert any(line.strip().startswith(f"crystalforge {' '.join(words)}") for line in out.splitlines())


def test_help_does_not_import_the_api():
    code = (
        "import sys\nfrom crystalforge.cli.main import main\n"
        "try:\n    main(['evaluate', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'crystalforge.api' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", sorted(CLI_DIR.glob("*.py")), ids=lambda p: p.name)
def test_cli_modules_import_only_the_api(path):
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        bad += [n for n in names if n.startswith("crystalforge") and n not in ALLOWED and ".cli" not in n]
    assert not bad, f"{path.name} bypasses crystalforge.api: {bad}"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_train_without_lightning_fails_before_loading_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lightning", None)  # import lightning -> ModuleNotFoundError
    monkeypatch.setattr(api, "train", lambda *a, **k: pytest.fail("api.train ran without lightning"))
    assert main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert "'lightning'" in err and 'crystalforge[train]"' in err and "missing.yaml" not in err


def test_missing_extra_from_any_command_is_exit_2(tmp_path, monkeypatch, capsys):
    def evaluate(*args, **kwargs):
        raise api.MissingDependencyError("chgnet", "relaxation")

    monkeypatch.setattr(api, "evaluate", evaluate)
    assert main(["evaluate", str(tmp_path), "--relax", "chgnet"]) == 2
    assert 'crystalforge[relax]"' in _one_line_error(capsys)


def test_bare_module_not_found_names_the_package(monkeypatch, capsys):
    def list_models():
        raise ModuleNotFoundError("No module named 'smact'", name="smact")

    monkeypatch.setattr(api, "list_models", list_models)
    assert main(["models"]) == 2
    err = _one_line_error(capsys)
    assert "'smact'" in err and "crystalforge models" in err and 'crystalforge[evaluation]"' in err


def test_missing_crystalforge_module_is_a_bug_not_an_extra(monkeypatch):
    def list_models():
        raise ModuleNotFoundError("No module named 'crystalforge.nope'", name="crystalforge.nope")

    monkeypatch.setattr(api, "list_models", list_models)
    with pytest.raises(ModuleNotFoundError):
        main(["models"])


def _capture_workers(monkeypatch, name: str, result: object) -> list:
    seen: list = []

    def fake(*args, **kwargs):
        seen.append(kwargs["workers"])
        return result

    monkeypatch.setattr(api, name, fake)
    return seen


class _Report:
    protocol: dict = {}  # noqa: RUF012

    def to_markdown(self) -> str:
        return "summary\n"


@pytest.fixture
def ray_present(monkeypatch):
    """Pretend Ray is installed (an ExecutorConfig with ray= checks for it when built)."""
    from crystalforge.core import extras

    monkeypatch.setattr(extras, "require", lambda module, feature, extra=None: None)


@pytest.mark.usefixtures("ray_present")
def test_evaluate_passes_workers_or_an_executor_config(tmp_path, monkeypatch):
    seen = _capture_workers(monkeypatch, "evaluate", _Report())
    assert main(["evaluate", str(tmp_path), "--workers", "3"]) == 0
    assert main(["evaluate", str(tmp_path), "--workers", "3", "--ray", "auto"]) == 0
    assert seen == [3, api.ExecutorConfig(workers=3, ray="auto")]


@pytest.mark.usefixtures("ray_present")
def test_data_prepare_passes_an_executor_config(monkeypatch, capsys):
    class Dataset(list):
        failures = ()

    seen = _capture_workers(monkeypatch, "load_dataset", Dataset())
    monkeypatch.setattr(api, "expected_rows", lambda *a, **k: 0)
    assert main(["data", "prepare", "perov_5", "--splits", "val", "--ray", "ray://head:10001", "--workers", "4"]) == 0
    assert main(["data", "prepare", "perov_5", "--splits", "val"]) == 0
    assert seen == [api.ExecutorConfig(workers=4, ray="ray://head:10001"), None]
    assert "perov_5/val: 0 structures cached" in capsys.readouterr().out


def test_ray_without_ray_installed_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["evaluate", str(tmp_path), "--workers", "2", "--ray", "auto"]) == 2
    assert "crystalforge[ray]" in _one_line_error(capsys)


def test_ray_with_bad_workers_is_a_clean_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--workers", "0", "--ray", "auto"]) == 2
    assert "workers must be >= 1" in _one_line_error(capsys)

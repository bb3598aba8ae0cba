"""Relaxers by name: truthful missing-MLIP errors before any work, make_relaxer, a light package import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crystalforge.core.extras import MissingDependencyError
from crystalforge.execution import ExecutorConfig
from crystalforge.relax import CachedRelaxer, get_relaxer, make_relaxer
from crystalforge.relax.chgnet_mlip import CHGNetCalculatorFactory, CHGNetStaticRelaxer, chgnet_relaxer

RELAX_EXTRA = r'pip install "crystalforge\[relax\]"'


@pytest.fixture
def no_chgnet(monkeypatch: pytest.MonkeyPatch) -> None:
    """chgnet as if it were not installed (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "chgnet", None)


@pytest.mark.usefixtures("no_chgnet")
@pytest.mark.parametrize(
    "build",
    [
        lambda: get_relaxer("chgnet"),
        lambda: get_relaxer("chgnet-static", workers=2),
        lambda: make_relaxer("chgnet", workers=4),
        lambda: chgnet_relaxer(static=True),
        lambda: CHGNetCalculatorFactory(),
        lambda: CHGNetStaticRelaxer(),
    ],
    ids=["get_relaxer", "get_relaxer_static", "make_relaxer", "chgnet_relaxer", "factory", "static_relaxer"],
)
def test_missing_chgnet_raises_at_construction_naming_the_extra(build) -> None:
    with pytest.raises(MissingDependencyError, match=RELAX_EXTRA) as info:
        build()
    assert isinstance(info.value, ImportError) and info.value.extra == "relax"


@pytest.mark.usefixtures("no_chgnet")
def test_missing_chgnet_writes_no_cache_file(tmp_path: Path) -> None:
    with pytest.raises(MissingDependencyError, match=RELAX_EXTRA):
        make_relaxer("chgnet", cache_file=tmp_path / "relax-chgnet.jsonl")
    assert not list(tmp_path.iterdir())


def test_unknown_relaxer_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: chgnet, chgnet-static"):
        make_relaxer("mace")


def test_make_relaxer_wraps_a_cache_and_takes_an_executor_config(tmp_path: Path) -> None:
    pytest.importorskip("chgnet")
    plain = make_relaxer("chgnet", workers=ExecutorConfig(workers=2))
    assert plain.name == "chgnet-0.3.0" and plain.settings["workers"] == 2
    cached = make_relaxer("chgnet-static", workers=3, cache_file=tmp_path / "r.jsonl")
    assert isinstance(cached, CachedRelaxer) and cached.settings["mode"] == "static"
    assert cached.settings["workers"] == 3 and cached.cache.path == tmp_path / "r.jsonl"
    with cached:  # closes the wrapped relaxer's (unstarted) workers
        pass


def test_importing_the_package_is_light() -> None:
    code = (
        "import sys; import crystalforge.relax as r; "
        "heavy = [m for m in ('chgnet', 'ase', 'crystalforge.relax.ase_relaxer', 'crystalforge.relax.chgnet_mlip', "
        "'crystalforge.relax.registry', 'crystalforge.relax.cache') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "r.RelaxResult; r.relax_candidates; assert 'crystalforge.relax.chgnet_mlip' not in sys.modules; "
        "assert set(r.__all__) <= set(dir(r)); r.make_relaxer; assert 'crystalforge.relax.registry' in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr

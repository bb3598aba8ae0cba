"""The package layout's import rules (pyproject [tool.importlinter]) and import hygiene."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_boundaries_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [exe, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_is_light_and_side_effect_free():
    code = (
        "import sys, os; before = dict(os.environ); import crystalforge; "
        "assert 'pymatgen' not in sys.modules and 'crystalforge.data' not in sys.modules; "
        "assert dict(os.environ) == before; print(crystalforge.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_public_api_names():
    import crystalforge

    for name in ("Crystal", "CrystalBatch", "load_dataset", "read_structures", "write_structures"):
        assert hasattr(crystalforge, name)
    assert set(crystalforge.__all__) == set(crystalforge._EXPORTS) | {"__version__"}
    assert callable(crystalforge.Crystal.from_pymatgen) and callable(crystalforge.Crystal.to_pymatgen)

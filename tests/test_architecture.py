"""The package's structure, checked: layering and import contracts, no import circles, no ``Any`` at
a module boundary, rooms of one job (file sizes), mypy clean, and import hygiene.

Every tool runs through the interpreter running the tests (never whatever is first on PATH).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "crystalforge"

MAX_LINES = 400
SIZE_REASON = re.compile(r"\(About \d+ lines: [^)]+\)")
"""A module longer than ``MAX_LINES`` says why in its docstring: ``(About 500 lines: <reason>)``."""

ANY_ALLOWED = {
    # Lightning's own hook signatures
    "training/lightning.py:LitGenerative.on_train_batch_end(outputs)",
    "training/lightning.py:LitGenerative.configure_optimizers(return)",
}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, check=False)


def test_import_contracts_hold():
    pytest.importorskip("importlinter", reason="import-linter is a test dependency: pip install -e '.[test]'")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = _run(["-c", code, "--config", str(REPO / "pyproject.toml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_import_circles():
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (a test dependency)")
    graph = grimp.build_graph("crystalforge", include_external_packages=False)
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} -> {imported} -> ... -> {module}")
    assert not cycles, "import circles:\n" + "\n".join(cycles[:20])


def test_mypy_is_clean():
    pytest.importorskip("mypy", reason="mypy is a test dependency: pip install -e '.[test]'")
    result = _run(["-m", "mypy", "--config-file", str(REPO / "pyproject.toml")])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_rooms_of_one_job():
    too_long = []
    for path in _modules():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and not SIZE_REASON.search(doc.replace("\n", " ")):
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines and no '(About N lines: reason)'")
    assert not too_long, "\n".join(too_long)


def _public_annotations(tree: ast.Module) -> list[tuple[str, str, ast.expr]]:
    """``(qualified name, parameter, annotation)`` of module-level functions and class methods."""
    out = []
    scopes: list[tuple[str, ast.AST]] = [("", tree)]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            scopes.append((node.name + ".", node))
    for prefix, scope in scopes:
        for fn in getattr(scope, "body", []):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name.startswith("_"):
                continue
            args = fn.args
            params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
            if args.vararg is not None:
                params.append(args.vararg)
            out += [(prefix + fn.name, a.arg, a.annotation) for a in params if a.annotation is not None]
            if fn.returns is not None:
                out.append((prefix + fn.name, "return", fn.returns))
    return out


def test_no_any_at_a_module_boundary():
    found = []
    for path in _modules():
        for name, param, annotation in _public_annotations(ast.parse(path.read_text())):
            text = ast.unparse(annotation)
            if re.fullmatch(r"Any|.*\| Any|Any \|.*", text):
                key = f"{path.relative_to(PACKAGE)}:{name}({param})"
                if key not in ANY_ALLOWED:
                    found.append(f"{key}: {text}")
    assert not found, "public signatures typed Any:\n" + "\n".join(found)


def test_import_is_light_and_side_effect_free():
    code = (
        "import sys, os; before = dict(os.environ); import crystalforge; "
        "assert 'pymatgen' not in sys.modules and 'crystalforge.data' not in sys.modules; "
        "import crystalforge.relax; assert 'chgnet' not in sys.modules and 'ase' not in sys.modules; "
        "assert dict(os.environ) == before; print(crystalforge.__version__)"
    )
    out = _run(["-c", code])
    assert out.returncode == 0, out.stderr


def test_public_api_names():
    import crystalforge

    for name in ("Crystal", "CrystalBatch", "load_dataset", "read_structures", "write_structures"):
        assert hasattr(crystalforge, name)
    assert set(crystalforge.__all__) == set(crystalforge._EXPORTS) | {"__version__"}
    assert callable(crystalforge.Crystal.from_pymatgen) and callable(crystalforge.Crystal.to_pymatgen)


def test_api_is_a_facade():
    lines = (PACKAGE / "api.py").read_text().count("\n")
    assert lines <= 150, f"api.py has {lines} lines; it re-exports and delegates, the work lives in the packages"

"""Imports run one way: stages and tools use the library; nn never imports data handling or reports;
infra imports nothing else of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mnist_classification"
#: subpackage -> the other subpackages it may import
ALLOWED = {
    "infra": set(),
    "nn": {"infra"},
    "data": {"infra"},
    "reports": {"infra", "data", "nn"},
    "tools": {"infra", "data", "nn", "reports"},
}


def _imported_subpackages(path: Path) -> set[str]:
    """Subpackages of mnist_classification that the module at ``path`` imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import; the package uses absolute imports"
            names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE.name and len(parts) > 1 and parts[1] in ALLOWED:
                found.add(parts[1])
    return found


def test_every_module_lives_in_a_known_subpackage():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside the subpackages: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(ALLOWED)


@pytest.mark.parametrize("subpackage", sorted(ALLOWED))
def test_imports_run_one_way(subpackage):
    for module in sorted((PACKAGE / subpackage).glob("*.py")):
        wrong = _imported_subpackages(module) - ALLOWED[subpackage] - {subpackage}
        assert not wrong, f"{module.relative_to(ROOT)} imports {sorted(wrong)}, which {subpackage}/ must not use"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from mnist_classification.reports.metrics import confusion_matrix\n")
    assert _imported_subpackages(module) == {"reports"}


def test_no_module_shadows_the_standard_library():
    import sys

    names = {p.stem for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    shadowing = sorted(names & set(sys.stdlib_module_names))
    assert not shadowing, f"package modules named like standard-library modules: {shadowing}"

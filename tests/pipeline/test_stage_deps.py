"""Every stage of every pipeline lists, as DVC deps, each package module it runs, so editing one reruns the stage."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "mnist_classification"
#: Every pipeline of the project: the root one and the committee's.
DVC_FILES = ("dvc.yaml", "committee/dvc.yaml")


def _stages() -> dict[str, tuple[str, list[str]]]:
    """``FILE:NAME`` -> (the stage's script, its deps), paths relative to the project root (a ``wdir`` applied).

    A ``matrix`` stage is one entry: its members share the script and deps.
    """
    stages = {}
    for dvc_file in DVC_FILES:
        for name, stage in yaml.safe_load((ROOT / dvc_file).read_text())["stages"].items():
            wdir = (ROOT / dvc_file).parent / stage.get("wdir", ".")

            def from_root(path: str) -> str:
                return Path(os.path.normpath(wdir / path)).relative_to(ROOT).as_posix()

            script = next(word for word in stage["cmd"].split() if word.endswith(".py"))
            deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage["deps"]]
            stages[f"{dvc_file}:{name}"] = (from_root(script), [from_root(dep) for dep in deps])
    return stages


STAGES = _stages()


def _package_imports(path: Path) -> set[str]:
    """Package modules (as repo-relative paths) that ``path`` imports directly, at any depth in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import; the package uses absolute imports"
            base = node.module or ""
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                parts = name.split(".")
                file = ROOT.joinpath(*parts[:-1], parts[-1] + ".py")
                if file.is_file():
                    found.add(file.relative_to(ROOT).as_posix())
                # Importing a module runs the __init__.py of every package above it (and of a package itself).
                for depth in range(1, len(parts) + 1):
                    init = ROOT.joinpath(*parts[:depth], "__init__.py")
                    if init.is_file():
                        found.add(init.relative_to(ROOT).as_posix())
    return found


def _closure(script: str) -> set[str]:
    todo, seen = [script], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_package_imports(ROOT / current) - seen)
    return seen


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_runs(name):
    script, deps = STAGES[name]
    deps = set(deps)
    runs = _closure(script)
    missing = sorted(runs - deps)
    assert not missing, f"stage {name!r} runs {missing} but does not list them in deps"
    unused = sorted(d for d in deps if d.startswith(PACKAGE + "/") and d not in runs)
    assert not unused, f"stage {name!r} lists {unused} in deps but never imports them"

"""dvc.yaml, the one definition of the stage graph: every stage's deps cover the code it runs.

DVC does not follow imports, so a stage whose deps miss a module it imports would not re-run when
that module changes, and a run's outputs would no longer match its code. Each stage's module is
followed through its ``pipeline`` imports (statically), and every module reached must sit under one
of the stage's deps.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.project import built_stages, declared_options, declared_paths, dvc_stages
from pipeline.stages import STAGES, get_stage

ROOT = Path(__file__).resolve().parents[1]
# the stage table: every stage imports it, none depends on what it says
EXEMPT = {"pipeline/stages/__init__.py"}


def _module_file(module: str) -> Path | None:
    for candidate in (ROOT / (module.replace(".", "/") + ".py"), ROOT / module.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return found


def _is_marker(path: Path) -> bool:
    """A package ``__init__.py`` holding only its docstring (and assignments like ``__version__``): no code."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(node, (ast.Expr, ast.Assign)) for node in body)


def _code_of(module: str) -> set[str]:
    """Every pipeline source file a module imports, transitively (package __init__ files included)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _imported(path)
    files = (_module_file(m) for m in seen)
    return {str(f.relative_to(ROOT)) for f in files if f is not None and not _is_marker(f)}


@pytest.mark.parametrize("stage", [spec.name for spec in STAGES])
def test_stage_deps_cover_every_module_it_imports(stage):
    deps = declared_paths(ROOT, stage, "deps")
    missing = [f for f in sorted(_code_of(get_stage(stage).module) - EXEMPT)
               if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]
    assert not missing, f"dvc.yaml stage {stage}: deps miss {missing}"


def test_every_stage_is_declared_with_its_own_command():
    assert built_stages(ROOT) == [spec.name for spec in STAGES] == list(dvc_stages(ROOT))
    for spec in STAGES:
        assert dvc_stages(ROOT)[spec.name]["cmd"].startswith(f"tlops {spec.name} ")
        assert f"pipeline/stages/{spec.name}.py" in declared_paths(ROOT, spec.name, "deps")
        assert declared_options(ROOT, spec.name)  # paths come from the command line

"""Which parts of pipeline/ may import which: read from the source (every ``import``, at any depth), so a
forbidden import fails here before it becomes an import cycle or a second way of doing one thing."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports (absolute imports; ``from a import b`` counts as ``a.b`` and ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def _imported_by(part: str) -> dict[str, set[str]]:
    """File (relative to the root) -> the pipeline modules it imports, for a package or module of pipeline/."""
    base = ROOT / "pipeline" / part
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    return {str(f.relative_to(ROOT)): {m for m in _imports(f) if m.startswith("pipeline.")} for f in files}


def _importers(part: str, module: str) -> list[str]:
    """The files of ``part`` that import ``module`` or anything inside it."""
    return [f for f, mods in _imported_by(part).items() if any(m == module or m.startswith(module + ".") for m in mods)]


def test_registry_and_runs_never_import_each_other():
    # runs/publish.py once imported registry.S3Store while registry.py imported runs/naming.py (run names)
    runs_to_registry = _importers("runs", "pipeline.registry")
    registry_to_runs = _importers("registry", "pipeline.runs")
    assert not (runs_to_registry and registry_to_runs), f"a cycle: {runs_to_registry} and {registry_to_runs}"


def test_the_parts_of_pipeline_import_one_another_without_a_cycle():
    """Each package (or top module) of pipeline/ is a node, an import of another part an edge: no cycle, so each
    part can be read and tested with only what is below it (registry -> runs -> promotion -> registry was one)."""
    parts = sorted({p.stem if p.is_file() else p.name for p in (ROOT / "pipeline").iterdir()
                    if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()})
    edges = {part: {m.split(".")[1] for mods in _imported_by(part).values() for m in mods} - {part} for part in parts}
    state: dict[str, str] = {}

    def cycle_from(part: str, path: list[str]) -> list[str] | None:
        state[part] = "open"
        for below in sorted(edges.get(part, ())):
            if state.get(below) == "open":
                return path + [part, below]
            if below not in state and (found := cycle_from(below, path + [part])):
                return found
        state[part] = "done"
        return None

    cycles = [c for part in parts if part not in state and (c := cycle_from(part, []))]
    assert not cycles, f"an import cycle between parts of pipeline/: {' -> '.join(cycles[0])}"


def test_common_imports_nothing_above_it():
    above = {f: sorted(m for m in mods if not m.startswith("pipeline.common"))
             for f, mods in _imported_by("common").items()}
    assert not {f: mods for f, mods in above.items() if mods}, "pipeline/common must sit below every other part"


def test_boto3_clients_are_made_in_pipeline_common_s3_only():
    files = [f for folder in ("pipeline", "flows") for f in sorted((ROOT / folder).rglob("*.py"))]
    makers = [str(f.relative_to(ROOT)) for f in files if "boto3" in {m.split(".")[0] for m in _imports(f)}]
    assert makers == ["pipeline/common/s3.py"], "build S3 clients with pipeline.common.s3.s3_client"

"""Shape of the code at two git revisions: how many modules import the shard format, the longest functions in
pipeline/, and the import cycles between the parts of pipeline/ (issue 26's figures).

Run: ``python -m bench.bench_codebase [--base REV] [--head REV]`` (default: HEAD against HEAD~1). Reads the files
from git (``git show``), so neither revision needs checking out; one JSON line a revision, then the ratios.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

from bench.report import BenchReport

ROOT = Path(__file__).resolve().parents[1]
SHARDS = "pipeline.data.shards"
LONG = 40  # lines: a function longer than this is counted


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def _sources(rev: str) -> dict[str, ast.Module]:
    files = [f for f in _git("ls-tree", "-r", "--name-only", rev, "pipeline", "flows").split() if f.endswith(".py")]
    return {f: ast.parse(_git("show", f"{rev}:{f}"), f) for f in files}


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def _cycles(trees: dict[str, ast.Module]) -> int:
    """How many parts of pipeline/ (a package or a top module) sit on an import cycle with another part."""
    edges: dict[str, set[str]] = {}
    for name, tree in trees.items():
        parts = Path(name).with_suffix("").parts
        if parts[0] != "pipeline" or len(parts) < 2 or parts[1] == "__init__":
            continue
        imported = {m.split(".")[1] for m in _imports(tree) if m.startswith("pipeline.")}
        edges.setdefault(parts[1], set()).update(imported - {parts[1]})

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += edges.get(node, ())
        return False

    return sum(any(reaches(below, part) for below in edges[part]) for part in edges)


def figures(rev: str) -> dict:
    trees = _sources(rev)
    importers = sorted(f for f, tree in trees.items()
                       if any(m == SHARDS or m.startswith(SHARDS + ".") for m in _imports(tree)))
    functions = sorted(((node.end_lineno - node.lineno + 1, f"{f}:{node.lineno} {node.name}")
                        for f, tree in trees.items() if f.startswith("pipeline/")
                        for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))),
                       reverse=True)
    return {"rev": _git("rev-parse", "--short", rev).strip(), "shards_importers": len(importers),
            "longest_function_lines": functions[0][0], "longest_function": functions[0][1],
            "next_longest": [f"{n} {where}" for n, where in functions[1:4]],
            f"functions_over_{LONG}_lines": sum(n > LONG for n, _ in functions),
            "parts_on_import_cycles": _cycles(trees)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="the reference revision")
    parser.add_argument("--head", default="HEAD", help="the revision measured against it")
    args = parser.parse_args(argv)
    report = BenchReport("bench_codebase")
    base, head = figures(args.base), figures(args.head)
    report.emit(kind="base", **base)
    report.emit(kind="head", **head)
    compared = ("shards_importers", "longest_function_lines", f"functions_over_{LONG}_lines")
    report.emit(kind="ratio", **{key: round(head[key] / base[key], 3) if base[key] else None for key in compared})
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Docs and docstrings name only paths that exist: a module moved or renamed without its mentions fails here.

Scans every tracked Markdown file and the docstrings of every tracked Python module (module, class and function
docstrings) for repository paths (``pipeline/...``, ``flows/...``, ``docs/...``, ``tests/...`` and the other
top-level folders, plus ``data/shards.py``-style paths inside ``pipeline/``) and checks each exists in the
checkout or is a generated output git ignores (``bench/results/``, ``runs/``).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_TOP = ("pipeline", "flows", "tests", "bench", "docs", "infra", ".ci")
# a path: a top-level folder of ours, then path characters; or any relative path ending in .py
# (a glob or a placeholder such as bench/bench_*.py or runs/<run>/ is not a path)
_PATH = re.compile(r"(?<![\w./<-])((?:%s)/[\w./-]*[\w/]|[\w-]+(?:/[\w-]+)+\.py)(?![\w*<{])"
                   % "|".join(re.escape(t) for t in _TOP))


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout.split()
    return [ROOT / p for p in out if (ROOT / p).is_file()]


def _docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return [doc for doc in (ast.get_docstring(n, clean=False) for n in nodes) if doc]


def _exists(name: str) -> bool:
    name = name.rstrip("/.")
    candidates = [ROOT / name] if name.startswith(_TOP) else [ROOT / name, ROOT / "pipeline" / name]
    if any(c.exists() for c in candidates):
        return True
    # a generated output named by its place (ignored by git), e.g. bench/results/
    # (as a file or as a folder: a folder pattern such as bench/results/ matches only the name with its slash)
    return any(subprocess.run(["git", "check-ignore", "-q", "--no-index", form], cwd=ROOT).returncode == 0
               for form in (name, name + "/"))


def named_paths() -> dict[str, set[str]]:
    """Every path each doc and docstring names, by file."""
    found: dict[str, set[str]] = {}
    texts = [(p, p.read_text()) for p in _tracked("*.md")]
    texts += [(p, "\n".join(_docstrings(p))) for p in _tracked("*.py")]
    for path, text in texts:
        names = {m.group(1) for m in _PATH.finditer(text.replace("**", " "))}  # Markdown bold is not a glob
        if names:
            found[str(path.relative_to(ROOT))] = names
    return found


def test_every_path_named_in_docs_and_docstrings_exists():
    missing = {f"{where}: {name}" for where, names in named_paths().items() for name in names if not _exists(name)}
    assert not missing, "paths named but not in the checkout:\n" + "\n".join(sorted(missing))


@pytest.mark.parametrize("text, found", [
    ("see pipeline/data/shards.py and docs/drift.md.", {"pipeline/data/shards.py", "docs/drift.md"}),
    ("the module data/shards.py holds it", {"data/shards.py"}),
    ("`tests/support/`, runs/<run>/x and bench/bench_*.py", {"tests/support/"}),
])
def test_the_scanner_finds_paths_in_prose(text, found):
    assert {m.group(1) for m in _PATH.finditer(text)} == found


def test_a_missing_path_is_reported():
    assert not _exists("pipeline/no_such_module.py")
    assert _exists("pipeline/config.py") and _exists("data/shards.py") and _exists("bench/results/")


def test_every_package_docstring_maps_each_of_its_modules():
    """A package's docstring is its module map: a module added, moved or renamed without its line fails here (the
    stage modules are mapped by the stage table instead)."""
    from pipeline.stages import STAGES

    stage_modules = {spec.module.rsplit(".", 1)[1] + ".py" for spec in STAGES}
    unmapped = []
    for init in sorted((ROOT / "pipeline").rglob("__init__.py")):
        package = init.parent
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", doc)) | set(re.findall(r"\b([a-z_0-9]+)/", doc))
        modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"} - stage_modules
        packages = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
        unmapped += [f"{package.relative_to(ROOT)}: {name}" for name in sorted((modules | packages) - named)]
    assert not unmapped, "modules their package's docstring does not name:\n" + "\n".join(unmapped)

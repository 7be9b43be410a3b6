"""The test suite's layout (docs/development.md): one file per subject named ``test_<area>_<subject>.py``, and
what several files share lives in tests/support/, never imported from another test file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the packages of pipeline/ (and its top modules) a test can be about, plus the suite's own areas
AREAS = sorted({p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").is_file()} - {"stages"}
               | {"registry", "config", "cli", "project", "stage", "flows", "infra"})
_NAME = re.compile(r"test_(%s)_[a-z0-9_]+\.py" % "|".join(AREAS))


def test_every_test_file_is_named_for_its_area_and_subject():
    misnamed = [p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if not _NAME.fullmatch(p.name)]
    assert not misnamed, f"test files not named test_<area>_<subject>.py (areas: {', '.join(AREAS)}): {misnamed}"


def test_no_test_file_imports_another():
    imports = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and re.fullmatch(r"tests\.test_\w+", node.module or ""):
                imports.setdefault(str(path.relative_to(ROOT)), []).append(node.module)
    assert not imports, f"shared test code belongs in tests/support/: {imports}"


def test_the_area_pattern_refuses_a_bare_subject():
    assert _NAME.fullmatch("test_stage_ingest.py") and _NAME.fullmatch("test_drift_detector.py")
    assert not _NAME.fullmatch("test_ingest.py") and not _NAME.fullmatch("test_stage.py")

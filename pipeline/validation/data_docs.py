"""Great Expectations Data Docs made readable offline and honest about the gate's status.

GX 1.x pages load Bootstrap, jQuery, Font Awesome and Vega from public CDNs, and the index builds its
list of validation results with a script: offline the pages render unstyled and the index's list is
empty. After the checkpoint wrote them, each page loses its CDN tags and its scripts (all of them need
those libraries) and gets the gate's small inline stylesheet and a note with the gate's status and a
link to report.html; the index's note lists the other pages as plain links. GX's "Status: Failed" (any
failed expectation, warnings included) becomes the gate's status. Links to GX's online docs stay: they
load nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from pipeline.common.html import render
from pipeline.validation.report import REPORT_PAGE, status_label

__all__ = ["make_offline"]
_CDN_TAGS = re.compile(r'<(?:link|img)\b[^>]*\b(?:href|src)="https?://[^"]*"[^>]*>', re.I)
_SCRIPTS = re.compile(r"<script\b[^>]*>.*?</script>", re.I | re.S)
_CSS_URLS = re.compile(r"""url\(\s*['"]?https?://[^)]*\)""", re.I)
_GX_STATUS = re.compile(r"(Status:\s*</span>)\s*<i\b[^>]*>\s*</i>\s*(?:Failed|Succeeded)")
_BODY = re.compile(r"<body\b[^>]*>", re.I)
_KINDS = {"expectations": "expectation suite", "validations": "validation result"}


def make_offline(docs_dir: Path, metrics: Mapping[str, Any]) -> list[Path]:
    """Rewrite every HTML page of the Data Docs in place (see the module's docstring).

    Args:
        docs_dir: the Data Docs folder (its parent holds report.html).
        metrics: the gate's metrics (``status`` is used).
    Returns:
        The pages rewritten.
    """
    status = metrics["status"]
    css = render(__file__, "report.css")
    pages = sorted(docs_dir.rglob("*.html"))
    index = docs_dir / "index.html"
    for page in pages:
        html = _SCRIPTS.sub("", _CDN_TAGS.sub("", page.read_text(encoding="utf-8")))
        html = _CSS_URLS.sub("none", html)
        html = _GX_STATUS.sub(lambda m: f"{m.group(1)} {status_label(status)} (the gate's status)", html)
        listed = [_link(other, docs_dir, status) for other in pages if other != index] if page == index else []
        note = render(__file__, "data_docs_note.html.j2", filters={"status_label": status_label}, status=status,
                      report=_relative(docs_dir.parent / REPORT_PAGE, page), pages=listed)
        html = html.replace("</head>", f"<style>\n{css}</style>\n</head>", 1)
        html = _BODY.sub(lambda m: m.group(0) + "\n" + note, html, count=1)  # noqa: B023 (called within this iteration)
        page.write_text(html, encoding="utf-8")
    return pages


def _relative(target: Path, page: Path) -> str:
    return Path(os.path.relpath(target, page.parent)).as_posix()


def _link(page: Path, docs_dir: Path, status: str) -> dict[str, str]:
    """The index's plain link to one page, labelled by what GX keeps in its folder."""
    relative = page.relative_to(docs_dir)
    parts = relative.parts
    label = f"{_KINDS.get(parts[0], parts[0])} {page.stem}"
    if parts[0] == "validations":  # validations/<suite>/<run name>/<run time>/<batch>.html
        label = f"{label} of suite {parts[1]}, run {parts[-2]} (gate status: {status_label(status)})"
    return {"href": relative.as_posix(), "label": label}

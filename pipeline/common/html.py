"""HTML reports from Jinja2 templates kept beside the code that fills them, written atomically.

Templates live in a ``templates/`` folder next to their package's module; values are autoescaped,
and PNGs are embedded as data URIs so a report is one self-contained file.
"""

from __future__ import annotations

import base64
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from pipeline.common.io import write_text

__all__ = ["render", "write_html", "png_data_uri"]


@lru_cache(maxsize=None)
def _environment(folder: str) -> Environment:
    env = Environment(loader=FileSystemLoader(folder), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["png"] = png_data_uri
    return env


def png_data_uri(path: str | os.PathLike | None) -> str:
    """A PNG file as a ``data:`` URI (empty for a missing file, so a figure that was not drawn is skipped)."""
    if path is None or not Path(path).is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render(module_file: str, template: str, filters: dict[str, Callable] | None = None, **context: Any) -> str:
    """Render ``templates/<template>`` found beside ``module_file`` (pass ``__file__``).

    Args:
        module_file: the calling module's ``__file__``.
        template: the template's file name.
        filters: extra Jinja2 filters the template uses (name -> function).
        context: the template's variables.
    Returns:
        The HTML.
    """
    env = _environment(str(Path(module_file).resolve().parent / "templates"))
    env.filters.update(filters or {})
    return env.get_template(template).render(**context)


def write_html(target: str | os.PathLike, module_file: str, template: str,
               filters: dict[str, Callable] | None = None, **context: Any) -> Path:
    """Render a template (see :func:`render`) and write it to ``target`` atomically; returns the path."""
    return write_text(target, render(module_file, template, filters, **context))

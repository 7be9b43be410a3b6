"""Links to a run's HTML reports that a browser follows from the http(s) dashboard.

Browsers refuse ``file://`` links on an http page, so a link artifact must be a web URL. Two ways, in
this order:

- ``orchestrate.reports_store`` (``s3://bucket/prefix``): the run's reports/ folder is uploaded to
  ``<prefix>/<run name>/reports/`` and each page is linked by a presigned URL, valid for
  ``orchestrate.report_link_days`` (at most 7, SigV4's limit); the reports are self-contained HTML, so
  one signed page shows whole;
- ``orchestrate.reports_url``: the base URL of a web server that serves ``orchestrate.runs_dir`` (the
  compose stack's reports service, or the one ``make ui`` starts): links are
  ``<base>/<run name>/reports/<page>``.

``TLOPS_REPORTS_STORE`` / ``TLOPS_REPORTS_URL`` override the params: they describe the machine that
serves, not the run. With neither, the links stay ``file://`` (a local run read on the same machine).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from pipeline.common.logs import get_logger
from pipeline.config import OrchestrateParams
from pipeline.registry import S3Store
from pipeline.runs.summary import html_reports

__all__ = ["publish_reports", "STORE_ENV", "URL_ENV"]
log = get_logger(__name__)
STORE_ENV, URL_ENV = "TLOPS_REPORTS_STORE", "TLOPS_REPORTS_URL"
_MAX_LINK_S = 7 * 24 * 3600  # SigV4 presigned URLs expire within a week at most


def publish_reports(workspace: Path, name: str, limits: OrchestrateParams) -> list[tuple[str, str]]:
    """Upload the run's reports where configured and return (label, URL) for each HTML page.

    Args:
        workspace: the run's worktree (its reports/ folder).
        name: the run name (the folder in the store or under the web server's root).
        limits: the run's orchestrate params (reports_store, reports_url, report_link_days).
    Returns:
        (page relative to reports/, URL) pairs; http(s) when a store or web server is configured.
    """
    pages = html_reports(workspace)
    store_uri = os.environ.get(STORE_ENV) or limits.reports_store
    base_url = os.environ.get(URL_ENV) or limits.reports_url
    if store_uri:
        store = S3Store(store_uri)
        store.put_dir(f"{name}/reports", workspace / "reports")
        seconds = min(int(limits.report_link_days * 86400), _MAX_LINK_S)
        log.info("reports of run %s uploaded to %s/%s/reports", name, store_uri.rstrip("/"), name)
        return [(page, store.s3.generate_presigned_url(
            "get_object", Params={"Bucket": store.bucket, "Key": store.key(f"{name}/reports/{page}")},
            ExpiresIn=seconds)) for page in pages]
    if base_url:
        return [(page, f"{base_url.rstrip('/')}/{quote(name)}/reports/{quote(page)}") for page in pages]
    return [(page, (workspace / "reports" / page).resolve().as_uri()) for page in pages]

"""Links to a run's HTML reports that a browser follows from the http(s) dashboard.

Browsers refuse ``file://`` links on an http page, so a link artifact should be a web URL. A link never
carries the pipeline's own credentials (a presigned URL names the signer's access key id and, with
temporary credentials, its session token, and link artifacts are readable by everyone on the dashboard):

- ``orchestrate.reports_store`` (``s3://bucket/prefix``): the run's reports/ folder is uploaded to
  ``<prefix>/<run name>/reports/``. Each page is then linked by a URL presigned by the read-only identity
  ``orchestrate.report_link_profile`` (an AWS profile), valid for ``orchestrate.report_link_days`` (at
  most 7, SigV4's limit); the reports are self-contained HTML, so one signed page shows whole. Without
  that profile the links go through ``reports_url`` when it is set, else they are the plain
  ``s3://bucket/key`` locations, and one log line says how to get clickable links;
- ``orchestrate.reports_url``: the base URL of a web server that serves ``orchestrate.runs_dir`` (the
  compose stack's reports service, or the one ``make ui`` starts): links are
  ``<base>/<run name>/reports/<page>``.

``TLOPS_REPORTS_STORE`` / ``TLOPS_REPORTS_URL`` override the params: they describe the machine that
serves, not the run. With neither, the links stay ``file://`` (a local run read on the same machine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipeline.common.logs import get_logger
from pipeline.common.s3 import S3Store, aws_session, s3_client
from pipeline.config import OrchestrateParams
from pipeline.runs.summary import html_reports

__all__ = ["publish_reports", "STORE_ENV", "URL_ENV"]
log = get_logger(__name__)
STORE_ENV, URL_ENV = "TLOPS_REPORTS_STORE", "TLOPS_REPORTS_URL"
_MAX_LINK_S = 7 * 24 * 3600  # SigV4 presigned URLs expire within a week at most


def _link_signer(profile: str) -> Any:
    """An S3 client of the read-only profile, refused when it signs as the pipeline itself."""
    key = "orchestrate.report_link_profile"
    # the pipeline signs with the default chain (environment, AWS_PROFILE...), as S3Store's client does
    credentials, own = aws_session(profile, key).get_credentials(), aws_session().get_credentials()
    if credentials is None:
        raise ValueError(f"{key} = {profile!r}: the profile has no credentials")
    if own is not None and credentials.access_key == own.access_key:
        raise ValueError(f"{key} = {profile!r} signs with the pipeline's own access key: give it a separate "
                         "read-only identity, or leave it unset")
    return s3_client(profile=profile, profile_key=key)


def publish_reports(workspace: Path, name: str, limits: OrchestrateParams) -> list[tuple[str, str]]:
    """Upload the run's reports where configured and return (label, URL) for each HTML page.

    Args:
        workspace: the run's worktree (its reports/ folder).
        name: the run name (the folder in the store or under the web server's root).
        limits: the run's orchestrate params (reports_store, report_link_profile, reports_url, report_link_days).
    Returns:
        (page relative to reports/, URL) pairs: http(s) when a signing profile or a web server is configured,
        ``s3://`` locations for a store without either, else ``file://``.
    """
    pages = html_reports(workspace)
    store_uri = os.environ.get(STORE_ENV) or limits.reports_store
    base_url = os.environ.get(URL_ENV) or limits.reports_url
    if store_uri:
        store = S3Store(store_uri)
        store.put_dir(f"{name}/reports", workspace / "reports")
        log.info("reports of run %s uploaded to %s/%s/reports", name, store_uri.rstrip("/"), name)
        if limits.report_link_profile:
            signer = _link_signer(limits.report_link_profile)
            seconds = min(int(limits.report_link_days * 86400), _MAX_LINK_S)
            return [(page, signer.generate_presigned_url(
                "get_object", Params={"Bucket": store.bucket, "Key": store.key(f"{name}/reports/{page}")},
                ExpiresIn=seconds)) for page in pages]
        if not base_url:
            log.info("report links of run %s are s3:// locations: set orchestrate.report_link_profile to an AWS "
                     "profile that may only read %s for presigned links, or orchestrate.reports_url to a web "
                     "server of the runs", name, store_uri)
            return [(page, f"s3://{store.bucket}/{store.key(f'{name}/reports/{page}')}") for page in pages]
    if base_url:
        return [(page, f"{base_url.rstrip('/')}/{quote(name)}/reports/{quote(page)}") for page in pages]
    return [(page, (workspace / "reports" / page).resolve().as_uri()) for page in pages]

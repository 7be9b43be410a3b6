"""Report links a browser follows from the dashboard: presigned S3 URLs, a web server's URLs, or files."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from pipeline.config import OrchestrateParams
from pipeline.runs.publish import publish_reports
from tests.support.s3server import make_client


def _workspace(tmp_path: Path) -> Path:
    reports = tmp_path / "run" / "reports"
    (reports / "evaluate").mkdir(parents=True)
    (reports / "evaluate" / "report.html").write_text("<html><body>verdict: gain</body></html>")
    (reports / "evaluate" / "curves.png").write_bytes(b"\x89PNG not really")
    (reports / "validate" / ".gx").mkdir(parents=True)
    (reports / "validate" / ".gx" / "index.html").write_text("<html>Data Docs internals</html>")
    return tmp_path / "run"


def test_presigned_links_open_the_uploaded_reports(tmp_path: Path, s3_endpoint: str, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    # the links are signed by a separate read-only identity (tests/test_flows_access.py: never the pipeline's)
    (tmp_path / "credentials").write_text("[reports-reader]\naws_access_key_id = reader\naws_secret_access_key = r\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    make_client(s3_endpoint).create_bucket(Bucket="reports")
    links = publish_reports(_workspace(tmp_path), "run-7", OrchestrateParams(reports_store="s3://reports/tlops",
                                                                             report_link_profile="reports-reader"))
    assert [label for label, _ in links] == ["evaluate/report.html"]
    url = links[0][1]
    assert url.startswith(s3_endpoint) and ("X-Amz-Signature=" in url or "Signature=" in url)
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and page.text == "<html><body>verdict: gain</body></html>"
    assert page.headers["content-type"].startswith("text/html")  # rendered, not downloaded
    keys = {o["Key"] for o in make_client(s3_endpoint).list_objects_v2(Bucket="reports")["Contents"]}
    assert "tlops/run-7/reports/evaluate/curves.png" in keys  # the whole folder, pictures included
    unsigned = httpx.get(url.split("?")[0], timeout=30)
    assert unsigned.status_code == 403  # the link carries the permission, the bucket stays private


def test_links_through_the_report_web_server_and_files(tmp_path: Path, monkeypatch):
    workspace = _workspace(tmp_path)
    served = publish_reports(workspace, "run 8", OrchestrateParams(reports_url="https://reports.example/"))
    assert served == [("evaluate/report.html", "https://reports.example/run%208/reports/evaluate/report.html")]
    monkeypatch.setenv("TLOPS_REPORTS_URL", "http://127.0.0.1:8080")  # the machine's server wins over params
    assert publish_reports(workspace, "r", OrchestrateParams(reports_url="https://x"))[0][1].startswith(
        "http://127.0.0.1:8080/r/")
    monkeypatch.delenv("TLOPS_REPORTS_URL")
    local = publish_reports(workspace, "r", OrchestrateParams())
    assert local[0][1] == (workspace / "reports" / "evaluate" / "report.html").resolve().as_uri()


def test_link_lifetime_is_bounded_by_sigv4(tmp_path: Path):
    with pytest.raises(ValueError, match="report_link_days"):
        OrchestrateParams(report_link_days=30)

"""Sources: digits, ImageFolder folders (nested, bad files), manifest tables, torchvision (FakeData offline)."""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.config import SourceParams
from pipeline.data.sources import ordered_parallel, open_source
from pipeline.data.sources.base import Confinement, Refused
from pipeline.data.sources.digits import DigitsSource
from pipeline.data.sources.folder import FolderSource
from pipeline.data.sources.table import TableSource
from tests.support.badimages import good_png


def _confined(root: Path, allowed: list[str] = (), max_mb: float = 256) -> Confinement:
    return Confinement.of(root, list(allowed), max_mb)


def _folder(root: Path) -> Path:
    """cats/ (nested two deep), dogs/, a stray file at the top, a hidden file, a broken link."""
    for i, rel in enumerate(["cats/a.png", "cats/x/y/b.png", "cats/x/c.png", "dogs/d.png", "dogs/e.png"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(good_png(i, 8))
    (root / "stray.png").write_bytes(good_png(9, 8))
    (root / "dogs" / ".DS_Store").write_bytes(b"junk")
    (root / "dogs" / "gone.png").symlink_to(root / "nowhere.png")
    return root


def test_digits_are_real_rgb_images_at_the_asked_size():
    records = list(DigitsSource(16).records())
    assert len(records) == 1797 and {r.label for r in records} == {str(d) for d in range(10)}
    image = Image.open(io.BytesIO(records[0].data))
    assert (image.size, image.mode, image.format) == ((16, 16), "RGB", "PNG")
    assert image.getextrema()[0][0] < 60 < 200 < image.getextrema()[0][1]  # dark ink on a light page


def test_folder_source_walks_nested_class_folders_and_lists_skips(tmp_path):
    source = FolderSource(_folder(tmp_path / "imgs"), _confined(tmp_path / "imgs"), workers=2)
    records = list(source.records())
    assert sorted((Path(r.source_path).name, r.label) for r in records) == [
        ("a.png", "cats"), ("b.png", "cats"), ("c.png", "cats"), ("d.png", "dogs"), ("e.png", "dogs")]
    reasons = {Path(s.path).name: s.reason for s in source.skipped}
    assert reasons["stray.png"] == "not inside a class folder"
    assert reasons[".DS_Store"] == "hidden file"
    assert reasons["gone.png"].startswith("unreadable: ") and "No such file" in reasons["gone.png"]
    assert source.labels == {"cats", "dogs"}


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: source folder does not exist"):
        FolderSource(tmp_path / "missing", _confined(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no class folders"):
        FolderSource(tmp_path / "empty", _confined(tmp_path))
    (tmp_path / "empty" / "cats").mkdir()
    with pytest.raises(ValueError, match=r"cats: class folder 'cats' has no files"):
        list(FolderSource(tmp_path / "empty", _confined(tmp_path)).records())


def test_table_source_csv_and_parquet(tmp_path):
    _folder(tmp_path / "imgs")
    table = pd.DataFrame({"path": ["imgs/cats/a.png", str(tmp_path / "imgs/dogs/d.png"), "imgs/none.png",
                                   "http://example.com/x.png", "imgs/dogs/e.png"],
                          "label": ["cat", "dog", "dog", "dog", None]})
    table.to_csv(tmp_path / "list.csv", index=False)
    table.to_parquet(tmp_path / "list.parquet")
    for name in ("list.csv", "list.parquet"):
        source = TableSource(tmp_path / name, lambda: None, _confined(tmp_path), workers=2)
        assert [(Path(r.source_path).name, r.label) for r in source.records()] == [("a.png", "cat"), ("d.png", "dog")]
        reasons = {Path(s.path).name: s.reason for s in source.skipped}
        assert reasons["none.png"].startswith("unreadable:") and "No such file" in reasons["none.png"]
        assert "unsupported URI scheme" in reasons["x.png"]
        assert reasons["e.png"].startswith("no label") and "row 6" in reasons["e.png"]


def test_table_errors_name_the_file_and_columns(tmp_path):
    pd.DataFrame({"file_name": ["a"], "label": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: needs a 'label' column .*found: \['file_name', 'label'\]"):
        TableSource(tmp_path / "bad.csv", lambda: None, _confined(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope.csv: manifest table does not exist"):
        open_source(str(tmp_path / "nope.csv"), SourceParams())


def test_open_source_dispatch(tmp_path):
    cfg = SourceParams(digits_size=8)
    assert type(open_source("sklearn-digits", cfg)).__name__ == "DigitsSource"
    assert type(open_source(str(_folder(tmp_path / "f")), cfg)).__name__ == "FolderSource"
    with pytest.raises(ValueError, match="torchvision:Nope: unsupported dataset"):
        open_source("torchvision:Nope", cfg)


def test_torchvision_fakedata_offline_and_missing_dataset_without_download(tmp_path):
    source = open_source("torchvision:FakeData", SourceParams())
    records = list(source.records())
    assert len(records) == 60 and source.labels == {"0", "1", "2"}
    assert Image.open(io.BytesIO(records[0].data)).size == (32, 32)
    cfg = SourceParams(download_root=str(tmp_path / "tv"), allow_download=False)
    with pytest.raises(FileNotFoundError, match=r"torchvision:Flowers102: not found under .*allow_download: true"):
        list(open_source("torchvision:Flowers102", cfg).records())


def _online(host: str = "thor.robots.ox.ac.uk") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.skipif(not _online(), reason="offline: torchvision datasets cannot download")
@pytest.mark.parametrize("name", ["OxfordIIITPet", "Flowers102"])
def test_torchvision_download(tmp_path, name):
    cfg = SourceParams(download_root=str(tmp_path / "tv"), allow_download=True)
    source = open_source(f"torchvision:{name}", cfg)
    first = next(iter(source.records()))
    assert Image.open(io.BytesIO(first.data)).format == "JPEG" and first.label


def test_ordered_parallel_keeps_order_and_reports_errors():
    def work(x: int) -> int:
        if x == 3:
            raise OSError("boom")
        return x * x

    out = list(ordered_parallel(work, iter(range(50)), workers=4))
    assert [item for item, _, _ in out] == list(range(50))
    assert out[3][1] is None and str(out[3][2]) == "boom" and out[7][1] == 49


def test_links_out_of_the_folder_fifos_and_big_files_are_refused_not_read(tmp_path):
    root = _folder(tmp_path / "imgs")
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(good_png(50, 8))
    (root / "cats" / "link.png").symlink_to(secret)
    os.mkfifo(root / "cats" / "pipe.png")  # reading it would block forever
    (root / "dogs" / "huge.png").write_bytes(good_png(51, 8) + b"\0" * 2**20)
    source = FolderSource(root, _confined(root, max_mb=0.5), workers=2)
    names = {Path(r.source_path).name for r in source.records()}
    reasons = {Path(s.path).name: s.reason for s in source.skipped}
    assert not names & {"link.png", "pipe.png", "huge.png"}
    assert reasons["link.png"].startswith(f"refused: outside the source's folder (it resolves to {secret})")
    assert "source.allowed_roots" in reasons["link.png"]
    assert reasons["pipe.png"] == "refused: not a regular file (a FIFO, device or socket); only regular files are read"
    assert reasons["huge.png"].startswith("refused: ") and "over source.max_file_mb (0.5 MiB)" in reasons["huge.png"]
    allowed = FolderSource(root, _confined(root, [str(secret.parent)], max_mb=0.5), workers=2)
    assert "link.png" in {Path(r.source_path).name for r in allowed.records()}


def test_manifest_paths_outside_its_folder_are_refused(tmp_path):
    _folder(tmp_path / "data" / "imgs")
    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir()
    outside.write_bytes(good_png(60, 8))
    table = tmp_path / "data" / "list.csv"
    pd.DataFrame({"path": ["imgs/cats/a.png", "../elsewhere/x.png", str(outside), "file://" + str(outside)],
                  "label": ["cat"] * 4}).to_csv(table, index=False)
    source = TableSource(table, lambda: None, _confined(table.parent), workers=2)
    assert [Path(r.source_path).name for r in source.records()] == ["a.png"]
    assert len(source.skipped) == 3
    assert all(s.reason.startswith("refused: outside the source's folder") for s in source.skipped)
    allowed = TableSource(table, lambda: None, _confined(table.parent, [str(outside.parent)]), workers=2)
    assert len(list(allowed.records())) == 4


def test_linked_folders_are_walked_inside_the_roots_and_refused_by_name_outside(tmp_path):
    root = _folder(tmp_path / "imgs")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.png").write_bytes(good_png(70, 8))
    (root / "cats" / "more").symlink_to(outside)  # used to be dropped without a word
    (root / "birds").symlink_to("/")  # a class folder linked to / used to walk the whole disk
    (root / "dogs" / "alias").symlink_to(root / "cats" / "x")  # inside the source: walked
    (root / "cats" / "x" / "up").symlink_to(root / "cats")  # around itself: a loop
    source = FolderSource(root, _confined(root), workers=2)
    paths = {r.source_path: r.label for r in source.records()}
    reasons = {s.path: s.reason for s in source.skipped}
    assert reasons[str(root / "cats" / "more")] == (
        f"refused: a folder link outside the source's folder (it resolves to {outside}); add its folder to "
        "source.allowed_roots to read it")
    assert reasons[str(root / "birds")].startswith("refused: a folder link outside the source's folder (it resolves "
                                                   "to /)")
    assert reasons[str(root / "cats" / "x" / "up")] == (
        f"refused: a folder link to {root / 'cats'}, which holds the link itself (a loop)")
    assert source.labels == {"cats", "dogs"} and not any("birds" in p for p in paths)
    assert paths[str(root / "dogs" / "alias" / "c.png")] == "dogs"
    assert str(root / "dogs" / "alias" / "y" / "b.png") in paths
    (root / "birds").unlink()
    allowed = FolderSource(root, _confined(root, [str(outside)]), workers=2)
    assert {r.source_path: r.label for r in allowed.records()}[str(root / "cats" / "more" / "x.png")] == "cats"


def test_a_file_or_folder_swapped_for_a_link_after_its_check_is_refused_not_followed(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(good_png(80, 8))
    confinement = _confined(root)
    real_resolve = Path.resolve
    swaps = {root / "cats" / "a.png": lambda: ((root / "cats" / "a.png").unlink(),
                                               (root / "cats" / "a.png").symlink_to(secret)),
             root / "cats" / "x" / "c.png": lambda: ((root / "cats" / "x").rename(tmp_path / "old-x"),
                                                     (root / "cats" / "x").symlink_to(secret.parent))}

    def resolve_then_swap(self, strict=False):  # the attacker's move, between the check and the open
        resolved = real_resolve(self, strict)
        if self in swaps:
            swaps.pop(self)()
        return resolved

    monkeypatch.setattr(Path, "resolve", resolve_then_swap)
    (secret.parent / "c.png").write_bytes(b"secret too")
    for path in (root / "cats" / "a.png", root / "cats" / "x" / "c.png"):
        with pytest.raises(Refused, match="replaced by a link after it was checked"):
            confinement.read(path)  # the old code read the secret through the swapped-in link


def test_a_fifo_swapped_in_after_the_type_check_is_refused_without_hanging(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    target = root / "dogs" / "d.png"
    real_stat = os.stat

    def stat_then_swap(path, *args, **kwargs):  # the type is checked, then the file becomes a FIFO
        info = real_stat(path, *args, **kwargs)
        if path == target.name and kwargs.get("dir_fd") is not None and target.is_file():
            target.unlink()
            os.mkfifo(target)
        return info

    monkeypatch.setattr(os, "stat", stat_then_swap)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: outcome.append(pytest.raises(Refused, _confined(root).read, target).value),
                              daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "reading a FIFO swapped in after the check hung"
    assert str(outcome[0]).startswith("not a regular file")

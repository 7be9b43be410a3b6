"""``s3://bucket/prefix`` in ImageFolder layout, read with boto3 (any S3-compatible endpoint).

Credentials come from the environment or a named profile, never from params.yaml, and are never
logged. Retries with exponential backoff and jitter on throttling, 5xx and dropped connections are
botocore's "standard" retry mode; a body read that breaks mid-stream (which botocore does not retry)
is retried here with backoff. What still fails after that is a :class:`TransientError` (exit 75: the
flow retries the stage), never bad input; downloads run on a bounded pool of threads so memory stays
flat.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator
from urllib.parse import urlparse

from pipeline.common.errors import TransientError, is_connection_error
from pipeline.common.logs import get_logger
from pipeline.data.sources.base import Record, Refused, Source, ordered_parallel

__all__ = ["S3Source", "make_s3_client", "parse_s3_uri", "s3_error", "get_object_bytes"]
log = get_logger(__name__)


def make_s3_client(endpoint_url: str | None = None, profile: str | None = None, retries: int = 5,
                   workers: int = 8) -> Any:
    """Build a boto3 S3 client.

    Args:
        endpoint_url: S3-compatible endpoint; None: env AWS_ENDPOINT_URL, else AWS itself.
        profile: named profile from ~/.aws (None: environment credentials / default chain).
        retries: retries after the first attempt, with backoff, on throttling and 5xx.
        workers: parallel downloads (sizes the connection pool).
    Returns:
        The boto3 client.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.Session(profile_name=profile) if profile else boto3.Session()
    except ProfileNotFound:
        raise ValueError(f"source.s3_profile = {profile!r}: no such AWS profile") from None
    config = Config(retries={"max_attempts": retries + 1, "mode": "standard"},
                    max_pool_connections=max(10, workers), connect_timeout=10, read_timeout=60)
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    log.info("S3 endpoint %s%s", endpoint or "AWS default", f", profile {profile}" if profile else "")
    return session.client("s3", endpoint_url=endpoint, config=config)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/prefix`` into (bucket, key prefix)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r}: expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_error(uri: str, err: Exception) -> Exception:
    """Turn a boto3 error into a one-line error naming the URI (no credentials in it)."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, TransientError):
        return err
    if isinstance(err, NoCredentialsError):
        return ValueError(f"{uri}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                          "or source.s3_profile)")
    if is_connection_error(err):
        return TransientError(f"{uri}: S3 unreachable or the connection dropped, after the client's retries "
                              f"({type(err).__name__}: {err})")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return TransientError(f"{uri}: S3 error {code or status} (throttling or a server error), after the "
                                  "client's retries")
        if code in ("NoSuchBucket", "404"):
            return FileNotFoundError(f"{uri}: bucket '{parse_s3_uri(uri)[0]}' does not exist")
        if code in ("NoSuchKey",):
            return FileNotFoundError(f"{uri}: no such object")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return ValueError(f"{uri}: access denied ({code}): check the credentials and bucket policy")
        return ValueError(f"{uri}: S3 error {code}: {err.response.get('Error', {}).get('Message', err)}")
    return err


_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}


def get_object_bytes(client: Any, bucket: str, key: str, max_bytes: int | None = None) -> bytes:
    """Download one object's bytes, refusing one over ``max_bytes``.

    botocore retries the request (throttling, 5xx, connections); a body that breaks while it streams
    is fetched again here, with the same number of attempts and exponential backoff.
    """
    attempts = int((client.meta.config.retries or {}).get("max_attempts", 3))
    for attempt in range(1, attempts):
        try:
            return _download(client, bucket, key, max_bytes)
        except Exception as err:  # noqa: BLE001 - only a broken connection is retried; the rest is re-raised
            if not is_connection_error(err):
                raise
            log.warning("s3://%s/%s: the download broke (%s); attempt %d of %d", bucket, key, err, attempt + 1,
                        attempts)
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
    return _download(client, bucket, key, max_bytes)


def _download(client: Any, bucket: str, key: str, max_bytes: int | None) -> bytes:
    response = client.get_object(Bucket=bucket, Key=key)
    if max_bytes is not None and int(response.get("ContentLength") or 0) > max_bytes:
        response["Body"].close()
        raise Refused(f"{response['ContentLength']} bytes, over source.max_file_mb ({max_bytes / 2**20:g} MiB)")
    return response["Body"].read()


class S3Source(Source):
    """Stream ``s3://bucket/prefix/<class>/**`` objects, downloaded in parallel, in key order."""

    def __init__(self, uri: str, client: Any, workers: int = 8, max_bytes: int | None = None,
                 unlabelled: bool = False):
        super().__init__(uri, unlabelled)
        self.uri, self.client, self.workers, self.max_bytes = uri.rstrip("/"), client, workers, max_bytes
        self.bucket, prefix = parse_s3_uri(self.uri)
        self.prefix = prefix + "/" if prefix else ""

    def records(self) -> Iterator[Record]:
        keys = (key for key in self._keys() if self._classify(key))
        fetch = lambda key: get_object_bytes(self.client, self.bucket, key, self.max_bytes)  # noqa: E731
        for key, data, error in ordered_parallel(fetch, keys, self.workers):
            path = f"s3://{self.bucket}/{key}"
            if error is not None:
                self.skip_failed_read(path, error if isinstance(error, Refused) else s3_error(path, error))
            else:
                relative = key[len(self.prefix):]
                yield Record(path, relative.split("/", 1)[0] if "/" in relative else "", data)

    def _classify(self, key: str) -> bool:
        """True for an object under a class folder; others are skipped (folder markers ignored)."""
        relative = key[len(self.prefix):]
        if key.endswith("/"):
            return False
        if "/" not in relative and not self.unlabelled:
            self.skip(f"s3://{self.bucket}/{key}", "not inside a class folder")
            return False
        if "/." in "/" + relative:
            self.skip(f"s3://{self.bucket}/{key}", "hidden file")
            return False
        if "/" in relative:
            self.labels.add(relative.split("/", 1)[0])
        return True

    def _keys(self) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        found = False
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    found = True
                    yield obj["Key"]
        except (ClientError, BotoCoreError) as err:
            raise s3_error(self.uri, err) from None
        if not found:
            raise FileNotFoundError(f"{self.uri}: no objects under this prefix (bucket '{self.bucket}' exists)")

"""``s3://bucket/prefix`` in ImageFolder layout, read with boto3 (any S3-compatible endpoint).

The client comes from :func:`pipeline.common.s3.s3_client` (endpoint, profile, botocore's "standard" retries
with backoff and jitter on throttling, 5xx and dropped connections); a body read that breaks mid-stream
(which botocore does not retry) is retried here with backoff. What still fails after that is named by
:func:`pipeline.common.s3.s3_error`: a :class:`TransientError` (exit 75: the flow retries the stage), never
bad input. Downloads run on a bounded pool of threads so memory stays flat.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from pipeline.common.logs import get_logger
from pipeline.common.s3 import is_connection_error, parse_s3_uri, s3_error
from pipeline.data.sources.base import Record, Refused, Source, ordered_parallel

__all__ = ["S3Source", "get_object_bytes"]
log = get_logger(__name__)


def get_object_bytes(client: Any, bucket: str, key: str, max_bytes: int | None = None) -> bytes:
    """Download one object's bytes, refusing one over ``max_bytes``.

    botocore retries the request (throttling, 5xx, connections); a body that breaks while it streams
    is fetched again here, with the same number of attempts and exponential backoff.
    """
    attempts = int((client.meta.config.retries or {}).get("total_max_attempts", 1))
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
                named = error if isinstance(error, Refused) else s3_error(path, error, self.client.meta.endpoint_url)
                self.skip_failed_read(path, named)
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
            raise s3_error(self.uri, err, self.client.meta.endpoint_url) from None
        if not found:
            raise FileNotFoundError(f"{self.uri}: no objects under this prefix (bucket '{self.bucket}' exists)")

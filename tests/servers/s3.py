"""A real S3-compatible HTTP server on loopback: moto's ``ThreadedMotoServer``.

The server is a werkzeug WSGI server in a daemon thread of the test process,
on ``127.0.0.1`` and a port the kernel picks. It speaks the S3 REST API over
plain HTTP, accepts any credentials (we use ``testing``/``testing``) and keeps
everything in memory. Its state is moto's process-global backend: every
moto server in the process, and any ``moto.mock_aws`` in it, sees the same
buckets (and ``mock_aws`` resets them all on exit). So each server here makes
its own uniquely named bucket and, when stopped, deletes only that bucket.

Use::

    with S3Server() as info:
        fs = info.filesystem()          # fsspec "s3" (s3fs)
        fs.pipe_file(f"{info.bucket}/a.txt", b"hi")
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

HOST = "127.0.0.1"
BUCKET_PREFIX = "aptk-test-"
KEY = "testing"
SECRET = "testing"
REGION = "us-east-1"


@dataclasses.dataclass(frozen=True)
class S3ServerInfo:
    """How to reach a running :class:`S3Server`."""

    endpoint_url: str
    bucket: str
    key: str = KEY
    secret: str = SECRET
    region: str = REGION

    def storage_options(self) -> dict[str, Any]:
        """fsspec ``storage_options`` for the ``s3`` protocol (s3fs)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def config(self, prefix: str = "") -> dict[str, Any]:
        """The form a config file would hold: ``{"url", "storage_options"}``."""
        prefix = prefix.strip("/")
        url = f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}/"
        return {"url": url, "storage_options": self.storage_options()}

    def filesystem(self, **overrides: Any):
        """A new s3fs ``S3FileSystem`` for this server.

        ``skip_instance_cache=True`` (fsspec otherwise hands back a cached
        instance for equal arguments, with its listings cache) and
        ``use_listings_cache=False`` (so ``ls``/``exists``/``info`` see what
        another client changed meanwhile).
        """
        import s3fs

        options = self.storage_options()
        options.update(skip_instance_cache=True, use_listings_cache=False)
        options.update(overrides)
        return s3fs.S3FileSystem(**options)

    def boto3_client(self):
        """A plain boto3 S3 client, for checks that bypass s3fs."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def delete_prefix(self, prefix: str) -> None:
        """Delete the objects, and abort the multipart uploads, under ``prefix``."""
        client = self.boto3_client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        uploads = client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        for upload in uploads.get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )


def _silence_request_log(server: Any) -> None:
    """Drop werkzeug's one-line-per-request access log (errors still log).

    Best effort: reaches into ThreadedMotoServer's werkzeug server.
    """
    wsgi_server = getattr(server, "_server", None)
    handler = getattr(wsgi_server, "RequestHandlerClass", None)
    if handler is None:
        return

    class QuietHandler(handler):  # type: ignore[misc, valid-type]
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    wsgi_server.RequestHandlerClass = QuietHandler


class S3Server:
    """moto's threaded server with one bucket made at start."""

    def __init__(self, *, bucket: str | None = None, host: str = HOST, port: int = 0) -> None:
        self.bucket = bucket or f"{BUCKET_PREFIX}{uuid.uuid4().hex[:12]}"
        self.host = host
        self._requested_port = port
        self._server = None
        self.info: S3ServerInfo | None = None

    def start(self) -> S3ServerInfo:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(
            ip_address=self.host, port=self._requested_port, verbose=False
        )
        self._server.start()
        _silence_request_log(self._server)
        try:
            host, port = self._server.get_host_and_port()
        except AttributeError:  # moto < 5.0.x had no get_host_and_port
            host, port = self._server._server.server_address[:2]
        self.info = S3ServerInfo(endpoint_url=f"http://{host}:{port}", bucket=self.bucket)
        self.info.boto3_client().create_bucket(Bucket=self.bucket)
        return self.info

    def empty_bucket(self) -> None:
        """Delete every object (and abort every multipart upload) in the bucket."""
        assert self.info is not None
        self.info.delete_prefix("")

    def stop(self) -> None:
        if self._server is None:
            return
        # moto's backend is process-global: drop our bucket, not everything
        # (no /moto-api/reset). shutdown() then takes up to werkzeug's 0.5 s
        # poll interval.
        try:
            self.empty_bucket()
            assert self.info is not None
            self.info.boto3_client().delete_bucket(Bucket=self.bucket)
        except Exception:  # pragma: no cover - best effort
            pass
        self._server.stop()
        self._server = None

    def __enter__(self) -> S3ServerInfo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

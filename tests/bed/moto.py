"""`moto_server` as a real S3-protocol server on a loopback port, in its own process.

The store talks to it over HTTP with boto3's full stack (signing, XML, checksums settings), so
S3 tests exercise the same code path as AWS. Credentials are fixed test values passed to each
client explicitly; nothing here touches the process environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"
MOTO_KEYS = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
}
"""moto's fixed keys as a `bale` run's environment: `isolated_env(tmp_path, **MOTO_KEYS)`."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: moto_server must not outlive a killed test run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM a server the bed started, SIGKILL it if it is not gone in 10 s, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _moto_server_binary() -> str:
    candidate = Path(sys.executable).with_name("moto_server")
    if candidate.exists():
        return str(candidate)
    return "moto_server"


@dataclass
class MotoServer:
    """A running moto_server; `stop()` ends it."""

    endpoint_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _clients: list[Any] = field(default_factory=list)
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def client(self) -> Any:
        """A boto3 S3 client for test set-up and inspection (not the code under test)."""
        if not self._clients:
            self._clients.append(self._make_client())
        return self._clients[0]

    def _make_client(self) -> Any:
        import boto3
        import botocore.config

        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
        ).client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def create_bucket(self, name: str | None = None, *, object_lock: bool = False) -> str:
        """A new bucket; with `object_lock`, created with Object Lock (and so versioning) on."""
        name = name or f"bale-{uuid.uuid4().hex[:12]}"
        lock = {"ObjectLockEnabledForBucket": True} if object_lock else {}
        self.client().create_bucket(Bucket=name, **lock)
        return name

    def stop(self) -> None:
        stop_process(self.process)


def start_moto_server(
    workdir: Path, *, timeout: float = 30.0, no_auth_actions: int | None = None
) -> MotoServer:
    """Start moto_server on a free loopback port and wait until it answers.

    With `no_auth_actions`, moto checks signatures and IAM policies from the request after that
    many (the set-up calls that create users, keys and policies go first). Note that moto names
    an S3 call's action after the call (`s3:ListObjectsV2`), not IAM's name for it.
    """
    port = free_port()
    log_path = workdir / f"moto-{port}.log"
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    if no_auth_actions is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(no_auth_actions)
    log = log_path.open("wb")
    process = subprocess.Popen(
        [_moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
        preexec_fn=_die_with_parent,
    )
    log.close()
    endpoint = f"http://127.0.0.1:{port}"
    server = MotoServer(endpoint_url=endpoint, process=process, log_path=log_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"moto_server exited: {log_path.read_text(errors='replace')[-2000:]}"
            )
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto_server did not start on port {port}") from None
            time.sleep(0.1)

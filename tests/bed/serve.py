"""`bale serve` run as a real process on a free loopback port, and what tests ask of it.

    serve = BaleServe(tmp_path / "serve", store=str(tmp_path / "archive"),
                      allow=[registry.host]).start()
    serve.post("/events/generic", {"image": "127.0.0.1:5000/app:1"})   # -> (status, json)
    serve.wait_idle()          # no job pending or running
    serve.kill()               # SIGKILL; start() again restarts it on the same port

Its stderr goes to `log_path` (kept across restarts) so a failed test can show it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bed.cli import isolated_env, start_bale
from tests.bed.registry import free_port

SECRET = "bed-serve-secret"


class BaleServe:
    def __init__(
        self,
        workdir: Path,
        *,
        store: str,
        allow: Sequence[str],
        queue: str | None = None,
        args: Sequence[str] = (),
        port: int = 0,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.allow = list(allow)
        self.queue = queue or str(workdir / "queue.db")
        self.args = list(args)
        self.port = port or free_port()
        self.log_path = workdir / "serve.log"
        self.env = isolated_env(workdir, BALE_SERVE_SECRET=SECRET)
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> BaleServe:
        argv = ["serve", "--to", self.store, "--listen", f"127.0.0.1:{self.port}"]
        argv += ["--queue", self.queue, "--src-tls-verify=false", "--digest-grace", "2s"]
        for host in self.allow:
            argv += ["--allow-registry", host]
        with self.log_path.open("a") as log:
            self.proc = start_bale(
                "-v",
                *argv,
                *self.args,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bale serve exited {self.proc.returncode}: {self.log()}")
            try:
                if self.get("/readyz", raw=True)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"bale serve did not get ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    # -- HTTP ----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(
        self, path: str, payload: Any, *, secret: str | None = SECRET, **headers: str
    ) -> tuple[int, Any]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"Content-Type": "application/json", **headers}
        if secret is not None:
            sent["Authorization"] = f"Bearer {secret}"
        status, data = self.request("POST", path, body, sent)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data

    def get(self, path: str, *, raw: bool = False, secret: str | None = SECRET) -> tuple[int, Any]:
        """GET `path`; the queue's JSON with the shared secret (as a script would read it)."""
        headers = (
            {"Authorization": f"Bearer {secret}"}
            if secret and path.startswith("/api/queue")
            else {}
        )
        status, data = self.request("GET", path, headers=headers)
        return status, (data if raw else json.loads(data))

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        query = f"?limit=1000&state={state}" if state else "?limit=1000"
        return self.get(f"/api/queue{query}")[1]["jobs"]

    def counts(self) -> dict[str, int]:
        return self.get("/api/queue?limit=1")[1]["counts"]

    def wait_for(self, check: Any, timeout: float = 120.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {self.counts()}\n{self.log()[-4000:]}")

    def wait_idle(self, jobs: int, timeout: float = 120.0) -> None:
        """Until `jobs` jobs exist and none is pending or running."""

        def idle() -> bool:
            c = self.counts()
            return sum(c.values()) >= jobs and c["pending"] == 0 and c["running"] == 0

        self.wait_for(idle, timeout, f"{jobs} jobs done")

    # -- lifecycle -----------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

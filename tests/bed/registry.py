"""A real registry (Debian's docker-registry, distribution 2.8.2) started per test session.

Each server gets its own config.yml, a free loopback port, its own storage and its own logs.
The access log (Apache combined format, on the registry's stdout) is kept in a file so tests
can count what a client really sent: how many blob GETs, whether a layer was uploaded twice,
whether a token was reused. Lines look like

    127.0.0.1 - - [28/Nov/2026:11:34:01 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"

Distribution writes a line after the handler returns, so just after a response a line may be
missing: `requests()` first sends a marker request (`GET /_bed/sync/N`, answered 404 by the
router before any auth), waits for its line and then for the log to stay quiet for 50 ms.
Lines under `/_bed/` are never reported.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
import yaml

from tests.bed.token_issuer import TokenIssuer

AuthMode = Literal["none", "htpasswd", "token"]

REGISTRY_BINARY = "/usr/bin/docker-registry"
_BED_PREFIX = "/_bed/"
_LOG_RE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<target>\S+)'
    r' (?P<proto>[^"]+)" (?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)"'
    r' "(?P<agent>[^"]*)"'
)


def _die_with_parent() -> None:
    """Runs in the child before exec: a registry must not outlive a killed test run."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A loopback port free right now (the caller retries if someone takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class FilesystemStorage:
    rootdirectory: Path


@dataclass(frozen=True)
class S3Storage:
    """`storage.s3`: what issue 4 points a stock registry at to serve an archive bucket."""

    regionendpoint: str
    bucket: str
    accesskey: str
    secretkey: str
    rootdirectory: str = ""
    region: str = "us-east-1"
    secure: bool = False
    v4auth: bool = True
    redirect: bool = False
    """Stock registries redirect blob GETs to presigned S3 URLs; the bed turns that off unless
    asked, so that tests see every byte go through the registry."""

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "region": self.region,
            "regionendpoint": self.regionendpoint,
            "bucket": self.bucket,
            "accesskey": self.accesskey,
            "secretkey": self.secretkey,
            "secure": self.secure,
            "v4auth": self.v4auth,
        }
        if self.rootdirectory:
            out["rootdirectory"] = self.rootdirectory
        return out


Storage = FilesystemStorage | S3Storage


@dataclass(frozen=True)
class NotifyEndpoint:
    """One `notifications.endpoints` entry: the registry POSTs event envelopes
    (`application/vnd.docker.distribution.events.v1+json`) to `url` with `headers`, and
    retries a failed delivery (after `threshold` failures it waits `backoff` between tries)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    name: str = "bed"
    timeout: str = "5s"
    threshold: int = 3
    backoff: str = "500ms"

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "headers": {k: [v] for k, v in self.headers.items()},
            "timeout": self.timeout,
            "threshold": self.threshold,
            "backoff": self.backoff,
            "ignoredmediatypes": ["application/octet-stream"],
        }


@dataclass(frozen=True)
class AccessLogEntry:
    remote: str
    time: str
    method: str
    target: str
    """Path and query exactly as requested."""
    protocol: str
    status: int
    size: int | None
    referer: str
    user_agent: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    @classmethod
    def parse(cls, line: str) -> AccessLogEntry | None:
        m = _LOG_RE.match(line)
        if m is None:
            return None
        return cls(
            remote=m["remote"],
            time=m["time"],
            method=m["method"],
            target=m["target"],
            protocol=m["proto"],
            status=int(m["status"]),
            size=None if m["size"] == "-" else int(m["size"]),
            referer=m["referer"],
            user_agent=m["agent"],
        )


class RegistryError(RuntimeError):
    """The registry process would not start; the message carries its log tail."""


class RegistryServer:
    """One docker-registry process on 127.0.0.1 with a generated config.

    `auth` is "none", "htpasswd" (bcrypt, a random user per server) or "token" (trusts
    `token_issuer`, whose first user becomes this server's `username`). `storage` defaults
    to a fresh directory under `workdir`. `readonly` sets
    `storage.maintenance.readonly.enabled`. `notify` are `notifications.endpoints` (push and
    pull events sent to those URLs). `extra_config` is merged over the generated
    config (nested dicts merge) for anything else.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        auth: AuthMode = "none",
        storage: Storage | None = None,
        readonly: bool = False,
        token_issuer: TokenIssuer | None = None,
        users: Mapping[str, str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        binary: str = REGISTRY_BINARY,
        notify: tuple[NotifyEndpoint, ...] = (),
    ) -> None:
        if auth == "token" and token_issuer is None:
            raise ValueError("auth='token' needs a token_issuer")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.auth: AuthMode = auth
        self.storage: Storage = storage or FilesystemStorage(workdir / "data")
        self.readonly = readonly
        self.token_issuer = token_issuer
        self.extra_config = dict(extra_config or {})
        self.notify = notify
        self.binary = binary
        if auth == "htpasswd" and users is None:
            users = {f"bed-{secrets.token_hex(3)}": secrets.token_urlsafe(12)}
        self.users: dict[str, str] = dict(users or {})
        self.port = 0
        self.config_path = workdir / "config.yml"
        self.access_log_path = workdir / "access.log"
        self.app_log_path = workdir / "registry.log"
        self.htpasswd_path = workdir / "htpasswd"
        self._secret = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._sync_n = 0

    # ---- identity ----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def username(self) -> str | None:
        if self.auth == "token":
            assert self.token_issuer is not None
            return self.token_issuer.username
        return next(iter(self.users)) if self.auth == "htpasswd" else None

    @property
    def password(self) -> str | None:
        if self.auth == "token":
            assert self.token_issuer is not None
            return self.token_issuer.password
        return self.users[next(iter(self.users))] if self.auth == "htpasswd" else None

    @property
    def creds(self) -> str | None:
        """`user:password` for skopeo's `--creds`, or None when anonymous."""
        return None if self.username is None else f"{self.username}:{self.password}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"RegistryServer({self.url}, auth={self.auth})"

    # ---- config ------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        storage: dict[str, Any]
        if isinstance(self.storage, S3Storage):
            storage = {"s3": self.storage.config()}
            storage["redirect"] = {"disable": not self.storage.redirect}
        else:
            storage = {"filesystem": {"rootdirectory": str(self.storage.rootdirectory)}}
        storage["delete"] = {"enabled": True}
        storage["maintenance"] = {
            "uploadpurging": {"enabled": False},
            "readonly": {"enabled": self.readonly},
        }
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": storage,
            "http": {"addr": self.host, "secret": self._secret},
        }
        if self.auth == "htpasswd":
            cfg["auth"] = {"htpasswd": {"realm": "bale-bed", "path": str(self.htpasswd_path)}}
        elif self.auth == "token":
            assert self.token_issuer is not None
            cfg["auth"] = {"token": self.token_issuer.registry_auth_config()}
        if self.notify:
            cfg["notifications"] = {"endpoints": [n.config() for n in self.notify]}
        return _merge(cfg, self.extra_config)

    def write_htpasswd(self) -> None:
        """bcrypt at cost 4: distribution checks the hash on every request."""
        lines = [
            f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
            for user, pw in self.users.items()
        ]
        self.htpasswd_path.write_text("".join(lines))

    def add_user(self, username: str, password: str) -> None:
        """Another htpasswd account; the registry re-reads the file when it changes."""
        self.users[username] = password
        if self.auth == "htpasswd":
            self.write_htpasswd()

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> RegistryServer:
        """Start (or restart on the same port); returns once it answers HTTP."""
        if self.running:
            return self
        if self.auth == "token" and self.token_issuer is not None:
            self.token_issuer.start()
        if self.auth == "htpasswd":
            self.write_htpasswd()
        keep_port = self.port != 0
        for _attempt in range(5):
            if not keep_port:
                self.port = free_port()
            self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            # docker-registry reads any REGISTRY_* variable as configuration (a test's
            # REGISTRY_AUTH_FILE would break it), and its S3 driver crashes on AWS_CA_BUNDLE.
            env = {
                k: v
                for k, v in os.environ.items()
                if k != "AWS_CA_BUNDLE" and not k.startswith("REGISTRY_")
            }
            with (
                self.access_log_path.open("ab") as out,
                self.app_log_path.open("ab") as err,
            ):
                self._proc = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    # PDEATHSIG fires when the forking *thread* ends: main thread only.
                    preexec_fn=_die_with_parent
                    if threading.current_thread() is threading.main_thread()
                    else None,
                )
            if self._wait_ready(timeout):
                return self
            tail = self.app_log_tail()
            self.stop()
            if "address already in use" not in tail or keep_port:
                raise RegistryError(f"docker-registry did not start: {tail}")
        raise RegistryError("docker-registry found no free port")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", f"{_BED_PREFIX}ready")
                conn.getresponse().read()
                conn.close()
                return True
            except OSError:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def restart(self, **changes: Any) -> RegistryServer:
        """Stop, change attributes (e.g. `readonly=True`), start again on the same port."""
        self.stop()
        for key, value in changes.items():
            if not hasattr(self, key):
                raise AttributeError(key)
            setattr(self, key, value)
        return self.start()

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wipe(self) -> None:
        """Delete filesystem storage (stopped server only)."""
        if self.running:
            raise RuntimeError("stop the registry before wiping its storage")
        if isinstance(self.storage, FilesystemStorage):
            shutil.rmtree(self.storage.rootdirectory, ignore_errors=True)

    # ---- logs --------------------------------------------------------------------------

    def app_log_tail(self, lines: int = 20) -> str:
        try:
            text = self.app_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def sync(self, timeout: float = 5.0, settle: float = 0.05) -> None:
        """Wait until every request answered so far is (almost surely) in the access log.

        The marker's line proves the registry has caught up with requests that finished
        before it on the same goroutine only; a body larger than Go's write buffer reaches
        the client before its handler returns and logs. So after the marker, the log must
        also stay unchanged for `settle` seconds.
        """
        if not self.running:
            return
        self._sync_n += 1
        marker = f"{_BED_PREFIX}sync/{self._sync_n}-{secrets.token_hex(4)}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request("GET", marker)
        conn.getresponse().read()
        conn.close()
        needle = f"GET {marker} ".encode()
        deadline = time.monotonic() + timeout
        while needle not in self.access_log_path.read_bytes():
            if time.monotonic() > deadline:
                raise TimeoutError("registry access log did not catch up")
            time.sleep(0.005)
        size, quiet_since = self.access_log_path.stat().st_size, time.monotonic()
        while time.monotonic() - quiet_since < settle and time.monotonic() < deadline:
            time.sleep(0.005)
            now = self.access_log_path.stat().st_size
            if now != size:
                size, quiet_since = now, time.monotonic()

    def _entries(self) -> list[AccessLogEntry]:
        out = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            entry = AccessLogEntry.parse(line)
            if entry is not None and not entry.path.startswith(_BED_PREFIX):
                out.append(entry)
        return out

    def mark(self) -> int:
        """A position in the access log; pass it as `since` to see only later requests."""
        self.sync()
        return len(self._entries())

    def requests(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        *,
        since: int = 0,
        status: int | None = None,
    ) -> list[AccessLogEntry]:
        """Access-log entries, oldest first; `path_regex` is searched in the path (no query)."""
        self.sync()
        pattern = re.compile(path_regex) if path_regex else None
        return [
            e
            for e in self._entries()[since:]
            if (method is None or e.method == method.upper())
            and (pattern is None or pattern.search(e.path))
            and (status is None or e.status == status)
        ]

    def count(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        *,
        since: int = 0,
        status: int | None = None,
    ) -> int:
        return len(self.requests(method, path_regex, since=since, status=status))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def blob_gets(registry: RegistryServer, since: int) -> dict[str, int]:
    """Successful blob GETs per digest in the registry's access log (200 and 206)."""
    counts: dict[str, int] = {}
    for entry in registry.requests("GET", r"/blobs/sha256:", since=since):
        if entry.status in (200, 206):
            digest = entry.path.rsplit("/", 1)[1]
            counts[digest] = counts.get(digest, 0) + 1
    return counts

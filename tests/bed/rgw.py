"""Ceph's RADOS Gateway (Debian's radosgw 16.2) as a real S3 server on a loopback port.

A throwaway single-node cluster in a temporary directory: one monitor, one OSD on bluestore in a
sparse file (memstore would keep every byte in the OSD's RAM), radosgw's beast frontend on a free
loopback port, and an S3 user with fixed test keys. Every daemon runs in the foreground (`-f`) in
its own session, dies with the test run (PR_SET_PDEATHSIG), and is stopped by its own PID; the
directory goes with it.

SSE-C is allowed over plain HTTP (`rgw_crypt_require_ssl = false`) and SSE-KMS goes through
the `testing` KMS back end with one key (`KMS_KEY_ID`).

Settings that matter (measured on Ceph 16.2.15, see the project notes): no cephx on loopback, so
clients must offer `crc` mode to the monitor (radosgw's default `secure` loops on "-13"); a short
paxos interval (start 13 s -> 3 s); pools of one replica on one OSD; deleted data reclaimed after
30 s instead of two hours. The placement target gets extra storage classes (`STORAGE_CLASSES`)
before radosgw starts, so storage-class requests are answered rather than refused with 400.

`RgwServer` offers what `MotoServer` offers (`endpoint_url`, `client()`, `create_bucket()`), so a
test written for one runs on the other.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bed.moto import free_port

ACCESS_KEY = "BALETESTACCESSKEY000"
SECRET_KEY = "bale-test-secret-key-0000000000000000000"
REGION = "us-east-1"
USER = "bale-test"
KMS_KEY_ID = "bale-test-key"
KMS_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
"""SSE-KMS through radosgw's `testing` KMS back end: this one key id, its 256 bits in base64
(`aws:kms` with another id is refused, 400 InvalidAccessKeyId; without an id, 400
InvalidArgument)."""

STORAGE_CLASSES = ("STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER", "DEEP_ARCHIVE")
"""Added to the default placement target next to STANDARD, each with its own data pool."""

PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "ceph", "radosgw", "radosgw-admin")

_GiB = 1024**3


def missing_binaries() -> list[str]:
    """Ceph programs the bed needs that are not installed (`make test` installs them)."""
    return [b for b in BINARIES if shutil.which(b) is None]


def _die_with_parent() -> None:
    """Runs in the child before exec: no daemon may outlive a killed test run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _config(root: Path, fsid: str, mon_v2: int, mon_v1: int, rgw_frontend: str) -> str:
    return f"""\
[global]
fsid = {fsid}
mon_host = [v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc secure
ms_bind_ipv6 = false
public_network = 127.0.0.0/8
run_dir = {root}/run
admin_socket = {root}/run/$name.asok
log_file = {root}/log/$name.log
pid_file = {root}/run/$name.pid
log_to_stderr = false
err_to_stderr = true
debug_ms = 0
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_max_pg_per_osd = 1000
mon_osd_full_ratio = 0.97
mon_osd_backfillfull_ratio = 0.96
mon_osd_nearfull_ratio = 0.95
osd_failsafe_full_ratio = 0.98

[mon]
mon_data = {root}/mon/$cluster-$id
paxos_propose_interval = 0.1
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false

[osd]
osd_data = {root}/osd/$cluster-$id
osd_objectstore = bluestore
bluestore_block_path = {root}/osd/block
bluestore_block_size = {20 * _GiB}
bluestore_block_create = true
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = {1 * _GiB}
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 2

[client]
rgw_frontends = {rgw_frontend}
rgw_gc_obj_min_wait = 30
rgw_gc_processor_period = 30
rgw_enable_usage_log = false
rgw_crypt_require_ssl = false
rgw_crypt_s3_kms_backend = testing
rgw_crypt_s3_kms_encryption_keys = {KMS_KEY_ID}={KMS_KEY}
rgw_thread_pool_size = 64
"""


@dataclass
class RgwServer:
    """A running single-node Ceph cluster with radosgw in front; `stop()` ends it."""

    endpoint_url: str
    root: Path
    config: Path
    processes: dict[str, subprocess.Popen[bytes]]
    started_in: float
    """Seconds from nothing to the first S3 answer (reported, never asserted)."""
    region: str = REGION
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    _clients: list[Any] = field(default_factory=list)

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items()}

    def client(self) -> Any:
        """A boto3 S3 client for test set-up and inspection (not the code under test)."""
        if not self._clients:
            import boto3
            import botocore.config

            self._clients.append(
                boto3.session.Session(
                    aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY
                ).client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=REGION,
                    verify=False if self.endpoint_url.startswith("https") else None,
                    config=botocore.config.Config(
                        s3={"addressing_style": "path"},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    ),
                )
            )
        return self._clients[0]

    def create_bucket(self, name: str | None = None, *, object_lock: bool = False) -> str:
        """A new bucket; with `object_lock`, created with Object Lock (and so versioning) on."""
        name = name or f"bale-{uuid.uuid4().hex[:12]}"
        lock = {"ObjectLockEnabledForBucket": True} if object_lock else {}
        self.client().create_bucket(Bucket=name, **lock)
        return name

    def log(self, name: str = "client.rgw.bed") -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start_gateway(
        self, name: str, *, ssl: tuple[Path, Path] | None = None, **settings: str
    ) -> str:
        """One more radosgw on the same cluster (same users, buckets and objects) with its own
        frontend and `settings` (e.g. rgw_dns_name); its endpoint URL. HTTPS with `ssl`, a
        (certificate, key) pair of PEM files."""
        frontend, endpoint = _frontend(free_port(), ssl)
        lines = [f"[client.rgw.{name}]", f"rgw_frontends = {frontend}"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        with self.config.open("a") as conf:
            conf.write("\n" + "\n".join(lines) + "\n")
        process = _daemon(
            ["radosgw", "-c", str(self.config), "-f", "-n", f"client.rgw.{name}"],
            self.root,
            f"radosgw-{name}",
        )
        self.processes[f"radosgw-{name}"] = process
        _wait_for_s3(endpoint, process, time.monotonic() + 60, self.log(f"client.rgw.{name}"))
        return endpoint

    def stop_gateway(self, name: str) -> None:
        _stop(self.processes.pop(f"radosgw-{name}"))

    def stop(self) -> None:
        """The gateways first, then the OSD, then the monitor; each by its PID."""
        order = sorted(self.processes, key=lambda n: (n != "radosgw", not n.startswith("radosgw")))
        for name in [n for n in order if n not in ("osd", "mon")] + ["osd", "mon"]:
            process = self.processes.get(name)
            if process is not None:
                _stop(process)
        shutil.rmtree(self.root, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _frontend(port: int, ssl: tuple[Path, Path] | None) -> tuple[str, str]:
    """beast's frontend line for a loopback port, and the endpoint URL it serves."""
    if ssl is None:
        return f"beast endpoint=127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    cert, key = ssl
    line = f"beast ssl_endpoint=127.0.0.1:{port} ssl_certificate={cert} ssl_private_key={key}"
    return line, f"https://127.0.0.1:{port}"


def _run(argv: list[str], *, timeout: float = 60.0) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def _daemon(argv: list[str], root: Path, name: str) -> subprocess.Popen[bytes]:
    out = (root / "log" / f"{name}.out").open("wb")
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        out.close()


def start_rgw(
    root: Path,
    *,
    ssl: tuple[Path, Path] | None = None,
    timeout: float = 90.0,
) -> RgwServer:
    """Build and start the cluster under `root` (removed again by `stop()`).

    `ssl`: (certificate, key) PEM files; radosgw then serves HTTPS instead of HTTP.
    """
    began = time.monotonic()
    for sub in ("run", "log", "mon", "osd/ceph-0"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    mon_v2, mon_v1 = free_port(), free_port()
    frontend, endpoint = _frontend(free_port(), ssl)
    conf = root / "ceph.conf"
    conf.write_text(_config(root, fsid, mon_v2, mon_v1, frontend))
    c = ["-c", str(conf)]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    server = RgwServer(endpoint, root, conf, processes, 0.0)
    try:
        monmap = root / "monmap"
        _run(
            ["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
             f"[v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]", str(monmap)]
        )  # fmt: skip
        _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(monmap)])
        # The OSD's store is made while the monitor starts and registers it (id 0: the first).
        osd_uuid = str(uuid.uuid4())
        mkfs = subprocess.Popen(
            ["ceph-osd", *c, "--no-mon-config", "--mkfs", "-i", "0", "--osd-uuid", osd_uuid],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        processes["mkfs"] = mkfs  # stopped with the rest if what follows fails
        processes["mon"] = _daemon(["ceph-mon", *c, "-f", "-i", "a"], root, "mon")
        osd_id = _run(["ceph", *c, "--connect-timeout", "30", "osd", "new", osd_uuid]).strip()
        _, err = mkfs.communicate(timeout=120)
        del processes["mkfs"]
        if mkfs.returncode != 0 or osd_id != "0":
            raise RuntimeError(
                f"ceph-osd --mkfs failed ({mkfs.returncode}, id {osd_id}): {err[-2000:]!r}"
            )
        processes["osd"] = _daemon(["ceph-osd", *c, "-f", "-i", osd_id], root, "osd")
        _set_up_gateway(c)
        processes["radosgw"] = _daemon(
            ["radosgw", *c, "-f", "-n", "client.rgw.bed"], root, "radosgw"
        )
        _wait_for_s3(endpoint, processes["radosgw"], began + timeout, server.log())
    except BaseException:
        server.stop()
        raise
    server.started_in = time.monotonic() - began
    return server


def _set_up_gateway(c: list[str]) -> None:
    """The S3 user and the extra storage classes, written into RADOS before radosgw reads
    them (no restart). radosgw-admin creates the default zone group and zone on first use."""
    admin = ["radosgw-admin", *c, "-n", "client.rgw.bed"]
    _run(
        [*admin, "user", "create", "--uid", USER, "--display-name", USER,
         "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]
    )  # fmt: skip
    for storage_class in STORAGE_CLASSES:
        _run(
            [*admin, "zonegroup", "placement", "add", "--rgw-zonegroup", "default",
             "--placement-id", "default-placement", "--storage-class", storage_class]
        )  # fmt: skip
        _run(
            [*admin, "zone", "placement", "add", "--rgw-zone", "default",
             "--placement-id", "default-placement", "--storage-class", storage_class,
             "--data-pool", f"default.rgw.{storage_class.lower()}.data"]
        )  # fmt: skip


def _wait_for_s3(
    endpoint: str, gateway: subprocess.Popen[bytes], deadline: float, log: str
) -> None:
    """Until radosgw answers an anonymous ListBuckets (any HTTP answer will do)."""
    import ssl

    context = ssl._create_unverified_context()  # the bed's own certificate, when HTTPS
    while True:
        if gateway.poll() is not None:
            raise RuntimeError(f"radosgw exited ({gateway.returncode}): {log}")
        try:
            with urllib.request.urlopen(endpoint, timeout=2, context=context):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"radosgw at {endpoint} did not answer in time: {log}") from None
            time.sleep(0.05)


def status(server: RgwServer) -> dict[str, Any]:
    """`ceph status` as JSON, for a failing test's message."""
    out = _run(["ceph", "-c", str(server.config), "status", "--format", "json"])
    return dict(json.loads(out))


if __name__ == "__main__":  # a manual check: start, report, stop
    import tempfile

    server = start_rgw(Path(tempfile.mkdtemp(prefix="rgw-")))
    print(f"{server.endpoint_url} up in {server.started_in:.1f} s, pids {server.pids}")
    print(server.create_bucket())
    server.stop()
    print("stopped, removed:", not os.path.exists(server.root))

"""A registry that accepts and then says nothing, through the real `bale` command: the fault
proxy in front of a real docker-registry stops mid-headers or mid-body and holds the connection
open. The request is called stalled after `--read-timeout`, retried once only, and the error
line says so in words; `--command-timeout` ends the whole command: a run is cut as Ctrl-C cuts
it (uploads aborted, the report written), with exit code 124."""

from __future__ import annotations

import json
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bed.cli import isolated_env, run_bale, start_bale
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.proxy import FaultProxy, Stall
from tests.bed.registry import RegistryServer
from tests.bed.store_view import S3View, check_no_dangling

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, image_factory: ImageFactory) -> BuiltImage:
    return image_factory.build_and_push(
        f"{registry.host}/stall/app:1", layers=[LayerSpec(300_000, seed=1302)]
    )


@pytest.fixture
def proxy(registry: RegistryServer, pushed: BuiltImage) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p
        for fault in p.faults:
            if isinstance(fault, Stall):
                fault.release()


@pytest.fixture
def silent() -> Iterator[str]:
    """A TCP server on loopback that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in accepted:
        conn.close()


def _internal_names_absent(text: str) -> None:
    for name in ("Pool", "ReadTimeoutError", "_Quiet", "Traceback", "urllib3"):
        assert name not in text


@pytest.mark.parametrize("head", [0, 20], ids=["before-headers", "mid-headers"])
def test_stalled_headers_fail_after_one_retry(proxy: FaultProxy, head: int) -> None:
    proxy.add(Stall(method="GET", path="/manifests/", head=head, times=None))
    run = run_bale(
        "inspect",
        f"docker://{proxy.host}/stall/app:1",
        "--tls-verify=false",
        "--read-timeout",
        "1s",
        timeout=60,
    )
    assert run.returncode == 1, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith(f"bale: error: {proxy.host}/stall/app:1: ")
    assert f"no data from {proxy.host} for 1 s" in line
    assert "gave up after 2 attempts; --read-timeout" in line
    _internal_names_absent(run.stderr)
    assert len(proxy.find("GET", "/manifests/")) == 2  # a stall is retried once, not five times


def test_stalled_blob_body_fails_after_one_retry(
    proxy: FaultProxy, pushed: BuiltImage, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    layer = pushed.layers[0]
    blob = f"/blobs/{layer.digest}"
    proxy.add(Stall(method="GET", path=blob, after=1000, times=None))
    run = run_bale(
        "archive",
        f"docker://{proxy.host}/stall/app:1",
        "--to",
        str(tmp_path / "store"),
        "--src-tls-verify=false",
        "--read-timeout",
        "1",
        timeout=60,
    )
    assert run.returncode == 1, run.stderr
    # The 1000 bytes of a read that timed out are not kept: the stream restarts at byte 0.
    assert f"no data from {proxy.host} for 1 s at byte 0 of {layer.size}" in run.stderr
    assert "gave up after 2 attempts; --read-timeout" in run.stderr
    _internal_names_absent(run.stderr)
    assert len(proxy.find("GET", blob)) == 2
    assert not list((tmp_path / "store").rglob("*.tar"))


@pytest.mark.parametrize("command", ["inspect", "archive"])
def test_command_timeout_ends_the_command(proxy: FaultProxy, command: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proxy.add(Stall(method="GET", path="/manifests/", head=0, times=None, seconds=120))
    ref = f"docker://{proxy.host}/stall/app:1"
    args = (
        ["inspect", ref, "--tls-verify=false"]
        if command == "inspect"
        else ["archive", ref, "--to", str(tmp_path / "s"), "--src-tls-verify=false"]
    )
    # The read timeout alone would take minutes; the subprocess limit is 60 s.
    run = run_bale(*args, "--read-timeout", "100s", "--command-timeout", "2s", timeout=60)
    assert run.returncode == 124, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("bale: error:")]
    assert lines == ["bale: error: command timed out after 2 s (--command-timeout)"]
    _internal_names_absent(run.stderr)


@pytest.fixture(scope="module")
def big(registry: RegistryServer, image_factory: ImageFactory) -> str:
    """An image whose 20 MiB layer is three multipart parts (8 MiB each) in S3."""
    ref = f"{registry.host}/timeout/big:1"
    image_factory.build_and_push(ref, layers=[LayerSpec(20 * 1024 * 1024, "none", seed=1311)])
    return ref


TIMED_OUT = "command timed out after 6 s (--command-timeout)"


def timed_out_at_2m(view: S3View, tmp_path: Path, *args: str) -> str:
    """Run bale at `--limit-rate 2M` with `--command-timeout 6s`, watching `view` for an open
    multipart upload while it runs; its stderr, once it exited 124 with one under way."""
    proc = start_bale(
        *args,
        "--src-tls-verify=false",
        "--limit-rate",
        "2M",
        "--command-timeout",
        "6s",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    seen_open = False
    while proc.poll() is None:  # a bound of the test, not a speed: bale itself stops at 6 s
        seen_open = seen_open or bool(view.uploads())
        time.sleep(0.05)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 124, err
    assert seen_open, "no multipart upload was under way when the time ran out"
    assert "Traceback" not in err, err
    return err


def test_command_timeout_mid_transfer_aborts_uploads_and_writes_the_report(
    big: str, moto_server: MotoServer, tmp_path: Path
) -> None:
    """A real slow transfer (`--limit-rate 2M`, a 20 MiB layer in 8 MiB parts) outlives
    `--command-timeout 6s`: the run stops as on Ctrl-C, the multipart upload under way is
    aborted, the report and JUnit say the image timed out, and the exit code is 124."""
    bucket = moto_server.create_bucket()
    view = S3View(moto_server, bucket, "arch")
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    store = [f"s3://{bucket}/arch", "--endpoint-url", moto_server.endpoint_url]
    reports = ["--report", str(report), "--junit", str(junit)]
    err = timed_out_at_2m(view, tmp_path, "archive", f"docker://{big}", "--to", *store, *reports)
    assert view.uploads() == []
    stored = view.keys()
    check_no_dangling(stored)
    assert not any(k.endswith((".tar", ".json")) for k in stored)
    assert (
        f"bale: error: {TIMED_OUT}; 0 done, 1 interrupted, report written to {report} and {junit}"
        in err
    )
    data = json.loads(report.read_text())
    assert [(i["status"], i["error"]) for i in data["images"]] == [("interrupted", TIMED_OUT)]
    errors = [c.find("error") for c in ET.parse(junit).getroot().iter("testcase")]
    assert [e.get("message") if e is not None else None for e in errors] == [TIMED_OUT]


def test_command_timeout_mid_copy_to_a_tar_in_s3_leaves_nothing(
    big: str, moto_server: MotoServer, tmp_path: Path
) -> None:
    """`copy` to an oci-archive in S3 (one image, the main thread in the engine) cut by the
    timeout: no tar, whole or partial, and no open upload; one line, exit 124."""
    bucket = moto_server.create_bucket()
    view = S3View(moto_server, bucket, "tars")
    target = [f"oci-archive:s3://{bucket}/tars/app.tar", "--endpoint-url", moto_server.endpoint_url]
    err = timed_out_at_2m(view, tmp_path, "copy", f"docker://{big}", *target)
    assert err.strip().splitlines()[-1] == f"bale: error: {TIMED_OUT}"
    assert view.uploads() == [] and view.keys() == set()


def test_read_timeout_must_be_positive(proxy: FaultProxy) -> None:
    run = run_bale(
        "inspect", f"docker://{proxy.host}/stall/app:1", "--read-timeout", "0", timeout=60
    )
    assert run.returncode == 2
    assert "--read-timeout" in run.stderr


def test_silent_server_over_tls_and_insecure_probe(silent: str) -> None:
    tls = run_bale("inspect", f"docker://{silent}/x/y:1", "--read-timeout", "1s", timeout=60)
    assert tls.returncode == 1
    assert f"no data from {silent} for 1 s (gave up after 2 attempts; --read-timeout)" in tls.stderr
    # --tls-verify=false tries https, then http: silent both ways is the answer, no third wait.
    insecure = run_bale(
        "inspect",
        f"docker://{silent}/x/y:1",
        "--tls-verify=false",
        "--read-timeout",
        "1",
        timeout=60,
    )
    assert insecure.returncode == 1
    assert f"no data from {silent} for 1 s, over https or http" in insecure.stderr
    _internal_names_absent(tls.stderr + insecure.stderr)

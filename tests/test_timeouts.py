"""A registry that accepts and then says nothing, through the real `bale` command: the fault
proxy in front of a real docker-registry stops mid-headers or mid-body and holds the connection
open. The request is called stalled after `--read-timeout`, retried once only, and the error
line says so in words; `--command-timeout` ends the whole command."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.bed.cli import run_bale
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.proxy import FaultProxy, Stall
from tests.bed.registry import RegistryServer

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
    assert run.returncode == 1, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("bale: error:")]
    assert lines == ["bale: error: command timed out after 2 s (--command-timeout)"]
    _internal_names_absent(run.stderr)


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

"""`bale copy docker://… docker-archive:FILE` of layers large enough for the direct write path:
the file is byte for byte the tar written to stdout, and a corrupt blob leaves nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bed.cli import run_bale
from tests.bed.images import LayerSpec
from tests.bed.proxy import Corrupt, FaultProxy, ResetAfter

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture(scope="module")
def big(registry, image_factory):  # type: ignore[no-untyped-def]
    """Layers of 20 MiB + 13 bytes, 3000 bytes and 9 MiB: whole and odd blocks, tar padding."""
    layers = (
        LayerSpec(20 * MiB + 13, seed=811),
        LayerSpec(3000, seed=812),
        LayerSpec(9 * MiB, seed=813),
    )
    image = image_factory.image(layers=layers, format="docker")
    return image_factory.push(image, f"{registry.host}/copydirect/img:1", registry)


@pytest.fixture
def proxy(registry):  # type: ignore[no-untyped-def]
    p = FaultProxy(registry.host).start()
    yield p
    p.stop()


def test_file_is_the_stdout_tar_byte_for_byte(big, registry, skopeo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = f"docker://{registry.host}/copydirect/img:1"
    out = tmp_path / "x.tar"
    proc = run_bale("copy", "--src-tls-verify=false", src, f"docker-archive:{out}", text=False)
    assert proc.returncode == 0, proc.stderr
    piped = run_bale("copy", "--src-tls-verify=false", src, "docker-archive:-", text=False)
    assert piped.returncode == 0, piped.stderr
    assert out.stat().st_size > 29 * MiB
    assert out.read_bytes() == piped.stdout
    assert len(skopeo.inspect(f"docker-archive:{out}")["Layers"]) == 3
    assert os.listdir(tmp_path) == ["x.tar"]


def test_reset_midway_resumes_into_the_same_tar(big, proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = f"docker://{proxy.host}/copydirect/img:1"
    proxy.add(ResetAfter(path="/blobs/" + big.layers[0].digest, after=7 * MiB))
    out = tmp_path / "x.tar"
    proc = run_bale("copy", "--src-tls-verify=false", src, f"docker-archive:{out}", text=False)
    assert proc.returncode == 0, proc.stderr
    assert b"resuming" in proc.stderr
    clean = tmp_path / "clean.tar"
    assert (
        run_bale(
            "copy", "--src-tls-verify=false", src, f"docker-archive:{clean}", text=False
        ).returncode
        == 0
    )
    assert out.read_bytes() == clean.read_bytes()


@pytest.mark.parametrize("layer", [0, 2])
def test_corrupt_blob_leaves_nothing(big, proxy, tmp_path: Path, layer: int) -> None:  # type: ignore[no-untyped-def]
    digest = big.layers[layer].digest
    # On every read: a corruption once is fetched again (tests/test_engine_faults.py).
    proxy.add(Corrupt(path="/blobs/" + digest, times=None))
    out = tmp_path / "x.tar"
    proc = run_bale(
        "copy", "--src-tls-verify=false", f"docker://{proxy.host}/copydirect/img:1",
        f"docker-archive:{out}", text=False)  # fmt: skip
    assert proc.returncode != 0
    assert f"expected {digest}".encode() in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == [], "no tar, no temporary file"

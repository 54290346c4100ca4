"""End to end against Ceph RGW (a real S3 implementation, tests/bed/rgw.py) through the `bale`
command: archive -> verify -> restore -> podman load of the tar as RGW holds it, and a stock
registry (distribution's S3 driver) serving the archive straight from RGW."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.refs import Reference
from tests.bed.images import LayerSpec
from tests.bed.registry import S3Storage
from tests.bed.rgw import RgwServer
from tests.test_faults import bale, cli_env, show

pytestmark = pytest.mark.integration
MiB = 1 << 20


def rgw_env(rgw_server: RgwServer, tmp_path: Path) -> dict[str, str]:
    return cli_env(
        tmp_path,
        {
            "AWS_ACCESS_KEY_ID": rgw_server.access_key,
            "AWS_SECRET_ACCESS_KEY": rgw_server.secret_key,
        },
    )


def podman_load(tar: Path, root: Path) -> str:
    """`podman load` of `tar` into a throwaway storage; the images it then lists."""
    runroot = tempfile.mkdtemp(prefix="bale-prr-")  # podman caps runroot at 50 characters
    podman = ["podman", "--storage-driver", "vfs", "--root", str(root), "--runroot", runroot]
    try:
        proc = subprocess.run([*podman, "load", "-i", str(tar)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return subprocess.run(
            [*podman, "images", "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def test_archive_verify_restore_load_and_stock_registry_on_rgw(
    registry, make_registry, rgw_server, image_factory, skopeo, unique_repo, tmp_path: Path
) -> None:
    layers = (LayerSpec(7 * MiB, seed=1501), LayerSpec(300_000, seed=1502))
    pushed = image_factory.push(
        image_factory.image(layers=layers), f"{registry.host}/{unique_repo}:r", registry
    )
    env = rgw_env(rgw_server, tmp_path)
    bucket = rgw_server.create_bucket()
    store = [f"s3://{bucket}/arch", "--endpoint-url", rgw_server.endpoint_url]
    src = f"docker://{registry.host}/{unique_repo}:r"

    archived = bale("-v", "archive", src, "--to", *store, "--src-tls-verify=false", env=env)
    assert archived.returncode == 0, show(archived)
    # -v says what the probe found on RGW and what bale does about it.
    assert "CompleteMultipartUpload ignores If-None-Match" in archived.stderr, show(archived)
    again = bale("archive", src, "--to", *store, "--src-tls-verify=false", "--force", env=env)
    assert again.returncode == 0, show(again)
    verified = bale("verify", *store, env=env)
    assert verified.returncode == 0 and verified.stdout == "", show(verified)

    back = f"docker://{registry.host}/{unique_repo}-back:r"
    restored = bale(
        "restore", src, back, "--from", store[0], *store[1:], "--dest-tls-verify=false", env=env
    )
    assert restored.returncode == 0, show(restored)
    assert skopeo.inspect(back)["Digest"] == pushed.digest

    # The tar as RGW holds it, fetched with boto3 (not bale), loads into podman.
    ref = Reference.parse(f"{registry.host}/{unique_repo}:r")
    tar = tmp_path / "from-rgw.tar"
    body = rgw_server.client().get_object(Bucket=bucket, Key=f"arch/{layout.tar_key_for(ref)}")
    tar.write_bytes(body["Body"].read())
    assert f"{ref.name}:r" in podman_load(tar, tmp_path / "podman")

    stock = make_registry(
        storage=S3Storage(
            regionendpoint=rgw_server.endpoint_url,
            bucket=bucket,
            accesskey=rgw_server.access_key,
            secretkey=rgw_server.secret_key,
            rootdirectory="/arch",
        ),
        readonly=True,
    )
    served = f"docker://{stock.host}/{registry.host.replace(':', '-')}/{unique_repo}:r"
    assert skopeo.inspect(served)["Digest"] == pushed.digest
    skopeo.copy(served, f"oci:{tmp_path / 'pulled'}", "--src-tls-verify=false")

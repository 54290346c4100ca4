"""`bale copy docker://… docker-archive:/oci-archive:` to a path, stdout and S3, streamed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.transports.names import ArchiveTransport, RegistryTransport, parse_transport
from tests.bed.cli import isolated_env, run_bale
from tests.bed.images import LayerSpec
from tests.bed.moto import MOTO_KEYS


@pytest.mark.parametrize(
    ("text", "location", "name"),
    [
        ("docker-archive:/tmp/x.tar", "/tmp/x.tar", None),
        ("docker-archive:/tmp/x.tar:app:1", "/tmp/x.tar", "app:1"),
        ("oci-archive:-", "-", None),
        ("oci-archive:s3://b/k.tar:latest", "s3://b/k.tar", "latest"),
        ("docker-archive:oss://bucket/dir/n.tar", "oss://bucket/dir/n.tar", None),
    ],
)
def test_parse_archive_transport(text: str, location: str, name: str | None) -> None:
    t = parse_transport(text)
    assert isinstance(t, ArchiveTransport)
    assert (t.location, t.name) == (location, name)


def test_parse_registry_transport_and_errors() -> None:
    assert isinstance(parse_transport("docker://nginx:1"), RegistryTransport)
    for bad in ("nginx:1", "dir:/x", "docker-archive:", "docker-archive:/x.tar:"):
        with pytest.raises(UsageError):
            parse_transport(bad)


@pytest.mark.integration
def test_copy_to_file_stdout_and_s3(
    registry, moto_server, image_factory, skopeo, unique_repo, tmp_path: Path
):
    image = image_factory.image(layers=(LayerSpec(6 << 20, seed=801), LayerSpec(3000, seed=802)))
    pushed = image_factory.push(image, f"{registry.host}/{unique_repo}:c", registry)
    src = f"docker://{registry.host}/{unique_repo}:c"

    out = tmp_path / "c.tar"
    proc = run_bale(
        "copy", src, f"docker-archive:{out}:team/renamed:2", "--src-tls-verify=false", text=False
    )
    assert proc.returncode == 0, proc.stderr
    assert len(skopeo.inspect(f"docker-archive:{out}")["Layers"]) == 2
    assert skopeo.inspect(f"oci-archive:{out}")["Digest"] == pushed.digest
    manifest = json.loads(
        subprocess.run(
            ["tar", "-xOf", str(out), "manifest.json"], capture_output=True, check=True
        ).stdout
    )
    assert manifest[0]["RepoTags"] == ["docker.io/team/renamed:2"]

    proc = run_bale("copy", src, "oci-archive:-", "--src-tls-verify=false", text=False)
    assert proc.returncode == 0, proc.stderr
    piped = tmp_path / "piped.tar"
    piped.write_bytes(proc.stdout)
    assert skopeo.inspect(f"oci-archive:{piped}")["Digest"] == pushed.digest

    bucket = moto_server.create_bucket()
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    proc = run_bale(
        "copy",
        src,
        f"docker-archive:s3://{bucket}/tars/c.tar",
        "--src-tls-verify=false",
        env=env,
        text=False,
    )
    assert proc.returncode == 0, proc.stderr
    body = moto_server.client().get_object(Bucket=bucket, Key="tars/c.tar")["Body"].read()
    fetched = tmp_path / "s3.tar"
    fetched.write_bytes(body)
    assert skopeo.inspect(f"oci-archive:{fetched}")["Digest"] == pushed.digest


@pytest.mark.integration
def test_copy_missing_image_writes_nothing(registry, unique_repo, tmp_path: Path):
    out = tmp_path / "none.tar"
    proc = run_bale(
        "copy",
        f"docker://{registry.host}/{unique_repo}:nope",
        f"docker-archive:{out}",
        "--src-tls-verify=false",
        text=False,
    )
    assert proc.returncode == 1
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    assert not out.exists()

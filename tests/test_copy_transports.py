"""`bale copy` into registries: from skopeo's docker-archive, docker save's old layout, our own
tars on S3, stdin, and from another registry; digests kept, bad tars refused before any push."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.bed.cli import isolated_env, run_bale
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS
from tests.bed.registry import RegistryServer
from tests.bed.tars import file_entry, make_tar, members_of, old_docker_save

pytestmark = pytest.mark.integration


def _ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


@pytest.fixture(scope="module")
def source(registry: RegistryServer, image_factory: ImageFactory) -> dict[str, BuiltImage]:
    """Images in the anonymous registry: schema2 (gzip layers), OCI index."""
    docker = image_factory.image(
        layers=(LayerSpec(150_000, seed=6101), LayerSpec(20_000, seed=6102)), format="docker"
    )
    index = image_factory.index(layers=(LayerSpec(30_000, seed=6103),))
    return {
        "docker": image_factory.push(docker, "copyt/src:docker", registry),
        "index": image_factory.push(index, "copyt/src:index", registry),
    }


def test_skopeo_docker_archive_into_a_registry(
    source: dict[str, BuiltImage],
    registry: RegistryServer,
    htpasswd_registry: RegistryServer,
    skopeo,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = source["docker"]
    tar = tmp_path / "skopeo.tar"
    skopeo.copy(
        f"docker://{image.reference}", f"docker-archive:{tar}:app:1", "--src-tls-verify=false"
    )
    dest = htpasswd_registry
    target = f"docker://{dest.host}/{unique_repo}:1"
    _ok(
        run_bale(
            "copy",
            f"docker-archive:{tar}",
            target,
            "--dest-tls-verify=false",
            "--dest-creds",
            dest.creds or "",
            text=False,
        )
    )
    # skopeo pulls it back (verifying every blob) and sees the same config and layer tars.
    skopeo.copy(
        target, f"oci:{tmp_path / 'back'}", "--src-tls-verify=false", f"--src-creds={dest.creds}"
    )
    assert skopeo.inspect(target, registry=dest, config=True, raw=True) == image.config
    info = skopeo.inspect(target, registry=dest)
    assert info["Layers"] == list(image.diff_ids)  # skopeo's archive holds uncompressed layers


def test_old_docker_save_and_stdin(
    source: dict[str, BuiltImage],
    registry: RegistryServer,
    skopeo,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    image = source["docker"]
    data = old_docker_save(image, ["team/app:2"])
    tar = tmp_path / "old.tar"
    tar.write_bytes(data)
    target = f"docker://{registry.host}/{unique_repo}"

    # From a pipe: held in memory, within --stdin-memory.
    _ok(
        run_bale(
            "copy",
            "docker-archive:-",
            f"{target}:piped",
            "--dest-tls-verify=false",
            input=data,
            text=False,
        )
    )
    # Redirected from a file: read in place.
    with tar.open("rb") as f:
        _ok(
            run_bale(
                "copy",
                "docker-archive:-:team/app:2",
                f"{target}:file",
                "--dest-tls-verify=false",
                stdin=f,
                text=False,
            )
        )
    # A pipe over the limit is refused before anything is written.
    mark = registry.mark()
    proc = run_bale(
        "copy",
        "docker-archive:-",
        f"{target}:big",
        "--dest-tls-verify=false",
        "--stdin-memory",
        "64K",
        input=data,
        text=False,
    )
    assert proc.returncode == 2
    assert b"--stdin-memory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert registry.count(since=mark) == 0

    piped = skopeo.inspect(f"{target}:piped")
    assert piped["Digest"] == skopeo.inspect(f"{target}:file")["Digest"]
    assert piped["Layers"] == list(image.diff_ids)
    assert skopeo.inspect(f"{target}:piped", config=True, raw=True) == image.config


def test_our_oci_archive_on_s3_into_a_registry(
    source: dict[str, BuiltImage],
    token_registry: RegistryServer,
    moto_server,
    skopeo,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    bucket = moto_server.create_bucket()
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    dest = token_registry
    for kind, extra in (("docker", ()), ("index", ("--all-platforms",))):
        image = source[kind]
        location = f"s3://{bucket}/tars/{kind}.tar"
        _ok(
            run_bale(
                "copy",
                f"docker://{image.reference}",
                f"oci-archive:{location}",
                "--src-tls-verify=false",
                *extra,
                env=env,
                text=False,
            )
        )
        target = f"docker://{dest.host}/{unique_repo}:{kind}"
        _ok(
            run_bale(
                "copy",
                f"oci-archive:{location}",
                target,
                "--dest-tls-verify=false",
                "--dest-creds",
                dest.creds or "",
                env=env,
                text=False,
            )
        )
        assert skopeo.inspect(target, registry=dest)["Digest"] == image.digest
        assert skopeo.inspect(target, registry=dest, raw=True) == image.manifest


def test_registry_to_registry(
    source: dict[str, BuiltImage],
    registry: RegistryServer,
    htpasswd_registry: RegistryServer,
    skopeo,
    unique_repo: str,
) -> None:
    index = source["index"]
    dest = htpasswd_registry
    # Across registries, with the destination's credentials only.
    target = f"docker://{dest.host}/{unique_repo}:all"
    _ok(
        run_bale(
            "copy",
            f"docker://{index.reference}",
            target,
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-creds",
            dest.creds or "",
            text=False,
        )
    )
    assert skopeo.inspect(target, registry=dest)["Digest"] == index.digest
    for child in index.children:
        got = skopeo.inspect(
            f"docker://{dest.host}/{unique_repo}@{child.digest}", registry=dest, raw=True
        )
        assert got == child.manifest

    # Within one registry: every blob mounted, none sent.
    mark = registry.mark()
    same = f"docker://{registry.host}/{unique_repo}:mounted"
    _ok(
        run_bale(
            "copy",
            f"docker://{index.reference}",
            same,
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            text=False,
        )
    )
    posts = registry.requests("POST", r"/blobs/uploads/$", since=mark)
    assert len(posts) == len(index.blobs) and all(e.status == 201 for e in posts)
    assert all("mount=" in e.query for e in posts)
    assert registry.count("PUT", r"/blobs/uploads/", since=mark) == 0
    assert registry.count("GET", r"/blobs/", since=mark) == 0
    assert skopeo.inspect(same)["Digest"] == index.digest

    # --platform picks one image of the index: its own manifest, its own digest.
    arm = f"docker://{registry.host}/{unique_repo}:arm"
    _ok(
        run_bale(
            "copy",
            f"docker://{index.reference}",
            arm,
            "--platform",
            "linux/arm64",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            text=False,
        )
    )
    assert skopeo.inspect(arm)["Digest"] == index.child("linux/arm64").digest


def test_bad_tars_push_nothing(
    source: dict[str, BuiltImage], registry: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    image = source["docker"]
    ours = tmp_path / "ours.tar"
    _ok(
        run_bale(
            "copy",
            f"docker://{image.reference}",
            f"docker-archive:{ours}",
            "--src-tls-verify=false",
            text=False,
        )
    )
    data = ours.read_bytes()
    layer = image.layers[0]
    missing = tmp_path / "missing.tar"
    missing.write_bytes(make_tar(members_of(data, drop=f"blobs/sha256/{layer.hex}")))
    escape = tmp_path / "escape.tar"
    escape.write_bytes(make_tar([*members_of(data), file_entry("../evil", b"x")]))
    not_a_tar = tmp_path / "junk.tar"
    not_a_tar.write_bytes(b"junk" * 1000)

    target = f"docker://{registry.host}/{unique_repo}:bad"
    mark = registry.mark()
    for path, message in (
        (missing, layer.digest),
        (escape, ".."),
        (not_a_tar, "checksum"),
        (tmp_path / "absent.tar", "cannot open"),
    ):
        proc = run_bale(
            "copy", f"docker-archive:{path}", target, "--dest-tls-verify=false", text=False
        )
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.decode()
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert registry.count(since=mark) == 0
    proc = run_bale("copy", f"docker-archive:{ours}", f"{target}@sha256:{'0' * 64}", text=False)
    assert proc.returncode == 2

    # The intact tar goes in, under the manifest the registry served.
    _ok(run_bale("copy", f"docker-archive:{ours}", target, "--dest-tls-verify=false", text=False))
    tags = json.loads(
        _ok(
            run_bale(
                "list-tags",
                f"docker://{registry.host}/{unique_repo}",
                "--tls-verify=false",
                text=False,
            )
        ).stdout
    )
    assert tags["Tags"] == ["bad"]


def test_tar_with_part_of_an_index(
    source: dict[str, BuiltImage],
    registry: RegistryServer,
    skopeo,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    """A tar whose index lacks one platform's blobs (as Docker 25+ saves a multi-platform image
    it pulled for one platform): the platform it has goes in under its own digest; asking for
    every platform is refused before anything is pushed."""
    index = source["index"]
    full = tmp_path / "full.tar"
    _ok(
        run_bale(
            "copy",
            f"docker://{index.reference}",
            f"oci-archive:{full}",
            "--all-platforms",
            "--src-tls-verify=false",
            text=False,
        )
    )
    arm = index.child("linux/arm64")
    partial = tmp_path / "partial.tar"
    partial.write_bytes(
        make_tar(members_of(full.read_bytes(), drop=f"blobs/sha256/{arm.layers[0].hex}"))
    )
    target = f"docker://{registry.host}/{unique_repo}"
    mark = registry.mark()
    proc = run_bale(
        "copy",
        f"oci-archive:{partial}",
        f"{target}:all",
        "--all-platforms",
        "--dest-tls-verify=false",
        text=False,
    )
    assert proc.returncode == 2 and arm.layers[0].digest in proc.stderr.decode()
    assert registry.count(since=mark) == 0
    _ok(
        run_bale(
            "copy",
            f"oci-archive:{partial}",
            f"{target}:amd64",
            "--dest-tls-verify=false",
            text=False,
        )
    )
    assert skopeo.inspect(f"{target}:amd64")["Digest"] == index.child("linux/amd64").digest
    _ok(
        run_bale(
            "copy", f"oci-archive:{full}", f"{target}:whole", "--dest-tls-verify=false", text=False
        )
    )
    assert skopeo.inspect(f"{target}:whole")["Digest"] == index.digest

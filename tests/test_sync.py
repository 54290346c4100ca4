"""`bale sync`: the same tags and digests at the destination as `skopeo sync` (1.9.3) gives,
from a repository and from a spec file, with and without --all; tags already there are
skipped with HEADs only; naming, --scoped, --dry-run and --keep-going as skopeo spells them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.errors import InvalidReference, NotFound
from pipeline.ops.sync import destination_for, strip_transport
from pipeline.refs import Reference
from pipeline.registry.client import RegistryClient
from pipeline.registry.transport import ConnectionOptions, RegistryOptions
from tests.bed.cli import run_bale
from tests.bed.fixtures_registry import RegistryFactory
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec, Skopeo
from tests.bed.registry import RegistryServer

# ---- naming (skopeo's path.Join(destination, path.Base(reference))) ------------------------


@pytest.mark.parametrize(
    ("source", "destination", "scoped", "expected"),
    [
        (
            "docker.io/library/busybox:1.36",
            "reg.example:5000",
            False,
            "reg.example:5000/busybox:1.36",
        ),
        (
            "quay.io/team/app:v1",
            "reg.example:5000/mirror/",
            False,
            "reg.example:5000/mirror/app:v1",
        ),
        ("quay.io/team/app:v1", "docker://reg.example/a//b", False, "reg.example/a/b/app:v1"),
        (
            "quay.io/team/app@sha256:" + "a" * 64,
            "reg.example",
            False,
            "reg.example/app@sha256:" + "a" * 64,
        ),
        ("quay.io/team/app:v1", "reg.example/m", True, "reg.example/m/quay.io/team/app:v1"),
        ("busybox:1", "localhost:5000", True, "localhost:5000/docker.io/library/busybox:1"),
        ("quay.io/team/app:v1", "mirror", False, "docker.io/mirror/app:v1"),
    ],
)
def test_destination_names_follow_skopeo(source, destination, scoped, expected):
    dest = destination_for(Reference.parse(source), destination, scoped=scoped)
    assert str(dest) == expected


def test_scoping_a_source_with_a_port_is_refused():
    with pytest.raises(InvalidReference, match="--scoped"):
        destination_for(Reference.parse("127.0.0.1:5000/a/b:1"), "reg.example", scoped=True)


def test_strip_transport():
    assert strip_transport("docker://a/b") == "a/b"
    assert strip_transport("a/b") == "a/b"


# ---- against skopeo ------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    registry: RegistryServer
    prefix: str
    images: dict[str, BuiltImage]
    """`repo:tag` (under prefix) → image."""


@pytest.fixture(scope="module")
def source(registry: RegistryServer, image_factory: ImageFactory) -> Source:
    """Three repositories: OCI and schema2 images, an OCI index and a Docker list, tags for a
    regex to pick from."""
    prefix = "syncsrc"
    base = LayerSpec(150_000, seed=9001)  # shared by several images: mounted/skipped blobs
    images = {
        "alpha:1.0": image_factory.image(layers=(base, LayerSpec(20_000, seed=9002))),
        "alpha:2.0": image_factory.image(layers=(base, LayerSpec(21_000, seed=9003))),
        "alpha:3.0": image_factory.image(layers=(LayerSpec(9_000, seed=9004),), format="docker"),
        "multi:latest": image_factory.index(layers=(LayerSpec(12_000, seed=9005),)),
        "multi:list": image_factory.index(layers=(LayerSpec(13_000, seed=9006),), format="docker"),
        "beta:1.12.1": image_factory.image(layers=(LayerSpec(5_000, seed=9007),)),
        "beta:1.12.2": image_factory.image(layers=(LayerSpec(5_001, seed=9008),)),
        "beta:1.13.0": image_factory.image(layers=(LayerSpec(5_002, seed=9009),)),
        "gamma:only": image_factory.image(layers=(LayerSpec(5_003, seed=9010),)),
    }
    pushed = {k: image_factory.push(v, f"{prefix}/{k}", registry) for k, v in images.items()}
    return Source(registry, prefix, pushed)


def _catalog(server: RegistryServer) -> dict[str, dict[str, str]]:
    """repository → {tag: digest}, for everything the registry holds."""
    with RegistryClient(
        server.host, ConnectionOptions(RegistryOptions(tls_verify=False))
    ) as client:
        resp, _ = client.transport.request("GET", "/v2/_catalog?n=1000")
        repos = json.loads(resp.read())["repositories"]
        out: dict[str, dict[str, str]] = {}
        for repo in repos:
            tags = {}
            try:
                listed = client.list_tags(repo)
            except NotFound:  # distribution: a repository holding untagged manifests only
                listed = []
            for tag in listed:
                found = client.head_manifest(repo, tag)
                assert found is not None
                tags[tag] = found.digest
            out[repo] = tags
        return out


def _has(server: RegistryServer, repo: str, digest: str) -> bool:
    with RegistryClient(
        server.host, ConnectionOptions(RegistryOptions(tls_verify=False))
    ) as client:
        return client.head_manifest(repo, digest) is not None


def _spec(source: Source, path: Path) -> tuple[Path, str]:
    pinned = source.images["gamma:only"].digest
    path.write_text(
        f"""\
{source.registry.host}:
  tls-verify: false
  images:
    {source.prefix}/alpha: []
    {source.prefix}/multi: ["latest", "list"]
    {source.prefix}/gamma: ["{pinned}"]
  images-by-tag-regex:
    {source.prefix}/beta: ^1\\.12\\.
"""
    )
    return path, pinned


def _skopeo_sync(skopeo: Skopeo, *args: str) -> subprocess.CompletedProcess[bytes]:
    return skopeo.run("sync", "--dest-tls-verify=false", *args)


@pytest.mark.integration
@pytest.mark.parametrize("all_images", [False, True], ids=["system-platform", "all"])
def test_spec_sync_gives_what_skopeo_sync_gives(
    all_images: bool,
    source: Source,
    make_registry: RegistryFactory,
    skopeo: Skopeo,
    tmp_path: Path,
):
    spec, pinned = _spec(source, tmp_path / "spec.yaml")
    theirs, ours = make_registry("none"), make_registry("none")
    extra = ["--all"] if all_images else []
    _skopeo_sync(skopeo, "--src", "yaml", "--dest", "docker", *extra, str(spec), f"{theirs.host}/m")
    proc = run_bale(
        "sync", "--src", "yaml", *extra, str(spec), f"docker://{ours.host}/m",
        "--dest-tls-verify=false",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    want, got = _catalog(theirs), _catalog(ours)
    assert got == want
    assert set(want) == {"m/alpha", "m/multi", "m/beta", "m/gamma"}
    assert set(want["m/alpha"]) == {"1.0", "2.0", "3.0"}
    assert set(want["m/beta"]) == {"1.12.1", "1.12.2"}
    assert want["m/gamma"] == {}  # the digest entry is pushed by digest only
    assert _has(theirs, "m/gamma", pinned) and _has(ours, "m/gamma", pinned)
    multi = source.images["multi:latest"]
    if all_images:
        assert want["m/multi"]["latest"] == multi.digest
    else:  # the linux/amd64 image of the index, under its own digest
        assert want["m/multi"]["latest"] == multi.child("linux/amd64").digest


@pytest.mark.integration
def test_repository_sync_gives_what_skopeo_sync_gives_then_skips(
    source: Source, make_registry: RegistryFactory, skopeo: Skopeo
):
    theirs, ours = make_registry("none"), make_registry("none")
    repo = f"{source.registry.host}/{source.prefix}/alpha"
    _skopeo_sync(
        skopeo,
        "--src-tls-verify=false",
        "--src",
        "docker",
        "--dest",
        "docker",
        repo,
        f"{theirs.host}/x/y",
    )
    mark = source.registry.mark()
    proc = run_bale(
        "sync", f"docker://{repo}", f"docker://{ours.host}/x/y",
        "--src-tls-verify=false", "--dest-tls-verify=false",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # one listing serves both the image list and the referrer lookups of the three images
    assert source.registry.count("GET", f"/{source.prefix}/alpha/tags/list", since=mark) == 1
    assert (
        _catalog(ours)
        == _catalog(theirs)
        == {"x/y/alpha": {t: source.images[f"alpha:{t}"].digest for t in ("1.0", "2.0", "3.0")}}
    )
    assert sorted(line.split()[0] for line in proc.stdout.splitlines()) == ["copied"] * 3
    # the shared base layer went up once
    base = source.images["alpha:1.0"].layers[0].digest
    assert ours.count("PUT", "/blobs/uploads/", status=201) == 3 + 3 + 1  # configs, layers, base
    assert source.registry.count("GET", f"/blobs/{base}", since=mark) == 1

    # again: every tag is there with its digest; only HEADs and the tag list, nothing written
    mark_src, mark_dst = source.registry.mark(), ours.mark()
    proc = run_bale(
        "sync", f"docker://{repo}", f"docker://{ours.host}/x/y",
        "--src-tls-verify=false", "--dest-tls-verify=false", "--no-referrers",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["skipped"] * 3
    assert ours.count("PUT", since=mark_dst) == ours.count("POST", since=mark_dst) == 0
    assert ours.count("GET", "/blobs/", since=mark_dst) == 0
    assert source.registry.count("GET", "/blobs/", since=mark_src) == 0
    assert ours.count("HEAD", "/manifests/", since=mark_dst) == 3


@pytest.mark.integration
def test_one_image_and_an_index_without_all(source: Source, make_registry: RegistryFactory):
    ours = make_registry("none")
    multi = source.images["multi:list"]
    proc = run_bale(
        "sync", f"docker://{source.registry.host}/{source.prefix}/multi:list",
        f"docker://{ours.host}", "--src-tls-verify=false", "--dest-tls-verify=false",
        "--platform", "linux/arm64",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _catalog(ours) == {"multi": {"list": multi.child("linux/arm64").digest}}


@pytest.mark.integration
def test_one_image_reads_its_manifest_once_and_gets_nothing_from_the_destination(
    source: Source, make_registry: RegistryFactory
):
    """The round trips of a sync into an empty registry: HEADs answer what is missing (no GET
    after a 404), the source's manifest is read once (its referrers are looked up from it)."""
    ours = make_registry("none")
    image = source.images["gamma:only"]
    mark = source.registry.mark()
    proc = run_bale(
        "sync", f"docker://{source.registry.host}/{source.prefix}/gamma:only",
        f"docker://{ours.host}", "--src-tls-verify=false", "--dest-tls-verify=false",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _catalog(ours) == {"gamma": {"only": image.digest}}
    assert ours.count("GET", "/manifests/") == 0
    assert ours.count("HEAD", "/manifests/", status=404) == 2  # the skip check, the copy's check
    assert source.registry.count("GET", "/manifests/only", since=mark) == 1
    assert source.registry.count("GET", f"/manifests/{image.digest}", since=mark) == 0
    assert source.registry.count("GET", "/gamma/tags/list", since=mark) == 1  # referrers


@pytest.mark.integration
def test_dry_run_writes_nothing_and_scoped_port_source_is_a_usage_error(
    source: Source, make_registry: RegistryFactory, skopeo: Skopeo, tmp_path: Path
):
    ours = make_registry("none")
    spec, _ = _spec(source, tmp_path / "spec.yaml")
    mark = ours.mark()
    proc = run_bale(
        "sync", "--src", "yaml", str(spec), f"docker://{ours.host}/m", "--dest-tls-verify=false",
        "--dry-run",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    statuses = [line.split()[0] for line in proc.stdout.splitlines()]
    assert statuses == ["planned"] * 8
    assert ours.count("PUT", since=mark) == ours.count("POST", since=mark) == 0

    # skopeo refuses a scoped destination with a host:port inside the path; so does bale, first
    with pytest.raises(Exception, match="sync"):
        _skopeo_sync(skopeo, "--src", "yaml", "--dest", "docker", "--scoped", str(spec), ours.host)
    mark = ours.mark()
    proc = run_bale(
        "sync", "--src", "yaml", "--scoped", str(spec), f"docker://{ours.host}",
        "--dest-tls-verify=false",)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--scoped" in proc.stderr
    assert ours.count("PUT", since=mark) == 0


@pytest.mark.integration
def test_a_missing_image_fails_keep_going_does_the_rest(
    source: Source, make_registry: RegistryFactory, tmp_path: Path
):
    ours = make_registry("none")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"{source.registry.host}:\n  tls-verify: false\n  images:\n"
        f'    {source.prefix}/alpha: ["nope", "1.0", "2.0"]\n'
    )
    proc = run_bale(
        "sync", "--src", "yaml", str(spec), f"docker://{ours.host}", "--dest-tls-verify=false",
        "--keep-going", "--jobs", "1",)  # fmt: skip
    assert proc.returncode == 1
    assert "failed" in proc.stderr and ":nope" in proc.stderr
    assert set(_catalog(ours)["alpha"]) == {"1.0", "2.0"}

    other = make_registry("none")
    proc = run_bale(
        "sync", "--src", "yaml", str(spec), f"docker://{other.host}", "--dest-tls-verify=false",
        "--jobs", "1",)  # fmt: skip
    assert proc.returncode == 1
    assert _catalog(other).get("alpha", {}) == {}  # stopped at the first failure

"""`bale restore`: archived images pushed back into real registries with their digests unchanged,
only missing blobs uploaded, mounts within one registry, every archived tag with --all-tags."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.archive.bucket import ArchiveBucket
from pipeline.copy.session import RegistryOptions, Session
from pipeline.ops.archive import ArchiveOptions, Archiver
from pipeline.refs import Reference
from pipeline.store.local import LocalStore
from tests.bed.cli import run_bale
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

BASE = (LayerSpec(200_000, seed=5101), LayerSpec(90_000, seed=5102))


@dataclass(frozen=True)
class Archived:
    """Images pushed to the anonymous registry and archived into one local bucket."""

    store: Path
    images: dict[str, BuiltImage]
    """kind (oci, docker, index, platform) → the image, `reference` set to where it was pushed."""


@pytest.fixture(scope="module")
def archived(
    registry: RegistryServer, image_factory: ImageFactory, tmp_path_factory: pytest.TempPathFactory
) -> Archived:
    repo = f"{registry.host}/restore/src"
    built = {
        "oci": image_factory.image(layers=(*BASE, LayerSpec(40_000, seed=5103))),
        "docker": image_factory.image(layers=(LayerSpec(30_000, seed=5104),), format="docker"),
        "index": image_factory.index(layers=(LayerSpec(20_000, seed=5105),)),
        "platform": image_factory.index(layers=(LayerSpec(10_000, seed=5106),), format="docker"),
    }
    pushed = {k: image_factory.push(img, f"{repo}:{k}", registry) for k, img in built.items()}
    store = tmp_path_factory.mktemp("restore") / "archive"
    bucket = ArchiveBucket(LocalStore(store))
    with Session() as session:
        archiver = Archiver(bucket, session)
        for kind in pushed:
            options = ArchiveOptions()
            if kind == "platform":  # only linux/arm64 stored: the tag names that manifest
                options = ArchiveOptions(platform=_platform("linux/arm64"))
            result = archiver.archive(
                Reference.parse(f"{repo}:{kind}"), RegistryOptions(tls_verify=False), options
            )
            assert result.status == "archived", result.error
    return Archived(store, pushed)


def _platform(text: str):
    from pipeline.oci import Platform

    return Platform.parse(text)


def _restore(archived: Archived, image: str, dest: str, *extra: str) -> str:
    proc = run_bale(
        "restore", image, dest, "--from", str(archived.store), "--dest-tls-verify=false", *extra
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("dest_fixture", ["htpasswd_registry", "token_registry"])
def test_restore_keeps_digests_with_auth(
    archived: Archived, skopeo, unique_repo, dest_fixture: str, request: pytest.FixtureRequest
) -> None:
    dest: RegistryServer = request.getfixturevalue(dest_fixture)
    creds = ("--dest-creds", dest.creds)
    for kind in ("oci", "docker", "index"):
        image = archived.images[kind]
        out = _restore(archived, image.reference, f"docker://{dest.host}/{unique_repo}", *creds)
        assert f"{image.digest} -> docker://{dest.host}/{unique_repo}:{kind}" in out
        target = f"docker://{dest.host}/{unique_repo}:{kind}"
        assert skopeo.inspect(target, registry=dest)["Digest"] == image.digest
        raw = skopeo.inspect(target, registry=dest, raw=True)
        assert raw == image.manifest  # the exact bytes, not a re-serialisation
    index = archived.images["index"]
    for child in index.children:  # every platform came back, not only the default one
        ref = f"docker://{dest.host}/{unique_repo}@{child.digest}"
        assert skopeo.inspect(ref, registry=dest, raw=True) == child.manifest
    # Under another tag, and by digest only (restored under the tag given).
    _restore(
        archived, archived.images["oci"].reference, f"docker://{dest.host}/{unique_repo}:v9", *creds
    )
    target = f"docker://{dest.host}/{unique_repo}:v9"
    assert skopeo.inspect(target, registry=dest)["Digest"] == archived.images["oci"].digest


def test_restore_uploads_only_missing_blobs(
    archived: Archived, htpasswd_registry: RegistryServer, image_factory, unique_repo
) -> None:
    dest = htpasswd_registry
    # The destination already holds the base layers (pushed by skopeo in another image).
    image_factory.push(image_factory.image(layers=BASE), f"{unique_repo}:base", dest)
    image = archived.images["oci"]
    mark = dest.mark()
    _restore(
        archived,
        image.reference,
        f"docker://{dest.host}/{unique_repo}:app",
        "--dest-creds",
        dest.creds,
    )
    missing = [d for d in image.blobs if d.digest not in {x.digest for x in image.layers[:2]}]
    assert len(missing) == 2  # the third layer and the config
    assert dest.count("POST", r"/blobs/uploads/$", since=mark) == len(missing)
    uploads = dest.requests("PUT", r"/blobs/uploads/", since=mark)
    assert sorted(e.query.split("digest=")[-1].replace("%3A", ":") for e in uploads) == sorted(
        d.digest for d in missing
    )
    assert dest.count("HEAD", r"/blobs/", since=mark, status=200) == 2
    assert dest.count("PATCH", since=mark) == 0  # one streamed PUT per blob

    # Again: everything is there, nothing moves and the manifest is not rewritten.
    mark = dest.mark()
    _restore(
        archived,
        image.reference,
        f"docker://{dest.host}/{unique_repo}:app",
        "--dest-creds",
        dest.creds,
    )
    assert dest.count("POST", since=mark) == 0
    assert dest.count("PUT", since=mark) == 0


def test_restore_into_the_source_registry_mounts(
    archived: Archived, registry: RegistryServer, skopeo, unique_repo
) -> None:
    image = archived.images["index"]
    mark = registry.mark()
    _restore(archived, image.reference, f"docker://{registry.host}/{unique_repo}:copy")
    posts = registry.requests("POST", r"/blobs/uploads/$", since=mark)
    assert len(posts) == len(image.blobs)
    assert all("mount=" in e.query and "from=restore%2Fsrc" in e.query for e in posts)
    assert all(e.status == 201 for e in posts)
    assert registry.count("PUT", r"/blobs/uploads/", since=mark) == 0
    assert registry.count("GET", r"/blobs/", since=mark) == 0
    out = skopeo.inspect(f"docker://{registry.host}/{unique_repo}:copy")
    assert out["Digest"] == image.digest


def test_restore_all_tags_and_single_platform(
    archived: Archived, make_registry, skopeo, unique_repo
) -> None:
    dest = make_registry("none")
    repo = archived.images["oci"].repository
    out = _restore(
        archived, f"docker://{repo}", f"docker://{dest.host}/{unique_repo}", "--all-tags"
    )
    assert out.count("restored") == len(archived.images)
    tags = json.loads(
        run_bale("list-tags", f"docker://{dest.host}/{unique_repo}", "--tls-verify=false").stdout
    )
    assert sorted(tags["Tags"]) == sorted(archived.images)
    for kind, image in archived.images.items():
        digest = skopeo.inspect(f"docker://{dest.host}/{unique_repo}:{kind}")["Digest"]
        if kind == "platform":  # archived for linux/arm64 only: that manifest is what comes back
            assert digest == image.child("linux/arm64").digest
        else:
            assert digest == image.digest

    # By digest, without a tag: pushed by digest only.
    index = archived.images["index"]
    mark = dest.mark()
    out = _restore(
        archived, f"docker://{repo}@{index.digest}", f"docker://{dest.host}/{unique_repo}-d"
    )
    assert f"-> docker://{dest.host}/{unique_repo}-d\n" in out
    ref = f"docker://{dest.host}/{unique_repo}-d@{index.digest}"
    assert skopeo.inspect(ref, raw=True) == index.manifest
    puts = dest.requests("PUT", r"/manifests/", since=mark)
    assert len(puts) == 3 and all("/manifests/sha256:" in e.path for e in puts)


def test_restore_errors(archived: Archived, registry: RegistryServer, unique_repo) -> None:
    repo = archived.images["oci"].repository
    mark = registry.mark()
    proc = run_bale(
        "restore",
        f"docker://{repo}:nope",
        f"docker://{registry.host}/{unique_repo}",
        "--from",
        str(archived.store),
        "--dest-tls-verify=false",
    )
    assert proc.returncode == 1
    assert "not archived" in proc.stderr
    proc = run_bale(
        "restore",
        f"docker://{repo}:oci",
        f"docker://{registry.host}/{unique_repo}@sha256:{'0' * 64}",
        "--from",
        str(archived.store),
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert registry.count(since=mark) == 0


def test_restore_api_respects_limit_rate(
    registry: RegistryServer, make_registry, image_factory: ImageFactory, unique_repo, tmp_path
) -> None:
    """Through the library: `--limit-rate` caps bytes read from the store (the registry side is
    not counted twice), and the result reports what moved."""
    from pipeline.copy.session import TransferOptions
    from pipeline.ops.restore import Restorer, restore_targets

    image = image_factory.image(layers=(LayerSpec(3 << 20, seed=5201),))
    pushed = image_factory.push(image, f"{unique_repo}:big", registry)
    bucket = ArchiveBucket(LocalStore(tmp_path / "archive"))
    with Session() as session:
        ref = Reference.parse(pushed.reference)
        result = Archiver(bucket, session).archive(ref, RegistryOptions(tls_verify=False))
        assert result.status == "archived", result.error
    dest = make_registry("none")
    target = Reference.parse(f"{dest.host}/{unique_repo}", default_tag=None)
    (job,) = restore_targets(bucket, ref, target)
    assert job.tag == "big"
    rate = 2 << 20
    with Session(TransferOptions(limit_rate=rate)) as session:
        result = Restorer(bucket, session, RegistryOptions(tls_verify=False)).restore(job)
    assert result.status == "restored", result.error
    assert result.digest == pushed.digest
    total = sum(d.size for d in image.blobs)
    assert result.bytes_downloaded == result.bytes_uploaded == total
    assert result.seconds >= (total - 0.25 * rate) / rate  # one small burst allowed
    assert result.seconds < 2 * total / rate + 2

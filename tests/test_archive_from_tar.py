"""`bale archive docker-archive:X / oci-archive:X --to STORE`: a tar's images into the store
exactly as from their registry (same keys, same record but for `origin`), read from a local
file or from S3; restored back into a registry with the tar's digest; names from RepoTags or
`ref.name`, else `--name`; a nameless tar is refused before anything is written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.bed.cli import error_line, isolated_env, run_bale, show
from tests.bed.fixtures_store import oss_cli_env
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.registry import RegistryServer
from tests.bed.tars import file_entry, make_tar, members_of, old_docker_save

pytestmark = pytest.mark.integration


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, show(proc)
    return proc


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _record(store: Path, repo: str, tag: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((store / "images" / repo / f"{tag}.json").read_bytes())
    return data


def _store_repo(ref: str) -> str:
    """`host:port/repo:tag` -> `host-port/repo`, the store's repository (DESIGN.md)."""
    host, _, path = ref.partition("/")
    return f"{host.replace(':', '-')}/{path.rpartition(':')[0]}"


def _restore_and_inspect(
    ref: str, store: str, registry: RegistryServer, dest: str, skopeo, env: dict[str, str] | None
) -> dict[str, object]:
    _ok(run_bale("restore", ref, dest, "--from", store, "--dest-tls-verify=false", env=env))
    info: dict[str, object] = skopeo.inspect(f"docker://{dest}")
    return info


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, image_factory: ImageFactory) -> BuiltImage:
    image = image_factory.image(
        layers=(LayerSpec(300_000, seed=9301), LayerSpec(4_000, seed=9302)), format="docker"
    )
    return image_factory.push(image, "fromtar/app:1.0", registry)


def test_local_tar_archives_as_the_registry_would(
    pushed: BuiltImage, registry: RegistryServer, skopeo, unique_repo: str, tmp_path: Path
) -> None:
    ref = f"{registry.host}/fromtar/app:1.0"
    tar = tmp_path / "app.tar"
    _ok(run_bale("copy", f"docker://{ref}", f"docker-archive:{tar}", "--src-tls-verify=false"))

    from_tar, from_registry = tmp_path / "from-tar", tmp_path / "from-registry"
    proc = _ok(run_bale("archive", f"docker-archive:{tar}", "--to", str(from_tar)))
    assert "archived" in proc.stderr + proc.stdout
    _ok(run_bale("archive", ref, "--to", str(from_registry), "--src-tls-verify=false"))

    # The same keys, byte for byte, but the record: it says where the image was read from.
    record_key = f"images/{_store_repo(ref)}/1.0.json"
    tar_files, registry_files = _files(from_tar), _files(from_registry)
    assert sorted(tar_files) == sorted(registry_files)
    for key in tar_files:
        if key != record_key:
            assert tar_files[key] == registry_files[key], key
    record = _record(from_tar, _store_repo(ref), "1.0")
    same = _record(from_registry, _store_repo(ref), "1.0")
    assert record.pop("origin") == f"docker-archive:{tar}"
    assert "origin" not in same
    for changing in ("archived_at",):
        record.pop(changing), same.pop(changing)
    assert record == same
    assert record["source"] == ref and record["digest"] == pushed.digest

    listing = json.loads(_ok(run_bale("ls", str(from_tar), "--json")).stdout)
    assert [(r["source"], r["digest"]) for r in listing] == [(ref, pushed.digest)]

    dest = f"{registry.host}/{unique_repo}:back"
    info = _restore_and_inspect(ref, str(from_tar), registry, dest, skopeo, None)
    assert info["Digest"] == pushed.digest == skopeo.inspect(f"oci-archive:{tar}")["Digest"]

    # Archived again from the same tar: already there, skipped (nothing rewritten).
    again = _ok(run_bale("archive", f"docker-archive:{tar}", "--to", str(from_tar)))
    assert "skipped" in again.stdout + again.stderr


def test_oci_archive_in_s3_into_an_s3_store(
    pushed: BuiltImage,
    registry: RegistryServer,
    moto_server: MotoServer,
    skopeo,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    """skopeo's own oci-archive (named by its ref.name), read from S3 by ranges."""
    name = f"{registry.host}/fromtar/renamed:2"
    tar = tmp_path / "skopeo.tar"
    skopeo.copy(
        f"docker://{registry.host}/fromtar/app:1.0",
        f"oci-archive:{tar}:{name}",
        "--src-tls-verify=false",
    )
    digest = skopeo.inspect(f"oci-archive:{tar}")["Digest"]
    bucket = moto_server.create_bucket()
    moto_server.client().put_object(Bucket=bucket, Key="drop/skopeo.tar", Body=tar.read_bytes())
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    store = f"s3://{bucket}/archive"

    _ok(run_bale("archive", f"oci-archive:s3://{bucket}/drop/skopeo.tar", "--to", store, env=env))

    listing = json.loads(_ok(run_bale("ls", store, "--json", env=env)).stdout)
    assert [(r["source"], r["digest"]) for r in listing] == [(name, digest)]
    assert listing[0]["origin"] == f"oci-archive:s3://{bucket}/drop/skopeo.tar"
    dest = f"{registry.host}/{unique_repo}:s3"
    info = _restore_and_inspect(name, store, registry, dest, skopeo, env)
    assert info["Digest"] == digest
    assert _ok(run_bale("verify", store, env=env)).returncode == 0


def test_tar_in_oss_into_an_oss_store(
    pushed: BuiltImage,
    registry: RegistryServer,
    oss_server,
    unique_repo: str,
    skopeo,
    tmp_path: Path,
) -> None:
    """bale's own tar, written to OSS by `bale copy`, archived from there into OSS."""
    bucket = oss_server.create_bucket()
    env = oss_cli_env(tmp_path, oss_server)
    ref = f"{registry.host}/fromtar/app:1.0"
    tar = f"docker-archive:oss://{bucket}/drop/app.tar"
    _ok(run_bale("copy", f"docker://{ref}", tar, "--src-tls-verify=false", env=env))
    store = f"oss://{bucket}/archive"

    _ok(run_bale("archive", tar, "--to", store, env=env))

    listing = json.loads(_ok(run_bale("ls", store, "--json", env=env)).stdout)
    assert [(r["source"], r["digest"], r["origin"]) for r in listing] == [(ref, pushed.digest, tar)]
    dest = f"{registry.host}/{unique_repo}:oss"
    assert _restore_and_inspect(ref, store, registry, dest, skopeo, env)["Digest"] == pushed.digest


def test_a_tar_without_a_name_needs_one(
    pushed: BuiltImage, registry: RegistryServer, skopeo, unique_repo: str, tmp_path: Path
) -> None:
    tar = tmp_path / "nameless.tar"
    tar.write_bytes(old_docker_save(pushed, repo_tags=[]))
    store = tmp_path / "store"

    proc = run_bale("archive", f"docker-archive:{tar}", "--to", str(store))
    assert proc.returncode == 2, show(proc)
    assert "--name" in error_line(proc)
    assert not store.exists()  # nothing written, not even the store's directory

    named = f"{registry.host}/{unique_repo}:given"
    _ok(run_bale("archive", f"docker-archive:{tar}", "--name", named, "--to", str(store)))
    dest = f"{registry.host}/{unique_repo}:restored"
    info = _restore_and_inspect(named, str(store), registry, dest, skopeo, None)
    assert skopeo.inspect(f"docker://{dest}", config=True, raw=True) == pushed.config
    assert info["Layers"] == list(pushed.diff_ids)  # docker save's layers are uncompressed
    assert _record(store, _store_repo(named), "given")["origin"] == f"docker-archive:{tar}"

    # --name names one image of one tar: a registry IMAGE beside it is refused.
    mixed = run_bale(
        "archive", f"docker-archive:{tar}", "alpine:3", "--name", named, "--to", str(store)
    )
    assert mixed.returncode == 2 and "--name" in error_line(mixed)


def test_multi_image_docker_archive_archives_each(
    registry: RegistryServer,
    image_factory: ImageFactory,
    skopeo,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    """`docker save a b` holds two images; one of them has two RepoTags: three archived."""
    first = image_factory.image(layers=(LayerSpec(20_000, seed=9311),), format="docker")
    second = image_factory.image(layers=(LayerSpec(30_000, seed=9312),), format="docker")
    names = [f"{registry.host}/{unique_repo}/a:1", f"{registry.host}/{unique_repo}/a:latest"]
    other = f"{registry.host}/{unique_repo}/b:1"
    parts = [old_docker_save(first, names), old_docker_save(second, [other])]
    members, manifest = [], []
    for data in parts:
        for info, body in members_of(data):
            if info.name == "manifest.json":
                assert body is not None
                manifest += json.loads(body)
            elif info.name != "repositories":
                members.append((info, body))
    members.append(file_entry("manifest.json", json.dumps(manifest).encode()))
    tar = tmp_path / "two.tar"
    tar.write_bytes(make_tar(members))
    store = tmp_path / "store"

    # --name cannot name two images: refused, nothing written.
    proc = run_bale("archive", f"docker-archive:{tar}", "--name", other, "--to", str(store))
    assert proc.returncode == 2 and "2 images" in error_line(proc), show(proc)
    assert not store.exists()

    _ok(run_bale("archive", f"docker-archive:{tar}", "--to", str(store)))
    listing = json.loads(_ok(run_bale("ls", str(store), "--json")).stdout)
    assert sorted(r["source"] for r in listing) == sorted([*names, other])
    for ref, image, tag in ((names[1], first, "a"), (other, second, "b")):
        dest = f"{registry.host}/{unique_repo}/back:{tag}"
        _restore_and_inspect(ref, str(store), registry, dest, skopeo, None)
        assert skopeo.inspect(f"docker://{dest}", config=True, raw=True) == image.config

    # One image picked by name out of the tar: only it.
    picked = tmp_path / "picked"
    _ok(run_bale("archive", f"docker-archive:{tar}:{other}", "--to", str(picked)))
    listing = json.loads(_ok(run_bale("ls", str(picked), "--json")).stdout)
    assert [r["source"] for r in listing] == [other]


def test_archive_from_another_store(
    pushed: BuiltImage, registry: RegistryServer, skopeo, unique_repo: str, tmp_path: Path
) -> None:
    """`--from STORE` (restore's and inspect's spelling) reads the images as archived there."""
    ref = f"{registry.host}/fromtar/app:1.0"
    first, second = tmp_path / "first", tmp_path / "second"
    _ok(run_bale("archive", ref, "--to", str(first), "--src-tls-verify=false"))
    since = registry.mark()
    _ok(run_bale("archive", ref, "--from", str(first), "--to", str(second)))
    assert registry.requests(since=since) == []  # read from the store, not the registry
    missing = run_bale(
        "archive", f"{registry.host}/fromtar/none:1", "--from", str(first), "--to", str(second)
    )
    assert missing.returncode == 1, show(missing)

    record_key = f"images/{_store_repo(ref)}/1.0.json"
    copied, original = _files(second), _files(first)
    assert sorted(copied) == sorted(original)
    assert all(copied[k] == original[k] for k in copied if k != record_key)
    record = _record(second, _store_repo(ref), "1.0")
    assert record["origin"] == first.as_uri()
    dest = f"{registry.host}/{unique_repo}:again"
    info = _restore_and_inspect(ref, str(second), registry, dest, skopeo, None)
    assert info["Digest"] == pushed.digest

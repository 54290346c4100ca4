"""`bale archive` end to end: real registry in, local / S3 / OSS bucket out, real readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.copy.session import RegistryOptions, Session
from pipeline.ops.archive import ArchiveOptions, Archiver
from pipeline.refs import Reference
from pipeline.store.local import LocalStore
from tests.bed.cli import run_bale
from tests.bed.images import LayerSpec

pytestmark = pytest.mark.integration


def _archive(bucket: ArchiveBucket, ref: str, **opts: object):
    with Session() as session:
        return Archiver(bucket, session).archive(
            Reference.parse(ref), RegistryOptions(tls_verify=False), ArchiveOptions(**opts)
        )


def test_archive_oci_image_to_local(registry, image_factory, skopeo, unique_repo, tmp_path: Path):
    image = image_factory.image(layers=(LayerSpec(3000, seed=11), LayerSpec(70_000, seed=12)))
    pushed = image_factory.push(image, f"{registry.host}/{unique_repo}:1.0", registry)
    bucket = ArchiveBucket(LocalStore(tmp_path / "store"))
    result = _archive(bucket, f"{registry.host}/{unique_repo}:1.0")
    assert result.status == "archived", result.error
    assert result.digest == pushed.digest
    ref = Reference.parse(f"{registry.host}/{unique_repo}:1.0")
    assert bucket.tag_digest(ref.store_repo, "1.0") == pushed.digest
    tar = tmp_path / "store" / layout.tar_key_for(ref)
    assert tar.exists()
    out = skopeo.inspect(f"oci-archive:{tar}")
    assert out["Digest"] == pushed.digest
    out = skopeo.inspect(f"docker-archive:{tar}")
    assert len(out["Layers"]) == 2
    record = json.loads((tmp_path / "store" / layout.record_key_for(ref)).read_text())
    assert record["digest"] == pushed.digest

    again = _archive(bucket, f"{registry.host}/{unique_repo}:1.0")
    assert again.status == "skipped"
    assert again.bytes_downloaded == 0


def test_cli_archive_and_ls_with_auth(htpasswd_registry, image_factory, unique_repo, tmp_path):
    reg = htpasswd_registry
    image = image_factory.image(layers=(LayerSpec(5000, seed=21),), format="docker")
    pushed = image_factory.push(image, f"{reg.host}/{unique_repo}:v1", reg)
    store = tmp_path / "bucket"
    report = tmp_path / "report.json"
    proc = run_bale(
        "archive",
        f"docker://{reg.host}/{unique_repo}:v1",
        f"docker://{reg.host}/{unique_repo}:missing",
        "--to",
        str(store),
        "--src-tls-verify=false",
        "--src-creds",
        reg.creds,
        "--report",
        str(report),
    )
    assert proc.returncode == 1, proc.stderr
    assert "missing" in proc.stderr
    data = json.loads(report.read_text())
    by_status = {i["status"]: i for i in data["images"]}
    assert by_status["archived"]["digest"] == pushed.digest
    assert "manifest" in by_status["failed"]["error"] or "404" in by_status["failed"]["error"]
    assert not list((store / "images").rglob("missing*"))
    assert reg.password not in proc.stdout + proc.stderr + report.read_text()

    listing = run_bale("ls", str(store), "--json", check=True)
    records = json.loads(listing.stdout)
    assert [r["digest"] for r in records] == [pushed.digest]
    table = run_bale("ls", str(store), check=True)
    assert f"{unique_repo}:v1" in table.stdout


def test_cli_bad_input_exit_2(tmp_path):
    proc = run_bale("archive", "Not A Ref", "--to", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
    proc = run_bale("archive", "nginx:1", "--to", "s3://")
    assert proc.returncode == 2, proc.stderr


def test_inspect_from_store_matches_registry(registry, image_factory, unique_repo, tmp_path):
    index = image_factory.index(
        platforms=("linux/amd64", "linux/arm64"), layers=(LayerSpec(2000, seed=31),)
    )
    image_factory.push(index, f"{registry.host}/{unique_repo}:m", registry)
    store = tmp_path / "store"
    ref = f"docker://{registry.host}/{unique_repo}:m"
    run_bale("archive", ref, "--to", str(store), "--src-tls-verify=false", check=True)
    live = json.loads(run_bale("inspect", "--tls-verify=false", ref, check=True).stdout)
    archived = json.loads(run_bale("inspect", "--from", str(store), ref, check=True).stdout)
    assert archived == live | {"RepoTags": ["m"]}
    raw_live = run_bale("inspect", "--raw", "--tls-verify=false", ref, check=True).stdout
    raw_archived = run_bale("inspect", "--raw", "--from", str(store), ref, check=True).stdout
    assert raw_live == raw_archived
    missing = run_bale("inspect", "--from", str(store), f"{ref[:-2]}:nope")
    assert missing.returncode == 1 and "not archived" in missing.stderr

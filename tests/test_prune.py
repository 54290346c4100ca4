"""`bale prune` and `bale pin` through the CLI, on the local store, S3 (moto) and OSS (the OSS
protocol server): five tags of one repository sharing a base layer, archived for real and then
dated across months (their records rewritten, the only way to age an archive in a test), pruned
by rules from the command line and from a spec file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.record import format_time
from tests.bed.cli import run_bale
from tests.bed.fixtures_store import store_cli
from tests.bed.images import LayerSpec

pytestmark = pytest.mark.integration

TAGS = {"1.0": 200, "1.1": 100, "2.0": 10, "latest": 5, "dev": 1}
"""Tag -> days since it was archived."""
BASE = LayerSpec(5000, seed=811)


@dataclass
class Target:
    kind: str
    url: str
    env: dict[str, str]
    bucket: ArchiveBucket

    def bale(self, *args: str) -> Any:
        return run_bale(*args, env=self.env)


def target(kind: str, store_bed: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    bed = store_bed(kind)
    url, env = store_cli(bed, tmp_path, request)
    return Target(kind, url, env, ArchiveBucket(bed.store))


def archive_tags(t: Target, registry: Any, image_factory: Any, repo: str) -> str:
    """Five tags (a shared base layer and one of their own each), archived and then dated."""
    name = f"{registry.host}/{repo}/app"
    for i, tag in enumerate(TAGS):
        layers = (BASE, LayerSpec(3000 + i, seed=820 + i))
        image_factory.build_and_push(f"{name}:{tag}", registry, layers=layers)
    done = t.bale("archive", *(f"{name}:{tag}" for tag in TAGS), "--to", t.url,
                  "--src-tls-verify=false")  # fmt: skip
    assert done.returncode == 0, done.stderr
    now = datetime.now(UTC)
    for entry in t.bucket.archived():
        obj = json.loads(t.bucket.store.read(entry.key))
        obj["archived_at"] = format_time(now - timedelta(days=TAGS[entry.record.tag or ""]))
        t.bucket.store.put(entry.key, json.dumps(obj, indent=2).encode() + b"\n")
    return name


def plan(t: Target, *args: str) -> dict[str, Any]:
    done = t.bale("prune", t.url, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def actions(p: dict[str, Any]) -> dict[str, tuple[str, list[str]]]:
    return {i["tag"]: (i["action"], i["kept_by"]) for i in p["plan"]}


@pytest.mark.parametrize("kind", ["local", "s3", "oss"])
def test_prune_pin_apply(
    kind: str,
    store_bed: Any,
    registry: Any,
    image_factory: Any,
    unique_repo: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    t = target(kind, store_bed, tmp_path, request)
    name = archive_tags(t, registry, image_factory, unique_repo)
    store = t.bucket.store
    before = sorted(i.key for i in store.list())

    # No keep rule: refused, exit 2, one line, nothing touched.
    for bad in (["--exclude-tags", "latest"], [], ["--keep-tags", "("], ["--keep-within", "x"]):
        refused = t.bale("prune", t.url, *bad, "--apply")
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert sorted(i.key for i in store.list()) == before

    rules = ["--keep-last", "2", "--keep-semver", ">=2.0", "--exclude-tags", "latest,nope"]
    dry = plan(t, *rules)
    assert list(dry) == ["store", "applied", "now", "images", "delete", "keep", "tar_bytes",
                         "gc_bytes", "early_delete", "plan", "skipped"]  # fmt: skip
    assert actions(dry) == {
        "dev": ("keep", ["keep-last 2"]),
        "latest": ("keep", ["exclude-tags latest", "keep-last 2"]),
        "2.0": ("keep", ["keep-semver >=2.0"]),
        "1.1": ("delete", []),
        "1.0": ("delete", []),
    }
    records = {e.record.tag: e.record for e in t.bucket.archived()}
    kept = {b.digest for tag in ("dev", "latest", "2.0") for b in records[tag].blobs}
    gone = {b.digest: b.size for tag in ("1.0", "1.1") for b in records[tag].blobs}
    assert dry["gc_bytes"] == sum(s for d, s in gone.items() if d not in kept)
    assert dry["gc_bytes"] < sum(gone.values())  # the shared base layer frees nothing
    assert dry["tar_bytes"] == records["1.0"].tar_size + records["1.1"].tar_size
    assert (dry["applied"], dry["delete"], dry["keep"]) == (False, 2, 3)
    assert sorted(i.key for i in store.list()) == before  # a dry run deletes nothing

    # The table says the same; --keep-within keeps by age.
    table = t.bale("prune", t.url, *rules)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[1]: line for line in table.stdout.splitlines()[1:]}
    assert rows[f"{name}:1.0"].startswith("delete") and "keep-semver" in rows[f"{name}:2.0"]
    assert "bytes gc will free" in table.stderr and "dry run" in table.stderr
    assert actions(plan(t, "--keep-within", "150d"))["1.1"] == ("keep", ["keep-within 150d"])

    # Pin 1.1: kept whatever the rules say; the record changes by that one field only.
    key = records["1.1"].record_key
    original = store.read(key)
    pinned = t.bale("pin", f"{name}:1.1", "--from", t.url)
    assert pinned.returncode == 0, pinned.stderr
    after = store.read(key)
    assert after == original[:-3] + b',\n  "pinned": true\n}\n'
    assert actions(plan(t, *rules))["1.1"] == ("keep", ["pinned"])
    assert t.bale("pin", f"{name}:9.9", "--from", t.url).returncode == 2

    applied = plan(t, *rules, "--apply")
    assert (applied["applied"], applied["skipped"]) == (True, [])
    assert [i["tag"] for i in applied["plan"] if i["action"] == "delete"] == ["1.0"]
    gone_keys = {records["1.0"].record_key, records["1.0"].tar_key,
                 layout.tag_current_link_key(records["1.0"].repo, "1.0")}  # fmt: skip
    left = {i.key for i in store.list()}
    assert not gone_keys & left and set(before) - left >= gone_keys
    assert not [k for k in left if "/_manifests/tags/1.0/" in k]
    assert sorted(r.tag or "" for r in t.bucket.records()) == ["1.1", "2.0", "dev", "latest"]

    # Unpin: the record is byte for byte what archive wrote; now 1.1 goes too.
    assert t.bale("pin", f"{name}:1.1", "--from", t.url, "--unpin").returncode == 0
    assert store.read(key) == original
    assert [i["tag"] for i in plan(t, *rules, "--apply")["plan"] if i["action"] == "delete"] == [
        "1.1"
    ]

    # What is left is whole: gc removes the pruned images' own blobs and verify is clean.
    gc = t.bale("gc", t.url, "--grace", "0s")
    assert gc.returncode == 0, gc.stderr
    verified = t.bale("verify", t.url, "--deep")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    blobs = {layout.digest_from_blob_key(i.key) for i in store.list(layout.BLOBS_PREFIX)}
    assert kept <= blobs and not (set(gone) - kept) & blobs


def test_pin_survives_a_forced_rearchive(
    store_bed: Any,
    registry: Any,
    image_factory: Any,
    unique_repo: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """`--force` rewrites the record of the same image: its pin is kept, nothing else moves."""
    t = target("local", store_bed, tmp_path, request)
    name = f"{registry.host}/{unique_repo}/app:1"
    image_factory.build_and_push(name, registry, layers=(BASE,))
    archive = ("archive", name, "--to", t.url, "--src-tls-verify=false")
    assert t.bale(*archive).returncode == 0
    assert t.bale("pin", name, "--from", t.url).returncode == 0
    forced = t.bale(*archive, "--force")
    assert forced.returncode == 0, forced.stderr
    (record,) = t.bucket.records()
    assert record.pinned


def test_prune_rules_from_spec(
    store_bed: Any,
    registry: Any,
    image_factory: Any,
    unique_repo: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    t = target("local", store_bed, tmp_path, request)
    name = archive_tags(t, registry, image_factory, unique_repo)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"{registry.host}:\n"
        "  retention:\n"
        "    keep-last: 1\n"
        "    repositories:\n"
        f"      {unique_repo}/app:\n"
        "        keep-tags: ^1\\.\n"
        "        exclude-tags: [dev]\n"
    )
    p = plan(t, "--spec", str(spec))
    assert actions(p) == {
        "dev": ("keep", ["exclude-tags dev"]),
        "latest": ("delete", []),
        "2.0": ("delete", []),
        "1.1": ("keep", ["keep-tags ^1\\."]),
        "1.0": ("keep", ["keep-tags ^1\\."]),
    }
    # Another repository of the registry: the registry's rules; the command line's for others.
    other = tmp_path / "other.yaml"
    other.write_text(f"{registry.host}/elsewhere:\n  retention:\n    keep-last: 1\n")
    assert {a for a, _ in actions(plan(t, "--spec", str(other))).values()} == {"keep"}
    by_cli = actions(plan(t, "--spec", str(other), "--keep-last", "4"))
    assert by_cli["1.0"] == ("delete", [])
    # A spec retention block without a keep rule: exit 2 naming file and line.
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{registry.host}:\n  retention:\n    exclude-tags: [dev]\n")
    refused = t.bale("prune", t.url, "--spec", str(bad))
    assert refused.returncode == 2 and f"{bad}:2" in refused.stderr, refused.stderr
    assert name


def test_prune_refuses_early_deletion_on_s3(
    store_bed: Any,
    registry: Any,
    image_factory: Any,
    unique_repo: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A tar moved to GLACIER_IR today is inside its 90 days: listed with what it costs, and
    --apply deletes nothing unless --allow-early-delete."""
    t = target("s3", store_bed, tmp_path, request)
    archive_tags(t, registry, image_factory, unique_repo)
    records = {e.record.tag: e.record for e in t.bucket.archived()}
    store = t.bucket.store
    client = request.getfixturevalue("moto_server").client()
    tar = records["1.0"].tar_key
    full = f"{store.prefix}/{tar}" if store.prefix else tar
    client.copy_object(
        Bucket=store.bucket_name,
        Key=full,
        CopySource={"Bucket": store.bucket_name, "Key": full},
        StorageClass="GLACIER_IR",
    )
    rules = ["--keep-last", "3"]
    p = plan(t, *rules)
    (early,) = [i for i in p["plan"] if i["early_delete"]]
    assert early["tag"] == "1.0" and early["storage_class"] == "GLACIER_IR"
    (info,) = early["early_delete"]
    assert (info["key"], info["minimum_days"], info["bytes"]) == (tar, 90, records["1.0"].tar_size)
    assert 89 < info["remaining_days"] <= 90 and p["early_delete"] == 1

    before = sorted(i.key for i in store.list())
    refused = t.bale("prune", t.url, *rules, "--apply")
    assert refused.returncode == 2 and "--allow-early-delete" in refused.stderr, refused.stderr
    assert sorted(i.key for i in store.list()) == before
    done = plan(t, *rules, "--apply", "--allow-early-delete")
    assert done["applied"] and store.head(tar) is None


@pytest.mark.slow
def test_prune_plans_300_images(
    store_bed: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """300 archived images in 10 repositories on moto S3: the plan (one listing, 300 record
    reads) is printed with its time; BENCHMARKS.md keeps the number (no timed assertion)."""
    import hashlib
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.archive.record import BlobEntry, ImageRecord
    from pipeline.refs import Reference

    t = target("s3", store_bed, tmp_path, request)
    now = datetime.now(UTC)
    shared = BlobEntry("sha256:" + hashlib.sha256(b"base").hexdigest(), 1000, "layer")

    def put(i: int) -> None:
        ref = Reference.parse(f"reg.example.com/team/app{i % 10}:v{i}")
        digest = "sha256:" + hashlib.sha256(b"m%d" % i).hexdigest()
        own = BlobEntry("sha256:" + hashlib.sha256(b"l%d" % i).hexdigest(), 500 + i, "layer")
        record = ImageRecord(
            source=str(ref), repo=ref.store_repo, tag=ref.tag, digest=digest,
            media_type="application/vnd.oci.image.manifest.v1+json",
            tar_key=layout.tar_key_for(ref), tar_digest=digest,
            tar_media_type="application/vnd.oci.image.manifest.v1+json", tar_size=3000,
            archived_at=now - timedelta(days=i), version="test", blobs=(shared, own),
        )  # fmt: skip
        t.bucket.store.put(record.tar_key, b"tar")
        t.bucket.write_record(record)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(300)))
    started = time.monotonic()
    p = plan(t, "--keep-last", "5", "--keep-semver", ">=v290")
    seconds = time.monotonic() - started
    print(f"\nprune plan of 300 images on moto S3: {seconds:.2f} s (CLI run, start-up included)")
    assert (p["images"], p["keep"], p["delete"]) == (300, 60, 240)
    assert p["gc_bytes"] == sum(500 + i for i in range(50, 290))  # the shared layer stays

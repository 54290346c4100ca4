"""Write-once buckets and encryption at rest through the `bale` command, on the bed's servers.

The store layer's own behaviour (headers per request, refusals) is tests/test_store_protect.py;
here it is what a user sees: the options on every command, records and `ls` saying how the
tars are kept, `gc` leaving retained objects alone, and a moved tag re-archived on an Object
Lock bucket with both digests still restorable.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.store.oss import OSSStore
from tests.bed.cli import error_line, isolated_env, run_bale, show
from tests.bed.fixtures_store import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_REGION,
    empty_locked_bucket,
    oss_cli_env,
)
from tests.bed.images import LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.oss_server import OssServer
from tests.bed.proxy import FaultProxy

pytestmark = pytest.mark.integration
MiB = 1 << 20
TLS = "--src-tls-verify=false"
DEST_TLS = "--dest-tls-verify=false"


@pytest.fixture(params=["moto", pytest.param("rgw", marks=pytest.mark.slow)])
def locked_s3(request: pytest.FixtureRequest) -> Iterator[tuple[FaultProxy, str, dict[str, str]]]:
    """A bucket with Object Lock and a default retention (GOVERNANCE, one day) on moto_server
    or Ceph RGW, behind a recording proxy; the CLI's keys for it. Emptied after."""
    server = request.getfixturevalue(f"{request.param}_server")
    name = server.create_bucket(object_lock=True)
    server.client().put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    proxy = FaultProxy(server.endpoint_url.removeprefix("http://")).start()
    keys = {
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": proxy.url,
    }
    try:
        yield proxy, name, keys
    finally:
        proxy.stop()
        empty_locked_bucket(server.client(), name)


def moto_env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    return isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=endpoint)


def verify_and_restore(
    store: str, ref: str, digest: str, env: dict[str, str], *store_flags: str
) -> None:
    """`verify --deep` of `ref` in `store`, then `restore` of it to a new repository: the
    digest it was archived with comes back."""
    deep = run_bale("verify", store, ref, "--deep", *store_flags, env=env)
    assert deep.returncode == 0, show(deep)
    host, _, rest = ref.partition("/")
    dest = f"docker://{host}/{rest.replace(':', '-back:')}"
    back = run_bale("restore", ref, dest, "--from", store, DEST_TLS, *store_flags, env=env)
    assert back.returncode == 0, show(back)
    assert digest in back.stdout + back.stderr


def refused(proxy: FaultProxy) -> list[str]:
    return [f"{r.method} {r.path} {r.status}" for r in proxy.requests if r.status in (403, 409)]


def test_moved_tag_on_object_lock_bucket_keeps_both_digests(
    registry, image_factory, unique_repo, locked_s3, tmp_path: Path
) -> None:
    """Issue 17's done-when: archive -> moved tag -> archive again on an Object Lock bucket:
    both digests restorable, nothing refused by the store; records, ls and the report say
    how the tars are kept; gc reports what the bucket retains and sends it no DELETE."""
    proxy, bucket, keys = locked_s3
    env = isolated_env(tmp_path, **keys)
    store = f"s3://{bucket}/arch"
    ref = f"{registry.host}/{unique_repo}:1"
    first = image_factory.push(
        image_factory.image(layers=(LayerSpec(6 * MiB, seed=1),)), ref, registry
    )
    report = tmp_path / "r.json"
    archive = ("archive", f"docker://{ref}", "--to", store, TLS)
    done = run_bale(*archive, "--retain", "2d", "--report", str(report), env=env)
    assert done.returncode == 0, show(done)
    assert "protected: S3 Object Lock, default GOVERNANCE for 1 days" in done.stderr
    said = json.loads(report.read_text())["store"]
    assert said["protection"] == {
        "protection": "object-lock",
        "mode": "GOVERNANCE",
        "retention_days": 1,
    }
    assert said["lock"]["mode"] == "GOVERNANCE"
    ((tar, kept),) = said["tars"].items()  # the tar this run wrote, as the store keeps it
    assert tar.endswith("/1.tar") and kept["retain_until"] == said["lock"]["retain_until"]
    assert "1 tar(s) retained until" in done.stderr
    locked_writes = [
        r
        for r in proxy.requests
        if r.method in ("PUT", "POST") and "arch/" in r.path and "/.bale-" not in r.path
    ]  # (the write check's scratch object is written unlocked, and deleted)
    assert locked_writes and all(
        r.header("x-amz-object-lock-mode") == "GOVERNANCE"
        for r in locked_writes
        if r.method == "PUT" and "uploadId" not in r.path and "?" not in r.path
    )

    second = image_factory.push(
        image_factory.image(layers=(LayerSpec(6 * MiB, seed=2),)), ref, registry
    )
    assert second.digest != first.digest
    again = run_bale(*archive, env=env)  # the bucket's default retention this time
    assert again.returncode == 0, show(again)
    assert refused(proxy) == []  # the tar and tag link overwritten: new versions

    listed = run_bale("ls", store, "--json", env=env)
    assert listed.returncode == 0, show(listed)
    (record,) = json.loads(listed.stdout)
    assert record["digest"] == second.digest
    assert record["lock"]["mode"] == "GOVERNANCE"
    until = datetime.fromisoformat(record["lock"]["retain_until"])
    assert timedelta(hours=23) < until - datetime.now(UTC) < timedelta(days=1, hours=1)
    assert record["store"]["protection"]["protection"] == "object-lock"
    assert "encryption" not in record
    table = run_bale("ls", store, env=env)
    assert "protected: S3 Object Lock, default GOVERNANCE for 1 days" in table.stdout
    assert "1 tar(s) retained until" in table.stdout

    for image, digest in ((f"{unique_repo}@{first.digest}", first.digest), (ref, second.digest)):
        source = image if image == ref else f"{registry.host}/{image}"
        dest = f"docker://{registry.host}/{unique_repo}-back:{digest[7:15]}"
        back = run_bale("restore", source, dest, "--from", store, DEST_TLS, env=env)
        assert back.returncode == 0, show(back)
        assert digest in back.stdout + back.stderr

    # The moved tag kept its first image as a history entry (docs/layout.md): nothing to sweep.
    history = run_bale("ls", store, "--history", "--json", env=env)
    assert history.returncode == 0, show(history)
    assert {(r["digest"], r["current"]) for r in json.loads(history.stdout)} == {
        (first.digest, False),
        (second.digest, True),
    }
    kept = run_bale("gc", store, "--older-than", "0s", env=env)
    assert kept.returncode == 0, show(kept)
    assert "0 blob(s) (0 B)" in kept.stderr, show(kept)

    # prune plans the history entry away but the bucket retains its record and tar: reported,
    # never a refused DELETE.
    sent = len(proxy.requests)
    pruned = run_bale("prune", store, "--keep-last", "1", "--apply", "--json", env=env)
    assert pruned.returncode == 0, show(pruned)
    ((_, why),) = [(s["record_key"], s["reason"]) for s in json.loads(pruned.stdout)["skipped"]]
    assert why.startswith("retained by the bucket until"), why
    assert [r for r in proxy.requests[sent:] if r.method == "DELETE"] == []
    assert refused(proxy) == []
    back = run_bale(
        "restore", f"{registry.host}/{unique_repo}@{first.digest}",
        f"docker://{registry.host}/{unique_repo}-again:1", "--from", store, DEST_TLS, env=env,
    )  # fmt: skip
    assert back.returncode == 0, show(back)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--sse", "AES256"), "local directory is not encrypted"),
        (("--sse-kms-key-id", "arn:k"), "KMS key id needs"),
        (("--sse", "DES"), "unknown encryption 'DES'"),
        (("--retain", "1d"), "retention"),
        (("--legal-hold",), "legal"),
        (("--retain", "1x"), "invalid duration"),
    ],
)
def test_bad_protection_options_on_a_local_store_are_one_line_exit_2(
    args: tuple[str, ...], said: str, tmp_path: Path
) -> None:
    target = tmp_path / "archive"
    proc = run_bale("archive", "docker://127.0.0.1:9/x:1", "--to", str(target), *args)
    assert proc.returncode == 2, show(proc)
    assert said.lower() in error_line(proc).lower(), show(proc)
    assert not target.exists()


def test_retain_on_a_bucket_without_object_lock_writes_nothing(
    moto_server: MotoServer, tmp_path: Path
) -> None:
    bucket = moto_server.create_bucket()
    env = moto_env(tmp_path, moto_server.endpoint_url)
    proc = run_bale(
        "archive", "docker://127.0.0.1:9/x:1", "--to", f"s3://{bucket}/a", "--retain", "7y",
        "--lock-mode", "compliance", env=env,
    )  # fmt: skip
    assert proc.returncode == 2, show(proc)
    assert "no Object Lock" in error_line(proc)
    planned = run_bale(
        "archive", "docker://127.0.0.1:9/x:1", "--to", f"s3://{bucket}/a", "--legal-hold",
        "--dry-run", env=env,
    )  # fmt: skip
    assert planned.returncode == 2 and "no Object Lock" in error_line(planned), show(planned)
    assert moto_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    env_only = run_bale(
        "archive", "docker://127.0.0.1:9/x:1", "--to", f"s3://{bucket}/a",
        env=env | {"BALE_SSE": "AES256", "BALE_SSE_KMS_KEY_ID": "arn:k"},
    )  # fmt: skip
    assert env_only.returncode == 2 and "KMS key id needs" in error_line(env_only)


def test_sse_kms_round_trip_on_moto(
    registry, image_factory, unique_repo, moto_server, moto_proxy, tmp_path: Path
) -> None:
    bucket = moto_server.create_bucket()
    env = moto_env(tmp_path, moto_proxy.url)
    store = f"s3://{bucket}/kms"
    ref = f"{registry.host}/{unique_repo}:k"
    pushed = image_factory.push(
        image_factory.image(layers=(LayerSpec(6 * MiB, seed=3), LayerSpec(3000, seed=4))),
        ref,
        registry,
    )
    sse = ("--sse", "aws:kms", "--sse-kms-key-id", "arn:aws:kms:bale-test")
    done = run_bale("archive", f"docker://{ref}", "--to", store, TLS, *sse, env=env)
    assert done.returncode == 0, show(done)
    assert "encryption: sse=aws:kms, kms_key_id=arn:aws:kms:bale-test" in done.stderr
    writes = [
        r for r in moto_proxy.requests
        if "/kms/" in r.path and "/.bale-" not in r.path  # (not the endpoint's probe)
        and ((r.method == "PUT" and "?" not in r.path) or "?uploads" in r.path)
    ]  # fmt: skip
    assert writes
    for r in writes:
        assert r.header("x-amz-server-side-encryption") == "aws:kms", r.path
        assert r.header("x-amz-server-side-encryption-aws-kms-key-id") == "arn:aws:kms:bale-test"
    (record,) = json.loads(run_bale("ls", store, "--json", env=env).stdout)
    assert record["encryption"] == {"sse": "aws:kms", "kms_key_id": "arn:aws:kms:bale-test"}
    assert "lock" not in record and "store" not in record  # reading asks for no encryption
    verify_and_restore(store, ref, pushed.digest, env)
    tar = f"s3://{bucket}/copied/k.tar"
    copied = run_bale("copy", f"docker://{ref}", f"oci-archive:{tar}", TLS, *sse, env=env)
    assert copied.returncode == 0, show(copied)
    head = moto_server.client().head_object(Bucket=bucket, Key="copied/k.tar")
    assert head["ServerSideEncryption"] == "aws:kms"


def test_oss_kms_round_trip(
    registry, image_factory, unique_repo, oss_server: OssServer, tmp_path: Path
) -> None:
    bucket = oss_server.create_bucket()
    env = oss_cli_env(tmp_path, oss_server)
    store = f"oss://{bucket}/kms"
    ref = f"{registry.host}/{unique_repo}:o"
    pushed = image_factory.push(
        image_factory.image(layers=(LayerSpec(6 * MiB, seed=5),)), ref, registry
    )
    done = run_bale("archive", f"docker://{ref}", "--to", store, TLS, "--sse", "KMS", env=env)
    assert done.returncode == 0, show(done)
    writes = [
        r for r in oss_server.requests(bucket)
        if (r.method == "PUT" and not r.query) or (r.method == "POST" and "uploads" in r.query)
    ]  # fmt: skip
    assert writes and all(r.headers["x-oss-server-side-encryption"] == "KMS" for r in writes)
    (record,) = json.loads(run_bale("ls", store, "--json", env=env).stdout)
    assert record["encryption"] == {"sse": "KMS"}
    verify_and_restore(store, ref, pushed.digest, env)
    wrong = run_bale("ls", store, "--sse", "aws:kms", "--sse-c-key-file", "k", env=env)
    assert wrong.returncode == 2 and "exclude each other" in error_line(wrong)


@pytest.mark.slow
def test_sse_c_round_trip_and_wrong_key_on_rgw(
    registry, image_factory, unique_repo, rgw_server, tmp_path: Path
) -> None:
    """Ceph RGW really encrypts with the customer key: the tar is composed server-side
    (UploadPartCopy with the copy source's key), read back with it, and refused without."""
    bucket = rgw_server.create_bucket()
    env = isolated_env(
        tmp_path,
        AWS_ACCESS_KEY_ID=rgw_server.access_key,
        AWS_SECRET_ACCESS_KEY=rgw_server.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=rgw_server.endpoint_url,
    )
    key, other = tmp_path / "k", tmp_path / "other"
    key.write_bytes(bytes(range(32)))
    other.write_text(base64.b64encode(bytes(range(1, 33))).decode())
    store = f"s3://{bucket}/c"
    ref = f"{registry.host}/{unique_repo}:c"
    pushed = image_factory.push(
        image_factory.image(layers=(LayerSpec(12 * MiB, seed=6),)), ref, registry
    )
    with_key = ("--sse-c-key-file", str(key))
    report = tmp_path / "r.json"
    archive = ("archive", f"docker://{ref}", "--to", store, TLS, "--report", str(report))
    done = run_bale(*archive, *with_key, env=env)
    assert done.returncode == 0, show(done)
    again = run_bale(*archive, "--force", *with_key, env=env)  # the tar from stored blobs
    assert again.returncode == 0, show(again)
    totals = json.loads(report.read_text())["totals"]
    assert totals["bytes_copied_server_side"] > 5 * MiB  # UploadPartCopy of SSE-C sources
    listed = run_bale("ls", store, "--json", *with_key, env=env)
    assert listed.returncode == 0, show(listed)
    (record,) = json.loads(listed.stdout)
    assert record["encryption"]["sse"] == "SSE-C" and "sse_c_key_md5" in record["encryption"]
    assert base64.b64encode(bytes(range(32))).decode() not in listed.stdout
    verify_and_restore(store, ref, pushed.digest, env, *with_key)
    dest = f"docker://{registry.host}/{unique_repo}-back:c"
    wrong = ("--sse-c-key-file", str(other))
    for command in (("restore", ref, dest, "--from", store, DEST_TLS), ("ls", store)):
        proc = run_bale(*command, *wrong, env=env)
        assert proc.returncode == 2, show(proc)
        assert len(proc.stderr.strip().splitlines()) == 1, show(proc)
        assert "SSE-C key does not match" in error_line(proc)
    # Without a key: the first record read says so, one line, exit 2, before any image starts.
    for command in (("restore", ref, dest, "--from", store, DEST_TLS), ("ls", store)):
        missing = run_bale(*command, env=env)
        assert missing.returncode == 2, show(missing)
        assert "encrypted with a customer key (SSE-C) and read without one" in error_line(missing)


def test_gc_on_an_oss_worm_bucket_reports_what_is_retained(
    oss_server: OssServer, tmp_path: Path
) -> None:
    """A stray blob (what a crashed archive leaves) on a bucket whose WORM policy keeps it:
    gc lists it as retained, with its size and date, exits 0 and sends no DELETE."""
    import hashlib

    from pipeline.archive import layout

    bucket = oss_server.create_bucket()
    store = oss_store(oss_server, bucket)
    data = b"stray blob " * 100
    key = layout.blob_key("sha256:" + hashlib.sha256(data).hexdigest())
    store.put(key, data)
    lock_worm(store)
    env = oss_cli_env(tmp_path, oss_server)
    sent = len(oss_server.requests(bucket))
    swept = run_bale("gc", f"oss://{bucket}/arch", "--older-than", "0s", env=env)
    assert swept.returncode == 0, show(swept)
    assert f"retained {key} 1.1 KiB (until " in swept.stdout, show(swept)
    assert "1 object(s) (1.1 KiB) retained by the bucket, all deletable by" in swept.stderr
    assert "gc: 0 blob(s)" in swept.stderr
    assert [r for r in oss_server.requests(bucket)[sent:] if r.method == "DELETE"] == []
    assert store.read(key) == data


def oss_store(server: OssServer, bucket: str) -> OSSStore:
    """The library's store on `bucket` under `arch/`, as the bucket's owner (oss2 in it sets
    the WORM policy)."""
    return OSSStore(
        bucket,
        "arch",
        endpoint=server.endpoint,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
        region=OSS_REGION,
    )


def lock_worm(store: OSSStore, days: int = 2) -> None:
    """A WORM retention policy on the store's bucket, initiated and locked."""
    store.bucket.complete_bucket_worm(store.bucket.init_bucket_worm(days).worm_id)


def test_moved_tag_on_an_oss_worm_bucket_goes_to_its_history_path(
    registry, image_factory, unique_repo, oss_server: OssServer, skopeo, tmp_path: Path
) -> None:
    """Issue 17 on OSS WORM (docs/layout.md): the bucket refuses every overwrite, so the moved
    tag's new image is written at its history path only and the tag's current keys stay with
    the first image. Nothing is refused by the server; both digests restore; gc sweeps
    nothing either keeps and asks no DELETE of what the bucket retains."""
    bucket = oss_server.create_bucket()
    lock_worm(oss_store(oss_server, bucket))
    env = oss_cli_env(tmp_path, oss_server)
    store = f"oss://{bucket}/arch"
    ref = f"{registry.host}/{unique_repo}:1"
    first = image_factory.push(
        image_factory.image(layers=(LayerSpec(6 * MiB, seed=11),)), ref, registry
    )
    archive = ("archive", f"docker://{ref}", "--to", store, TLS)
    done = run_bale(*archive, env=env)
    assert done.returncode == 0, show(done)
    assert "protected: OSS WORM (Locked), 2 days from each write" in done.stderr, show(done)
    second = image_factory.push(
        image_factory.image(layers=(LayerSpec(6 * MiB, seed=12),)), ref, registry
    )
    assert second.digest != first.digest
    again = run_bale(*archive, env=env)
    assert again.returncode == 0, show(again)

    def immutable_refusals() -> list[str]:
        """409 FileImmutable: a 409 to a write that may overwrite, or to a DELETE (a 409 to an
        if-absent write is FileAlreadyExists, a blob already there)."""
        return [
            f"{r.method} {r.key}"
            for r in oss_server.requests(bucket)
            if r.status == 409 and r.headers.get("x-oss-forbid-overwrite", "").lower() != "true"
        ]

    assert immutable_refusals() == []
    tag_dir = f"arch/images/{registry.host.replace(':', '-')}/{unique_repo}"
    objects = oss_server.objects(bucket)
    assert f"{tag_dir}/1@sha256-{second.digest[7:]}.tar" in objects
    assert f"{tag_dir}/1@sha256-{second.digest[7:]}.json" in objects

    # The first image stays current (its keys could not be overwritten); the second is kept.
    history = run_bale("ls", store, "--history", "--json", env=env)
    assert history.returncode == 0, show(history)
    assert {(r["digest"], r["current"]) for r in json.loads(history.stdout)} == {
        (first.digest, True),
        (second.digest, False),
    }
    for source, digest in ((ref, first.digest), (f"{ref}@{second.digest}", second.digest)):
        dest = f"{registry.host}/{unique_repo}-back:{digest[7:15]}"
        back = run_bale("restore", source, f"docker://{dest}", "--from", store, DEST_TLS, env=env)
        assert back.returncode == 0, show(back)
        assert skopeo.inspect(f"docker://{dest}")["Digest"] == digest

    kept = run_bale("gc", store, "--grace", "0s", env=env)
    assert kept.returncode == 0, show(kept)
    assert "gc: 0 blob(s) (0 B)" in kept.stderr, show(kept)
    deleted = [
        r.key
        for r in oss_server.requests(bucket)
        if r.method == "DELETE" and "uploadId" not in r.query  # (aborts: the write check's)
    ]
    assert deleted == []
    assert immutable_refusals() == []

"""Storage classes and reading back from cold storage, through the CLI (docs/lifecycle.md):
`--storage-class` per kind (blobs, tars, small), refused before anything is written where the
store lacks the class; blobs written hot, the tar composed from them, then the blobs moved
cold; a later image sharing a cold layer gets it from its registry for its tar; `restore`
refuses frozen images naming `bale thaw`; `bale thaw` and `restore --thaw --wait`."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bed.cli import error_line, isolated_env, run_bale, show, start_bale
from tests.bed.fixtures_store import oss_cli_env
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.oss_server import OssServer
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

BIG = 6_000_000
"""Over S3's 5 MiB part minimum: the tar copies the layer server-side (UploadPartCopy)."""


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, show(proc)
    return proc


def _blob_key(digest: str) -> str:
    hex_ = digest.split(":", 1)[1]
    return f"docker/registry/v2/blobs/sha256/{hex_[:2]}/{hex_}/data"


@pytest.fixture(scope="module")
def pair(registry: RegistryServer, image_factory: ImageFactory) -> tuple[BuiltImage, BuiltImage]:
    """Two images sharing their big layer."""
    shared = LayerSpec(BIG, seed=1601)
    first = image_factory.image(layers=(shared, LayerSpec(3_000, seed=1602)))
    second = image_factory.image(layers=(shared, LayerSpec(3_000, seed=1603)))
    third = image_factory.image(layers=(shared, LayerSpec(3_000, seed=1604)))
    image_factory.push(third, "cold/app:3", registry)
    return (
        image_factory.push(first, "cold/app:1", registry),
        image_factory.push(second, "cold/app:2", registry),
    )


def _members(tar: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return {
            m.name: "sha256:" + hashlib.sha256(t.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
            for m in t.getmembers()
            if m.isfile()
        }


def _tags(registry: RegistryServer, repo: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{registry.url}/v2/{repo}/tags/list") as answer:
            return list(json.load(answer)["tags"] or [])
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return []


def _record(ls: subprocess.CompletedProcess[str], tag: str) -> dict[str, object]:
    records = json.loads(ls.stdout)
    return next(r for r in records if r["tag"] == tag)


def test_local_store_has_one_class(pair: tuple[BuiltImage, BuiltImage], tmp_path: Path) -> None:
    store = tmp_path / "archive"
    first = pair[0].reference
    proc = run_bale("archive", first, "--to", str(store), "--storage-class", "GLACIER")
    assert proc.returncode == 2, show(proc)
    assert "does not exist in the local store" in error_line(proc)
    assert not store.exists()
    proc = run_bale("archive", first, "--to", str(store), "--storage-class", "blobs=deep")
    assert proc.returncode == 2 and "'deep'" in error_line(proc), show(proc)
    proc = run_bale("archive", first, "--to", str(store), "--storage-class", "layers=STANDARD")
    assert proc.returncode == 2 and "KIND=CLASS" in error_line(proc), show(proc)

    _ok(run_bale("archive", first, "--to", str(store), "--storage-class", "standard",
                 "--src-tls-verify=false"))  # fmt: skip
    ls = _ok(run_bale("ls", str(store), "--json"))
    assert _record(ls, "1")["storage_class"] == {
        "blobs": "STANDARD",
        "tars": "STANDARD",
        "small": "STANDARD",
    }
    assert "blobs=STANDARD" in _ok(run_bale("ls", str(store))).stdout
    prices = tmp_path / "prices.yaml"
    prices.write_text("STANDARD: 1024\n")
    (listed,) = json.loads(
        _ok(run_bale("ls", str(store), "--json", "--prices", str(prices))).stdout
    )
    total = sum(listed["bytes_by_class"].values())
    assert listed["bytes_by_class"] == {"STANDARD": total}
    assert listed["monthly_estimate"] == pytest.approx(total / (1 << 30) * 1024, rel=1e-4)
    prices.write_text("GLACIER: 1\n")  # a table without the class: no figure rather than 0
    (listed,) = json.loads(
        _ok(run_bale("ls", str(store), "--json", "--prices", str(prices))).stdout
    )
    assert listed["monthly_estimate"] is None
    prices.write_text("- STANDARD\n")
    proc = run_bale("ls", str(store), "--json", "--prices", str(prices))
    assert proc.returncode == 2 and "--prices" in error_line(proc), show(proc)
    # Nothing archived cold: restore has nothing to check or thaw.
    thaw = _ok(run_bale("thaw", first, "--from", str(store), "--json"))
    assert json.loads(thaw.stdout)[0]["state"] == "not needed"


def _cold_cycle(
    pair: tuple[BuiltImage, BuiltImage],
    registry: RegistryServer,
    store: str,
    env: dict[str, str],
    classes: Callable[[], dict[str, str]],
    tar_of: Callable[[str], bytes],
    cold: str,
    warm: str,
    standard: str,
) -> None:
    first, second = pair
    spec = f"blobs={cold},tars={warm}"
    _ok(run_bale("archive", first.reference, "--to", store, "--storage-class", spec,
                 "--src-tls-verify=false", env=env))  # fmt: skip
    found = classes()
    big, small_layer = first.layers[0].digest, first.layers[1].digest
    assert found[_blob_key(big)] == cold
    assert found[_blob_key(small_layer)] == cold
    assert found[_blob_key(first.digest)] == standard  # the manifest
    assert found[_blob_key(first.config_descriptor.digest)] == standard  # type: ignore[union-attr]
    tars = {k: v for k, v in found.items() if k.endswith(".tar")}
    assert list(tars.values()) == [warm], tars
    assert all(v == standard for k, v in found.items() if k.endswith(".json")), found
    members = _members(tar_of(next(iter(tars))))
    assert members[f"blobs/sha256/{big.split(':')[1]}"] == big

    # The second image shares the big layer, now cold: its tar gets it from the registry; so
    # does the third, archived in the same run (each image stages its own copy).
    third = second.reference.replace(":2", ":3")
    _ok(run_bale("archive", second.reference, third, "--to", store, "--storage-class", spec,
                 "--src-tls-verify=false", env=env))  # fmt: skip
    found = classes()
    assert not [k for k in found if k.startswith("staging/")], found
    tar_key = next(k for k in found if k.endswith("/2.tar"))
    members = _members(tar_of(tar_key))
    assert members[f"blobs/sha256/{big.split(':')[1]}"] == big
    tar_key = next(k for k in found if k.endswith("/3.tar"))
    assert _members(tar_of(tar_key))[f"blobs/sha256/{big.split(':')[1]}"] == big
    ls = _ok(run_bale("ls", store, "--json", env=env))
    record = _record(ls, "2")
    assert record["storage_class"] == {"blobs": cold, "tars": warm, "small": standard}
    layers = sum(d.size for d in second.layers)
    tar_size = record["sizes"]["tar"]  # type: ignore[index]
    assert record["bytes_by_class"] == {
        cold: layers,
        warm: tar_size,
        standard: len(second.manifest) + second.config_descriptor.size,  # type: ignore[union-attr]
    }
    assert isinstance(record["monthly_estimate"], float) and record["monthly_estimate"] > 0

    # Restoring reads cold blobs: refused before the first byte, naming the thaw.
    repo = f"cold/refused-{cold.lower()}"
    proc = run_bale(
        "restore", first.reference, f"docker://{registry.host}/{repo}:1", "--from", store,
        "--dest-tls-verify=false", env=env,
    )  # fmt: skip
    assert proc.returncode == 2, show(proc)
    assert f"bale thaw {first.reference} --from {store}" in error_line(proc)
    assert _tags(registry, repo) == []


def test_s3_cold_classes_and_thaw(
    pair: tuple[BuiltImage, BuiltImage], registry: RegistryServer, moto_server: MotoServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    bucket = moto_server.create_bucket()
    client = moto_server.client()
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    store = f"s3://{bucket}/arch"

    def classes() -> dict[str, str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="arch/")
        return {
            o["Key"].removeprefix("arch/"): o.get("StorageClass", "STANDARD")
            for page in pages
            for o in page.get("Contents", [])
        }

    def tar_of(key: str) -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key=f"arch/{key}")["Body"].read())

    proc = run_bale("archive", pair[0].reference, "--to", store, "--storage-class", "Archive",
                    env=env)  # fmt: skip
    assert proc.returncode == 2 and "does not exist in S3" in error_line(proc), show(proc)
    assert classes() == {}
    _cold_cycle(pair, registry, store, env, classes, tar_of, "GLACIER", "GLACIER_IR", "STANDARD")

    first = pair[0].reference
    # A tar written in an archive class: `copy` from it stops before its first byte.
    _ok(run_bale("archive", first, "--to", store, "--force", "--storage-class", "tars=GLACIER",
                 "--src-tls-verify=false", env=env))  # fmt: skip
    tar_key = next(k for k, c in classes().items() if k.endswith("/1.tar") and c == "GLACIER")
    proc = run_bale("copy", f"docker-archive:{store}/{tar_key}", f"docker://{registry.host}/x/y:1",
                    "--dest-tls-verify=false", env=env)  # fmt: skip
    assert proc.returncode == 2, show(proc)
    assert f"run `bale thaw {first} --from {store}` first" in error_line(proc)
    thaw = _ok(run_bale("thaw", first, "--from", store, "--json", env=env))
    (state,) = json.loads(thaw.stdout)
    assert state["image"] == first and state["state"] in ("ready", "in progress"), state
    dest = f"{registry.host}/cold/back:1"
    _ok(run_bale("restore", first, f"docker://{dest}", "--from", store, "--thaw", "--wait",
                 "--dest-tls-verify=false", env=env))  # fmt: skip
    assert _tags(registry, "cold/back") == ["1"]


def test_oss_cold_classes_and_thaw(
    pair: tuple[BuiltImage, BuiltImage], registry: RegistryServer, oss_server: OssServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    bucket = oss_server.create_bucket()
    env = oss_cli_env(tmp_path, oss_server)
    store = f"oss://{bucket}"

    def classes() -> dict[str, str]:
        with oss_server.state.lock:
            return {k: o.storage_class for k, o in oss_server.state.buckets[bucket].items()}

    def tar_of(key: str) -> bytes:
        return oss_server.objects(bucket)[key]

    _cold_cycle(pair, registry, store, env, classes, tar_of, "Archive", "IA", "Standard")

    first = pair[0].reference
    oss_server.restore_delay = 3.0
    try:
        thaw = _ok(run_bale("thaw", first, "--from", store, env=env))
        assert thaw.stdout.startswith("in progress"), thaw.stdout
        assert "expected Archive: about 1 minute" in thaw.stdout
        again = _ok(run_bale("thaw", first, "--from", store, "--json", env=env))
        assert json.loads(again.stdout)[0]["state"] in ("in progress", "ready")
        dest = f"{registry.host}/cold/oss-back:1"
        proc = _ok(run_bale("restore", first, f"docker://{dest}", "--from", store, "--thaw",
                            "--wait", "--dest-tls-verify=false", env=env))  # fmt: skip
        assert f"thaw {first}: ready" in proc.stderr
        assert _tags(registry, "cold/oss-back") == ["1"]
    finally:
        oss_server.restore_delay = 0.0


def test_spec_storage_class_per_registry(
    pair: tuple[BuiltImage, BuiltImage], registry: RegistryServer, moto_server: MotoServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"{registry.host}:\n"
        "  images:\n"
        "    cold/app: ['1']\n"
        "  tls-verify: false\n"
        "  storage-class: blobs=STANDARD_IA\n"
    )
    local = tmp_path / "local"
    proc = run_bale("run", str(spec), "--to", str(local))
    assert proc.returncode == 2 and "STANDARD_IA" in error_line(proc), show(proc)
    assert not local.exists()

    bucket = moto_server.create_bucket()
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    store = f"s3://{bucket}"
    # A dry run says what each class would keep, and what that would cost by the example table.
    report = tmp_path / "plan.json"
    proc = _ok(run_bale("archive", pair[0].reference, "--to", store, "--dry-run",
                        "--storage-class", "blobs=DEEP_ARCHIVE,tars=GLACIER_IR",
                        "--src-tls-verify=false", "--report", str(report), env=env))  # fmt: skip
    (planned,) = json.loads(report.read_text())["images"]
    layers = sum(d.size for d in pair[0].layers)
    assert planned["bytes_by_class"]["DEEP_ARCHIVE"] == layers
    assert set(planned["bytes_by_class"]) == {"DEEP_ARCHIVE", "GLACIER_IR", "STANDARD"}
    assert planned["monthly_estimate"] > 0
    assert "DEEP_ARCHIVE" in proc.stdout + proc.stderr
    # The spec's entry wins over the command line's class.
    _ok(run_bale("run", str(spec), "--to", store, "--storage-class", "GLACIER", env=env))
    ls = _ok(run_bale("ls", store, "--json", env=env))
    assert _record(ls, "1")["storage_class"] == {"blobs": "STANDARD_IA", "small": "STANDARD"}
    big = _blob_key(pair[0].layers[0].digest)
    head = moto_server.client().head_object(Bucket=bucket, Key=big)
    assert head["StorageClass"] == "STANDARD_IA"

    spec.write_text(spec.read_text().replace("blobs=STANDARD_IA", "layers=STANDARD_IA"))
    proc = run_bale("run", str(spec), "--to", store, env=env)
    assert proc.returncode == 2 and f"{spec}:5" in error_line(proc), show(proc)


def test_archive_from_a_store_where_the_shared_layer_is_cold_too(
    pair: tuple[BuiltImage, BuiltImage], moto_server: MotoServer, tmp_path: Path
) -> None:
    first, second = pair
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    source, dest = (f"s3://{moto_server.create_bucket()}" for _ in range(2))
    tls = "--src-tls-verify=false"
    for store in (source, dest):  # the big layer goes cold in both stores
        _ok(run_bale("archive", first.reference, "--to", store, "--storage-class", "blobs=GLACIER",
                     tls, env=env))  # fmt: skip
    _ok(run_bale("archive", second.reference, "--to", source, tls, env=env))

    # The dry run says so first, naming the cold blob and the thaw (nothing is written).
    proc = run_bale("archive", second.reference, "--from", source, "--to", dest, "--dry-run",
                    env=env)  # fmt: skip
    assert proc.returncode == 1, show(proc)
    assert f"1 blob(s) the tar copies are stored in an archive class in {dest}" in proc.stderr
    assert first.layers[0].digest in proc.stderr, show(proc)
    assert f"run `bale thaw {first.reference} --from {dest}` first" in proc.stderr, show(proc)
    proc = run_bale("archive", second.reference, "--to", dest, "--dry-run", tls, env=env)
    assert proc.returncode == 0, show(proc)  # from the registry, the real run stages it
    assert "bale thaw" not in proc.stderr, show(proc)

    proc = run_bale("archive", second.reference, "--from", source, "--to", dest, env=env)
    assert proc.returncode == 1, show(proc)
    assert f"run `bale thaw {first.reference} --from {dest}` first" in proc.stderr, show(proc)
    ls = _ok(run_bale("ls", dest, "--json", env=env))
    assert [r["tag"] for r in json.loads(ls.stdout)] == ["1"]  # nothing of the failed image


def test_thaw_wait_is_resumable(
    pair: tuple[BuiltImage, BuiltImage], registry: RegistryServer, oss_server: OssServer,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Ctrl-C while `restore --thaw --wait` waits: exit 130, nothing pushed; the restores go on
    at the provider, and a rerun finds them under way instead of asking again."""
    bucket = oss_server.create_bucket()
    env = oss_cli_env(tmp_path, oss_server)
    store, first = f"oss://{bucket}", pair[0].reference
    _ok(run_bale("archive", first, "--to", store, "--storage-class", "Archive",
                 "--src-tls-verify=false", env=env))  # fmt: skip
    oss_server.restore_delay = 600.0
    try:
        log = tmp_path / "stderr"
        with log.open("w") as err:
            proc = start_bale("restore", first, f"docker://{registry.host}/cold/waited:1",
                              "--from", store, "--thaw", "--wait", "--dest-tls-verify=false",
                              env=env, stderr=err)  # fmt: skip
            deadline = time.monotonic() + 60
            while "in progress" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        assert proc.returncode == 130, log.read_text()
        assert f"thaw {first}: in progress" in log.read_text()
        assert _tags(registry, "cold/waited") == []
        asked = [r for r in oss_server.requests(bucket) if "restore" in r.query]
        again = _ok(run_bale("thaw", first, "--from", store, "--json", env=env))
        assert json.loads(again.stdout)[0]["state"] == "in progress"
        assert [r for r in oss_server.requests(bucket) if "restore" in r.query] == asked
        assert len(asked) == 3  # the two layers and the tar; manifests and config stay hot
    finally:
        oss_server.restore_delay = 0.0


def test_images_sharing_a_new_layer_in_one_run(
    pair: tuple[BuiltImage, BuiltImage], moto_server: MotoServer, tmp_path: Path
) -> None:
    """The layer goes cold only after both tars were composed from it (whichever wrote it)."""
    first, second = pair
    bucket = moto_server.create_bucket()
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    store = f"s3://{bucket}"
    _ok(run_bale("archive", first.reference, second.reference, "--to", store, "--jobs", "2",
                 "--storage-class", "blobs=GLACIER", "--src-tls-verify=false", env=env))  # fmt: skip
    client = moto_server.client()
    big = first.layers[0].digest
    assert client.head_object(Bucket=bucket, Key=_blob_key(big))["StorageClass"] == "GLACIER"
    for tag in ("1", "2"):
        key = next(
            o["Key"]
            for o in client.list_objects_v2(Bucket=bucket, Prefix="images/")["Contents"]
            if o["Key"].endswith(f"/{tag}.tar")
        )
        tar = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert _members(tar)[f"blobs/sha256/{big.split(':')[1]}"] == big


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_gc_removes_leftover_staging_copies(
    kind: str, moto_server: MotoServer, tmp_path: Path
) -> None:
    """A staging copy a crashed archive left is never referenced: gc removes it once it is
    older than --grace, lists it with --dry-run, and leaves a young one (a running archive's)."""
    key = "staging/0123456789ab/" + "ab" * 32
    data = b"x" * 4096
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    if kind == "s3":
        bucket = moto_server.create_bucket()
        client = moto_server.client()
        store = f"s3://{bucket}/arch"
        client.put_object(Bucket=bucket, Key=f"arch/{key}", Body=data)

        def present() -> bool:
            found = client.list_objects_v2(Bucket=bucket, Prefix="arch/staging/")
            return bool(found.get("Contents"))
    else:
        root = tmp_path / "archive"
        (root / key).parent.mkdir(parents=True)
        (root / key).write_bytes(data)
        store = str(root)

        def present() -> bool:
            return (root / key).exists()

    young = _ok(run_bale("gc", store, env=env))
    assert "1 recent staging copy(ies) kept" in young.stderr, show(young)
    assert key not in young.stdout and present()
    dry = _ok(run_bale("gc", store, "--grace", "0s", "--dry-run", env=env))
    assert f"would remove staging copy {key} 4.0 KiB" in dry.stdout, show(dry)
    assert "1 staging copy(ies) (4.0 KiB) would be removed" in dry.stderr, show(dry)
    assert present()
    swept = _ok(run_bale("gc", store, "--grace", "0s", env=env))
    assert f"removed staging copy {key}" in swept.stdout, show(swept)
    assert "1 staging copy(ies) (4.0 KiB) removed" in swept.stderr, show(swept)
    assert not present()


def test_verify_reports_cold_objects_unchecked_until_thawed(
    pair: tuple[BuiltImage, BuiltImage], moto_server: MotoServer, tmp_path: Path
) -> None:
    """Blobs in GLACIER cannot be read: verify lists them as not checked, with the thaw that
    makes them readable, and exits 0; thawed, they are hashed like any other."""
    first, ref = pair[0], pair[0].reference
    assert ref is not None
    bucket = moto_server.create_bucket()
    env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto_server.endpoint_url)
    store = f"s3://{bucket}"
    _ok(run_bale("archive", ref, "--to", store, "--storage-class", "blobs=GLACIER",
                 "--src-tls-verify=false", env=env))  # fmt: skip
    layers = sorted(_blob_key(d.digest) for d in first.layers)
    thaw = f"bale thaw {ref} --from {store}"
    for args in ((), ("--deep",), (ref,), (ref, "--deep")):
        proc = run_bale("verify", store, *args, env=env)
        assert proc.returncode == 0, show(proc)
        assert proc.stdout == "", show(proc)
        assert f"no faults; 2 object(s) in archive classes not checked: run `{thaw}`" in (
            proc.stderr
        ), show(proc)
    report = json.loads(_ok(run_bale("verify", store, "--json", env=env)).stdout)
    assert report["ok"] and report["faults"] == [] and report["cold"] == layers, report
    assert report["thaw"] == thaw
    assert report["blobs"] == 2  # the manifest and the config, in the standard class

    _ok(run_bale("thaw", ref, "--from", store, env=env))
    deadline = time.monotonic() + 60
    while json.loads(_ok(run_bale("thaw", ref, "--from", store, "--json",
                                  env=env)).stdout)[0]["state"] != "ready":  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(1)
    report = json.loads(_ok(run_bale("verify", store, "--deep", "--json", env=env)).stdout)
    assert report["ok"] and report["cold"] == [] and report["thaw"] is None, report
    assert report["blobs"] == 4 and report["bytes_decompressed"] > 0, report

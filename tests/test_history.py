"""A moved tag keeps its history, `--immutable` refuses to move it (issue 17), through the CLI on
the local store, moto and the OSS test server: archive → push another image to the same tag →
archive again; both digests restorable (skopeo reads them back), `ls --history` lists both,
gc keeps what only a history image uses, a kill -9 after the history copy leaves a store that
verifies and a rerun completes."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.copy.session import RegistryOptions, Session
from pipeline.errors import StoreError
from pipeline.ops.archive import Archiver
from pipeline.ops.verify import verify_store
from pipeline.refs import Reference
from pipeline.store.base import Composition, Piece, Readable, WriteResult
from pipeline.store.local import LocalStore
from tests.bed.cli import isolated_env, kill_when, run_bale, show, start_bale
from tests.bed.fixtures_store import oss_cli_env
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Store:
    url: str
    env: dict[str, str]
    exists: Callable[[str], bool]
    """Whether the store has an object at this key, asked of the server itself."""


@pytest.fixture(params=["local", "s3", "oss"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        root = tmp_path / "archive"
        return Store(str(root), isolated_env(tmp_path), lambda key: (root / key).is_file())
    if request.param == "s3":
        moto = request.getfixturevalue("moto_server")
        env = isolated_env(tmp_path, **MOTO_KEYS, AWS_ENDPOINT_URL=moto.endpoint_url)
        bucket = moto.create_bucket()

        def in_s3(key: str) -> bool:
            listed = moto.client().list_objects_v2(Bucket=bucket, Prefix=f"arch/{key}")
            return bool(listed.get("Contents"))

        return Store(f"s3://{bucket}/arch", env, in_s3)
    oss = request.getfixturevalue("oss_server")
    bucket = oss.create_bucket()
    env = oss_cli_env(tmp_path, oss)
    return Store(f"oss://{bucket}/arch", env, lambda key: f"arch/{key}" in oss.objects(bucket))


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, show(proc)
    return proc


def _push(
    factory: ImageFactory, registry: RegistryServer, ref: str, seed: int, size: int = 20_000
) -> BuiltImage:
    image = factory.image(layers=(LayerSpec(size, seed=seed), LayerSpec(3_000, seed=seed + 1)))
    return factory.push(image, ref, registry)


def _history(store: Store, pattern: str) -> list[dict[str, Any]]:
    out = _ok(run_bale("ls", store.url, pattern, "--history", "--json", env=store.env)).stdout
    listed: list[dict[str, Any]] = json.loads(out)
    return listed


def _restored_digest(
    store: Store, image: str, registry: RegistryServer, skopeo: Any, dest: str
) -> str:
    _ok(
        run_bale(
            "restore", image, dest, "--from", store.url, "--dest-tls-verify=false", env=store.env
        )
    )
    digest: str = skopeo.inspect(f"docker://{dest}")["Digest"]
    return digest


@dataclass(frozen=True)
class Moved:
    """A tag archived, then another image pushed to it in the registry (not yet archived)."""

    repo: str
    ref: str
    first: BuiltImage
    second: BuiltImage
    archive: tuple[str, ...]
    """The archive command's arguments for the tag."""


def _archived_then_moved(
    store: Store, registry: RegistryServer, factory: ImageFactory, seed: int, size: int = 20_000
) -> Moved:
    repo = f"history/{uuid.uuid4().hex[:8]}"
    ref = f"{registry.host}/{repo}:1.0"
    first = _push(factory, registry, ref, seed=seed)
    archive = ("archive", ref, "--to", store.url, "--src-tls-verify=false")
    _ok(run_bale(*archive, env=store.env))
    second = _push(factory, registry, ref, seed=seed + 10, size=size)
    assert first.digest != second.digest
    return Moved(repo, ref, first, second, archive)


def test_moved_tag_keeps_both_digests(
    store: Store, registry: RegistryServer, image_factory: ImageFactory, skopeo: Any
) -> None:
    moved = _archived_then_moved(store, registry, image_factory, seed=1701)
    repo, ref, first, second = moved.repo, moved.ref, moved.first, moved.second
    _ok(run_bale(*moved.archive, env=store.env))

    listed = _history(store, ref)
    assert [(e["digest"], e["current"]) for e in listed] == [
        (second.digest, True),
        (first.digest, False),
    ]
    hex_ = first.digest.split(":")[1]
    assert (
        listed[1]["tar_key"]
        == f"images/{registry.host.replace(':', '-')}/{repo}/1.0@sha256-{hex_}.tar"
    )
    plain = json.loads(_ok(run_bale("ls", store.url, ref, "--json", env=store.env)).stdout)
    assert [e["digest"] for e in plain] == [second.digest]
    table = _ok(run_bale("ls", store.url, ref, "--history", env=store.env)).stdout
    assert first.digest[:19] in table and second.digest[:19] in table

    # gc with no grace keeps what only the history image uses; verify counts it as referenced.
    _ok(run_bale("gc", store.url, "--older-than", "0s", env=store.env))
    _ok(run_bale("verify", store.url, env=store.env))
    for digest in (first.digest, second.digest):
        _ok(run_bale("verify", store.url, f"{ref}@{digest}", env=store.env))

    dest = f"{registry.host}/restored/{uuid.uuid4().hex[:8]}"
    got = _restored_digest(store, f"{ref}@{first.digest}", registry, skopeo, f"{dest}:old")
    assert got == first.digest
    got = _restored_digest(
        store, f"{registry.host}/{repo}@{first.digest}", registry, skopeo, f"{dest}:bydigest"
    )
    assert got == first.digest
    assert _restored_digest(store, ref, registry, skopeo, f"{dest}:new") == second.digest
    inspected = run_bale("inspect", f"{ref}@{first.digest}", "--from", store.url, env=store.env)
    assert json.loads(_ok(inspected).stdout)["Digest"] == first.digest


def test_immutable_refuses_a_moved_tag_and_goes_on(
    store: Store, registry: RegistryServer, image_factory: ImageFactory, tmp_path: Path
) -> None:
    repo = f"immutable/{uuid.uuid4().hex[:8]}"
    ref, other = f"{registry.host}/{repo}:1.0", f"{registry.host}/{repo}-other:1.0"
    first = _push(image_factory, registry, ref, seed=1801)
    _ok(run_bale("archive", ref, "--to", store.url, "--src-tls-verify=false", env=store.env))
    second = _push(image_factory, registry, ref, seed=1811)
    _push(image_factory, registry, other, seed=1821)

    planned = run_bale(
        "archive",
        ref,
        "--to",
        store.url,
        "--src-tls-verify=false",
        "--immutable",
        "--dry-run",
        env=store.env,
    )
    assert planned.returncode == 1 and second.digest in planned.stderr, show(planned)
    report = tmp_path / "report.json"
    proc = run_bale(
        "archive",
        ref,
        other,
        "--to",
        store.url,
        "--src-tls-verify=false",
        "--immutable",
        "--report",
        str(report),
        env=store.env,
    )
    assert proc.returncode == 1, show(proc)
    assert first.digest in proc.stderr and second.digest in proc.stderr, show(proc)
    results = {r["source"]: r for r in json.loads(report.read_text())["images"]}
    assert results[ref]["status"] == "failed"
    assert first.digest in results[ref]["error"] and second.digest in results[ref]["error"]
    assert results[other]["status"] == "archived"
    # Nothing moved: the tag's record is the first image's, and it has no history.
    assert [(e["digest"], e["current"]) for e in _history(store, ref)] == [(first.digest, True)]

    # The same digest is skipped as always; the spec's `immutable:` refuses as the flag does.
    again = run_bale(
        "archive", other, "--to", store.url, "--src-tls-verify=false", "--immutable", env=store.env
    )
    assert _ok(again).returncode == 0
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"{registry.host}:\n  images:\n    {repo}: ['1.0']\n  immutable: [{repo}]\n")
    ran = run_bale("run", str(spec), "--to", store.url, "--src-tls-verify=false", env=store.env)
    assert ran.returncode == 1, show(ran)
    assert first.digest in ran.stderr and second.digest in ran.stderr, show(ran)
    assert [e["digest"] for e in _history(store, ref)] == [first.digest]


def test_kill_after_the_history_copy_leaves_the_old_image_then_a_rerun_moves(
    store: Store, registry: RegistryServer, image_factory: ImageFactory, skopeo: Any
) -> None:
    moved = _archived_then_moved(store, registry, image_factory, seed=1901, size=3 << 20)
    repo, ref, first, second = moved.repo, moved.ref, moved.first, moved.second
    archive = moved.archive

    hex_ = first.digest.split(":")[1]
    kept = f"{registry.host.replace(':', '-')}/{repo}/1.0@sha256-{hex_}.json"

    proc = start_bale(*archive, "--limit-rate", "256K", env=store.env)
    kill_when(proc, lambda: store.exists(f"images/{kept}"))

    # Killed after the history copy, before the tag, tar and record moved: the old image is
    # the current one, whole, and its history copy is complete.
    listed = _history(store, ref)
    assert [(e["digest"], e["current"]) for e in listed] == [(first.digest, True)]
    _ok(run_bale("verify", store.url, env=store.env))
    dest = f"{registry.host}/restored/{uuid.uuid4().hex[:8]}"
    assert _restored_digest(store, ref, registry, skopeo, f"{dest}:mid") == first.digest

    _ok(run_bale(*archive, env=store.env))
    listed = _history(store, ref)
    assert [(e["digest"], e["current"]) for e in listed] == [
        (second.digest, True),
        (first.digest, False),
    ]
    _ok(run_bale("verify", store.url, env=store.env))
    assert (
        _restored_digest(store, f"{ref}@{first.digest}", registry, skopeo, f"{dest}:old")
        == first.digest
    )
    assert _restored_digest(store, ref, registry, skopeo, f"{dest}:new") == second.digest


class WriteOnceStore(LocalStore):
    """A local store that refuses every overwrite, as an OSS WORM bucket does, and says so
    through the `write_once` flag a protected store sets."""

    write_once = True

    def _refuse(self, key: str, if_absent: bool) -> None:
        if not if_absent and self.head(key) is not None:
            raise StoreError(f"{self.describe(key)}: FileImmutable: the bucket is write-once")

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> WriteResult:
        self._refuse(key, if_absent)
        return super().put(key, data, if_absent=if_absent)

    def put_stream(
        self, key: str, stream: Readable, size: int | None = None, *, if_absent: bool = False
    ) -> WriteResult:
        self._refuse(key, if_absent)
        return super().put_stream(key, stream, size, if_absent=if_absent)

    def start_compose(
        self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False
    ) -> Composition:
        self._refuse(key, if_absent)
        return super().start_compose(key, pieces, if_absent=if_absent)


def test_write_once_store_gets_the_moved_tag_at_its_history_path(
    registry: RegistryServer, image_factory: ImageFactory, tmp_path: Path
) -> None:
    repo = f"worm/{uuid.uuid4().hex[:8]}"
    ref = Reference.parse(f"{registry.host}/{repo}:1.0")
    bucket = ArchiveBucket(WriteOnceStore(tmp_path / "worm"))

    def archive() -> str:
        with Session() as session:
            result = Archiver(bucket, session).archive(ref, RegistryOptions(tls_verify=False))
        assert result.status != "failed", result.error
        return result.status

    first = _push(image_factory, registry, str(ref), seed=2001)
    assert archive() == "archived"
    second = _push(image_factory, registry, str(ref), seed=2011)
    assert archive() == "archived"
    assert archive() == "skipped"  # its history copy is the archived image of that digest

    current = bucket.read_record(ref)
    assert current is not None and current.digest == first.digest
    assert bucket.tag_digest(ref.store_repo, "1.0") == first.digest
    kept = bucket.read_history(ref.store_repo, "1.0", second.digest)
    assert kept is not None and kept.is_history
    assert kept.tar_key == layout.history_tar_key(ref.store_repo, "1.0", second.digest)
    assert bucket.store.head(kept.tar_key) is not None
    index = layout.tag_index_link_key(ref.store_repo, "1.0", second.digest)
    assert bucket.store.read(index) == second.digest.encode()
    assert {r.digest for r in bucket.records(history=True)} == {first.digest, second.digest}
    restored = bucket.image(Reference.parse(f"{ref}@{second.digest}")).manifest()
    assert restored.digest == second.digest
    assert verify_store(bucket).ok

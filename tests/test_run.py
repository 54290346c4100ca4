"""`bale run` end to end: a spec against a real registry, into a local bucket, via the CLI.

The fleet is 20 small images in four repositories, each selected by a different kind of spec
entry (`images: []`, a tag list, a tag regex, a semver range). All share one base layer, the
images of a repository share a middle layer, and each has a top layer and config of its own:
45 distinct blobs. The registry's access log shows what bale really fetched.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.archive.bucket import ArchiveBucket
from pipeline.batch.plan import expand_spec
from pipeline.batch.report import ImageResult
from pipeline.batch.run import run_plan
from pipeline.batch.shard import shard_of
from pipeline.batch.spec import parse_spec
from pipeline.copy.events import NullImageEvents
from pipeline.copy.session import RegistryOptions, Session, TransferOptions
from pipeline.ops.archive import ArchiveOptions, Archiver
from pipeline.refs import Reference
from pipeline.store.local import LocalStore
from tests.bed.cli import isolated_env, run_bale, start_bale
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

TAGS = ("1.0", "1.1", "1.2", "1.3", "1.4")
BLOB_GET = r"/blobs/sha256:"
_fleets = itertools.count(1)


@dataclass
class Fleet:
    registry: RegistryServer
    prefix: str
    images: dict[str, BuiltImage]
    """Full reference (as bale normalises it) -> the pushed image."""
    spec: str

    @property
    def blobs(self) -> dict[str, int]:
        """Every distinct config and layer blob of the fleet: digest -> size."""
        return {d.digest: d.size for i in self.images.values() for d in i.blobs}

    def write_spec(self, path: Path, extra: str = "") -> Path:
        path.write_text(self.spec + extra)
        return path


@pytest.fixture(scope="module")
def fleet(registry: RegistryServer, image_factory: ImageFactory) -> Fleet:
    prefix = f"bed/run-fleet-{next(_fleets)}"
    base = LayerSpec(64 * 1024, seed=6_000)

    def push_repo(r: int) -> list[tuple[str, BuiltImage]]:
        """One repository's tags in turn: docker-registry 2.8.2 answers 500 now and then to
        concurrent pushes of one blob into one repository."""
        middle = LayerSpec(16 * 1024, seed=6_100 + r)
        out = []
        for t, tag in enumerate(TAGS):
            ref = f"{registry.host}/{prefix}/app{r}:{tag}"
            top = LayerSpec(4 * 1024, seed=6_200 + 10 * r + t)
            out.append(
                (ref, image_factory.build_and_push(ref, registry, layers=(base, middle, top)))
            )
        return out

    first = push_repo(0)  # the shared base layer lands once, before the others reuse it
    with ThreadPoolExecutor(3) as pool:
        rest = [pair for pairs in pool.map(push_repo, range(1, 4)) for pair in pairs]
    images = dict(first + rest)
    spec = f"""\
{registry.host}:
  tls-verify: false
  images:
    {prefix}/app0: []
    {prefix}/app1: ["1.0", "1.1", "1.2", "1.3", "1.4"]
  images-by-tag-regex:
    {prefix}/app2: ^1\\.[0-9]$
  images-by-semver:
    {prefix}/app3: ">= 1.0"
"""
    return Fleet(registry, prefix, images, spec)


def _records(store: Path) -> dict[str, str]:
    """source -> digest for every record in a local bucket."""
    return {r.source: r.digest for r in ArchiveBucket(LocalStore(store)).records()}


def test_twenty_images_shared_blobs_move_once(fleet: Fleet, tmp_path: Path) -> None:
    spec = fleet.write_spec(tmp_path / "spec.yaml")
    store, report, junit = tmp_path / "bucket", tmp_path / "report.json", tmp_path / "junit.xml"
    since = fleet.registry.mark()
    proc = run_bale(
        "run",
        str(spec),
        "--to",
        str(store),
        "--jobs",
        "4",
        "--report",
        str(report),
        "--junit",
        str(junit),
        env=isolated_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr

    # Every image archived, with the digest the registry holds.
    assert _records(store) == {ref: img.digest for ref, img in fleet.images.items()}
    data = json.loads(report.read_text())
    assert sorted(i["source"] for i in data["images"]) == sorted(fleet.images)
    assert {i["status"] for i in data["images"]} == {"archived"}

    # Each of the 45 distinct blobs was fetched exactly once, though 20 images list the base.
    gets = fleet.registry.requests("GET", BLOB_GET, since=since)
    fetched = [e.path.rsplit("/", 1)[1] for e in gets]
    assert len(fleet.blobs) == 45
    assert sorted(fetched) == sorted(fleet.blobs)

    # Totals add up: per-image sums, and the bytes that really moved.
    totals = data["totals"]
    assert totals["images"] == totals["archived"] == 20
    for name in ("bytes_downloaded", "bytes_uploaded", "bytes_already_stored"):
        assert totals[name] == sum(i[name] for i in data["images"])
    assert totals["bytes_downloaded"] == sum(fleet.blobs.values())
    listed = sum(d.size for img in fleet.images.values() for d in img.blobs)
    assert totals["bytes_downloaded"] + totals["bytes_already_stored"] == listed
    assert totals["bytes_uploaded"] >= totals["bytes_downloaded"]

    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "20" and suite.get("failures") == "0"

    # Non-TTY output: one start and one end line per image on stderr, results on stdout.
    for ref in fleet.images:
        assert sum(f" start    {ref}" in line for line in proc.stderr.splitlines()) == 1
        assert sum(f" archived {ref} " in line for line in proc.stderr.splitlines()) == 1
    assert len(proc.stdout.splitlines()) == 20

    # A second run finds everything archived: nothing fetched, every image skipped.
    since = fleet.registry.mark()
    again = run_bale(
        "run", str(spec), "--to", str(store), "--report", str(report), env=isolated_env(tmp_path)
    )
    assert again.returncode == 0, again.stderr
    assert fleet.registry.count("GET", BLOB_GET, since=since) == 0
    assert {i["status"] for i in json.loads(report.read_text())["images"]} == {"skipped"}


def test_two_shards_at_once_cover_each_image_once(fleet: Fleet, tmp_path: Path) -> None:
    spec = fleet.write_spec(tmp_path / "spec.yaml")
    store = tmp_path / "bucket"
    procs = [
        start_bale(
            "run",
            str(spec),
            "--to",
            str(store),
            "--shard",
            f"{i}/2",
            "--report",
            str(tmp_path / f"shard{i}.json"),
            env=isolated_env(tmp_path),
        )
        for i in range(2)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err

    archived: list[str] = []
    for i in range(2):
        images = json.loads((tmp_path / f"shard{i}.json").read_text())["images"]
        assert {img["status"] for img in images} == {"archived"}
        names = [img["source"] for img in images]
        assert all(shard_of(Reference.parse(n), 2) == i for n in names)
        archived += names
    assert sorted(archived) == sorted(fleet.images)  # each image exactly once
    assert _records(store) == {ref: img.digest for ref, img in fleet.images.items()}
    _assert_verify_clean(tmp_path, store)


def _assert_verify_clean(tmp_path: Path, store: Path) -> None:
    """`bale verify` is another engineer's command: assert on it once it exists."""
    probe = run_bale("verify", "--help", env=isolated_env(tmp_path))
    if probe.returncode != 0:
        pytest.skip("bale verify is not available yet")
    proc = run_bale("verify", str(store), env=isolated_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_image_others_archive_exit_1(fleet: Fleet, tmp_path: Path) -> None:
    host = fleet.registry.host
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""\
{host}:
  tls-verify: false
  images:
    {fleet.prefix}/app1: ["1.0", "9.9-missing", "1.1"]
    {fleet.prefix}/no-such-repo: []
"""
    )
    store, report, junit = tmp_path / "bucket", tmp_path / "report.json", tmp_path / "junit.xml"
    proc = run_bale(
        "run",
        str(spec),
        "--to",
        str(store),
        "--report",
        str(report),
        "--junit",
        str(junit),
        env=isolated_env(tmp_path),
    )
    assert proc.returncode == 1, proc.stderr
    ok = {f"{host}/{fleet.prefix}/app1:{t}" for t in ("1.0", "1.1")}
    assert set(_records(store)) == ok

    images = {i["source"]: i for i in json.loads(report.read_text())["images"]}
    missing = f"{host}/{fleet.prefix}/app1:9.9-missing"
    unlisted = f"{host}/{fleet.prefix}/no-such-repo"
    assert {s for s, i in images.items() if i["status"] == "archived"} == ok
    assert images[missing]["status"] == "failed" and images[missing]["error"]
    assert images[unlisted]["status"] == "failed"
    assert "cannot list tags" in images[unlisted]["error"]
    assert "spec.yaml:5" in images[unlisted]["error"]

    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "2"
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {missing, unlisted}
    assert missing in proc.stderr and unlisted in proc.stderr


def test_dry_run_reads_only_and_counts_what_would_move(fleet: Fleet, tmp_path: Path) -> None:
    spec = fleet.write_spec(tmp_path / "spec.yaml")
    store, report = tmp_path / "bucket", tmp_path / "report.json"
    since = fleet.registry.mark()
    proc = run_bale(
        "run",
        str(spec),
        "--to",
        str(store),
        "--dry-run",
        "--report",
        str(report),
        env=isolated_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert not store.exists()  # not a single write
    assert fleet.registry.count("GET", BLOB_GET, since=since) == 0
    assert fleet.registry.count(None, r"/blobs/uploads", since=since) == 0
    data = json.loads(report.read_text())
    assert {i["status"] for i in data["images"]} == {"planned"}
    assert data["totals"]["bytes_downloaded"] == sum(fleet.blobs.values())
    one = next(iter(fleet.images))
    proc = run_bale(
        "archive",
        one,
        "--to",
        str(store),
        "--dry-run",
        "--src-tls-verify=false",
        env=isolated_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    digest = fleet.images[one].digest
    assert proc.stdout.startswith(f"planned   {one} {digest} -> {store}/images/")
    assert "would download" in proc.stderr and not store.exists()

    # Archive one repository; the dry run then sees its blobs (and the shared base) as stored.
    app0 = [r for r in fleet.images if "/app0:" in r]
    done = run_bale(
        "archive", *app0, "--to", str(store), "--src-tls-verify=false", env=isolated_env(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    proc = run_bale(
        "run",
        str(spec),
        "--to",
        str(store),
        "--dry-run",
        "--report",
        str(report),
        env=isolated_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    images = {i["source"]: i for i in json.loads(report.read_text())["images"]}
    assert {images[r]["status"] for r in app0} == {"skipped"}
    stored = {d for r in app0 for d in (b.digest for b in fleet.images[r].blobs)}
    expected = sum(size for d, size in fleet.blobs.items() if d not in stored)
    assert sum(i["bytes_downloaded"] for i in images.values()) == expected


def test_bad_input_exits_2_and_writes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    good = fleet.write_spec(tmp_path / "good.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(fleet.spec.replace("tls-verify: false", "tls-verify: false\n  colour: red"))
    store = tmp_path / "bucket"
    cases = [
        ("run", str(bad), "--to", str(store)),
        ("run", str(tmp_path / "absent.yaml"), "--to", str(store)),
        ("run", str(good), "--to", str(store), "--shard", "2/2"),
        ("run", str(good), "--to", "s3://"),
        ("run", str(good), "--to", str(store), "--report", str(tmp_path / "no" / "r.json")),
        ("run", str(good), "--to", str(store), "--jobs", "0"),
    ]
    for args in cases:
        proc = run_bale(*args, env=isolated_env(tmp_path))
        assert proc.returncode == 2, (args, proc.stderr)
        assert not store.exists(), args
    proc = run_bale("run", str(bad), "--to", str(store), env=isolated_env(tmp_path))
    assert "bad.yaml:3" in proc.stderr and "colour" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_json_log_one_object_per_event(fleet: Fleet, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"{fleet.registry.host}:\n  tls-verify: false\n  images:\n"
        f'    {fleet.prefix}/app2: ["1.0", "1.1", "nope"]\n'
    )
    proc = run_bale(
        "--log-format",
        "json",
        "run",
        str(spec),
        "--to",
        str(tmp_path / "b"),
        env=isolated_env(tmp_path),
    )
    assert proc.returncode == 1
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_done"
    assert kinds.count("image_start") == kinds.count("image_done") == 3
    done = {e["image"]: e for e in events if e["event"] == "image_done"}
    assert done[f"{fleet.registry.host}/{fleet.prefix}/app2:nope"]["status"] == "failed"
    assert events[-1]["totals"]["archived"] == 2 and events[-1]["exit_code"] == 1


def test_spec_credentials_override_the_command_line(
    htpasswd_registry: RegistryServer, image_factory: ImageFactory, unique_repo: str, tmp_path
) -> None:
    reg = htpasswd_registry
    image_factory.build_and_push(f"{reg.host}/{unique_repo}:v1", reg, layers=(LayerSpec(2048),))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""\
{reg.host}:
  tls-verify: false
  credentials: {{username: {reg.username}, password: "{reg.password}"}}
  images:
    {unique_repo}: []
"""
    )
    report = tmp_path / "report.json"
    proc = run_bale(
        "run",
        str(spec),
        "--to",
        str(tmp_path / "b"),
        "--report",
        str(report),
        "--src-creds",
        "someone:wrong",
        "--src-tls-verify=true",
        env=isolated_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert [i["status"] for i in json.loads(report.read_text())["images"]] == ["archived"]

    # Wrong credentials in the spec: the listing fails, named in the report, password never shown.
    spec.write_text(spec.read_text().replace(reg.password, "not-the-password"))
    proc = run_bale(
        "run",
        str(spec),
        "--to",
        str(tmp_path / "b"),
        "--report",
        str(report),
        env=isolated_env(tmp_path),
    )
    assert proc.returncode == 1
    text = report.read_text() + proc.stdout + proc.stderr
    assert "not-the-password" not in text
    (failure,) = json.loads(report.read_text())["images"]
    assert failure["source"] == f"{reg.host}/{unique_repo}" and failure["status"] == "failed"


class Recorder(NullImageEvents):
    def __init__(self) -> None:
        self.started: list[str] = []
        self.size: dict[str, int] = {}
        self.moved: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.done: list[ImageResult] = []
        self.blob_bytes = 0
        self.threads: set[str] = set()

    def on_bytes(self, key: str, n: int) -> None:
        self.blob_bytes += n
        self.threads.add(threading.current_thread().name)

    def on_image_start(self, source: str) -> None:
        self.started.append(source)

    def on_image_size(self, source: str, nbytes: int) -> None:
        self.size[source] = nbytes

    def on_image_bytes(self, source: str, moved: int = 0, skipped: int = 0) -> None:
        self.moved[source] = self.moved.get(source, 0) + moved
        self.skipped[source] = self.skipped.get(source, 0) + skipped

    def on_image_done(self, result: ImageResult) -> None:
        self.done.append(result)


def test_library_run_events_account_for_every_byte(fleet: Fleet, tmp_path: Path) -> None:
    spec = parse_spec(fleet.spec, "fleet.yaml")
    events = Recorder()
    bucket = ArchiveBucket(LocalStore(tmp_path / "bucket"))
    with Session(TransferOptions(jobs=2)) as session:
        plan = expand_spec(spec, session, RegistryOptions(tls_verify=True), shard=(1, 3))
        assert plan.selected == 20 and not plan.failures
        assert sorted(str(r) for r, _ in plan.images) == sorted(
            r for r in fleet.images if shard_of(Reference.parse(r), 3) == 1
        )
        assert {o.tls_verify for _, o in plan.images} == {False}  # the spec wins
        report = run_plan(plan, Archiver(bucket, session, events), ArchiveOptions())
    names = [str(r) for r, _ in plan.images]
    assert sorted(events.started) == sorted(names)
    assert sorted(r.source for r in events.done) == sorted(names)
    for r in report.results:
        assert events.moved.get(r.source, 0) == r.bytes_downloaded
        assert events.moved.get(r.source, 0) + events.skipped[r.source] == events.size[r.source]
    assert events.blob_bytes == report.totals()["bytes_downloaded"]
    # Every blob byte moved on one of the session's --jobs threads, whatever the image count.
    assert events.threads <= {"bale-blob_0", "bale-blob_1"}


def test_fail_fast_stops_on_a_listing_failure(fleet: Fleet, tmp_path: Path) -> None:
    spec = parse_spec(
        f"{fleet.registry.host}:\n  tls-verify: false\n  images:\n"
        f"    {fleet.prefix}/gone: []\n    {fleet.prefix}/app0: []\n"
    )
    bucket = ArchiveBucket(LocalStore(tmp_path / "bucket"))
    with Session() as session:
        plan = expand_spec(spec, session, RegistryOptions())
        assert len(plan.images) == 5 and len(plan.failures) == 1
        report = run_plan(plan, Archiver(bucket, session), fail_fast=True)
    assert [r.status for r in report.results] == ["failed"]
    assert report.exit_code() == 1
    assert not (tmp_path / "bucket").exists()


def test_expansion_matches_what_skopeo_sync_copies(
    fleet: Fleet, image_factory: ImageFactory, tmp_path: Path
) -> None:
    """The same spec through `skopeo sync --src yaml` and through bale: the same images.

    (skopeo 1.9 has no images-by-semver, and copies an image twice when two entries select it,
    so this spec avoids both.)"""
    host, prefix = fleet.registry.host, fleet.prefix
    pinned = fleet.images[f"{host}/{prefix}/app1:1.4"].digest
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""\
{host}:
  tls-verify: false
  images:
    {prefix}/app0: []
    {prefix}/app1: ["1.0", "1.3", "{pinned}"]
  images-by-tag-regex:
    {prefix}/app2: ^1\\.[0-2]$
"""
    )
    proc = image_factory.skopeo.run(
        "sync", "--src", "yaml", "--dest", "dir", "--scoped", str(spec), str(tmp_path / "out")
    )
    copied = set(re.findall(r'from="docker://([^"]+)"', proc.stderr.decode()))
    with Session() as session:
        plan = expand_spec(parse_spec(spec.read_text()), session, RegistryOptions())
    assert {str(ref) for ref, _ in plan.images} == copied
    assert len(copied) == 5 + 3 + 3

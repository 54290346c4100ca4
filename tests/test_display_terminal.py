"""The progress display on a real pseudo-terminal, through the real CLI.

Six images in two repositories share one base layer; one of them is archived before the run
(so the run skips it) and one more reference does not exist (so it fails). A run of them on a
terminal must finish every image, exit 1 for the failed one, write its report, and show what
a person reads: "already archived", the failure, sizes and rates in powers of 1024 (as
`--limit-rate` counts), and the summary table with bytes up and `sha256:` digests.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.archive.bucket import ArchiveBucket
from pipeline.store.local import LocalStore
from pipeline.units import format_size
from tests.bed.cli import isolated_env, run_bale
from tests.bed.images import ImageFactory, LayerSpec
from tests.bed.registry import RegistryServer
from tests.bed.terminal import TerminalRun, run_on_terminal

pytestmark = pytest.mark.integration

_fleets = itertools.count(1)
DECIMAL_UNITS = re.compile(r"\d\s?(?:kB|KB|MB|GB|TB)(?:/s)?\b")


@dataclass
class Fleet:
    registry: RegistryServer
    prefix: str
    digests: dict[str, str]
    """reference -> digest, in push order"""
    blob_sizes: dict[str, int]
    """every distinct blob of the fleet: digest -> size"""
    sizes: dict[str, int]
    """reference -> the sum of its blobs' sizes"""

    @property
    def refs(self) -> list[str]:
        return list(self.digests)

    @property
    def missing(self) -> str:
        return f"{self.registry.host}/{self.prefix}/app0:no-such-tag"


@pytest.fixture(scope="module")
def fleet(registry: RegistryServer, image_factory: ImageFactory) -> Fleet:
    prefix = f"bed/tty-fleet-{next(_fleets)}"
    base = LayerSpec(1536 * 1024, seed=7_000)  # shared by every image
    digests: dict[str, str] = {}
    blobs: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for i in range(6):
        ref = f"{registry.host}/{prefix}/app{i % 2}:1.{i}"
        top = LayerSpec(48 * 1024 + 1024 * i, seed=7_100 + i)
        image = image_factory.build_and_push(ref, registry, layers=(base, top))
        digests[ref] = image.digest
        blobs.update({d.digest: d.size for d in image.blobs})
        sizes[ref] = sum(d.size for d in image.blobs)
    return Fleet(registry, prefix, digests, blobs, sizes)


def _archive_piped(tmp_path: Path, store: Path, ref: str) -> None:
    """Archive `ref` beforehand, without a terminal, so the run finds it archived."""
    run_bale(
        "archive", ref, "--to", str(store), "--src-tls-verify=false",
        env=isolated_env(tmp_path), check=True,
    )  # fmt: skip


def _lines_with(run: TerminalRun, text: str) -> list[str]:
    return [line for line in run.text.splitlines() if text in line]


def _check_screen(run: TerminalRun, fleet: Fleet, skipped: str, report: dict) -> None:
    """What a person at the terminal reads after the run."""
    text = run.text
    assert "Traceback" not in text and "Error" not in text.replace("error", ""), text
    # The skipped image says why, without a "0 B already stored".
    skipped_lines = _lines_with(run, skipped)
    assert any("already archived" in line for line in skipped_lines), skipped_lines
    assert not any("0 B already stored" in line for line in skipped_lines), skipped_lines
    # The failure is shown with its image.
    assert any(line.lstrip().startswith("failed") for line in _lines_with(run, fleet.missing))
    # The summary table: its columns, and every image with its status and `sha256:` digest.
    header = next(line for line in text.splitlines() if line.lstrip().startswith("IMAGE"))
    assert header.split() == ["IMAGE", "STATUS", "DIGEST", "DOWN", "UP", "STORED", "TIME"]
    table = text[text.index(header) :]
    for image in report["images"]:
        row = next(line for line in table.splitlines() if image["source"] in line)
        assert image["status"] in row
        if image["digest"]:
            assert image["digest"][:19] in row, row
    archived = [i for i in report["images"] if i["status"] == "archived"]
    up = sum(i["bytes_uploaded"] for i in archived)
    assert up > 0
    # One unit family, powers of 1024, as --limit-rate counts.
    assert re.search(r"\d\.\d (?:KiB|MiB)", table)
    assert not DECIMAL_UNITS.search(text), DECIMAL_UNITS.search(text)


@pytest.mark.parametrize("jobs", [1, 4])
def test_archive_many_images_on_a_terminal(fleet: Fleet, tmp_path: Path, jobs: int) -> None:
    store, report_path = tmp_path / "bucket", tmp_path / "report.json"
    skipped = fleet.refs[2]
    _archive_piped(tmp_path, store, skipped)

    since = fleet.registry.mark()
    run = run_on_terminal(
        "archive", *fleet.refs, fleet.missing,
        "--to", str(store), "--jobs", str(jobs), "--src-tls-verify=false",
        "--report", str(report_path),
        env=isolated_env(tmp_path),
    )  # fmt: skip

    assert run.returncode == 1, run.text  # one image failed; the others are archived
    report = json.loads(report_path.read_text())
    statuses = {i["source"]: i["status"] for i in report["images"]}
    assert statuses == {
        **{ref: "archived" for ref in fleet.refs},
        skipped: "skipped",
        fleet.missing: "failed",
    }
    records = {r.source: r.digest for r in ArchiveBucket(LocalStore(store)).records()}
    assert records == fleet.digests
    # The shared base layer came down once: the run's bytes are the distinct blobs' sizes,
    # less the skipped image's (stored before the run).
    before = {d for d in fleet.blob_sizes if d in _blobs_of(store, skipped)}
    totals = report["totals"]
    assert totals["bytes_downloaded"] == sum(
        size for d, size in fleet.blob_sizes.items() if d not in before
    )
    _check_screen(run, fleet, skipped, report)
    # Waiting images' manifests are read ahead (for the overall total); never twice.
    for ref in [*fleet.refs, fleet.missing]:
        path = "/v2/{}/manifests/{}$".format(*ref.split("/", 1)[1].rsplit(":", 1))
        assert len(fleet.registry.requests("GET", path, since=since)) == 1, ref


def _blobs_of(store: Path, ref: str) -> set[str]:
    record = next(r for r in ArchiveBucket(LocalStore(store)).records() if r.source == ref)
    return {b.digest for b in record.blobs}


def test_bars_count_in_mib_while_bytes_move(fleet: Fleet, tmp_path: Path) -> None:
    """At --limit-rate 1M the run takes seconds: the bars are drawn, with the overall one,
    in MiB and MiB/s. With --jobs 1 the overall total counts the waiting images too (their
    manifests are read ahead), not only the one started."""
    store = tmp_path / "bucket"
    refs = fleet.refs[:3]
    run = run_on_terminal(
        "archive", *refs, "--to", str(store), "--jobs", "1", "--limit-rate", "1M",
        "--src-tls-verify=false", env=isolated_env(tmp_path),
    )  # fmt: skip
    assert run.returncode == 0, run.text
    totals = re.findall(r"all images \d/3 .*? / (\d+\.\d \w+)", run.text)
    whole = sum(fleet.sizes[ref] for ref in refs)
    assert totals and format_size(whole) in totals, (format_size(whole), totals)
    assert re.search(r"\d\.\d MiB / \d\.\d MiB", run.text), run.text
    assert re.search(r"\d\.\d (?:KiB|MiB)/s", run.text), run.text
    assert not DECIMAL_UNITS.search(run.text)


def test_restore_all_tags_on_a_terminal(fleet: Fleet, tmp_path: Path) -> None:
    """`restore --all-tags` drives the same display over several images."""
    store, report_path = tmp_path / "bucket", tmp_path / "report.json"
    app0 = [ref for ref in fleet.refs if "/app0:" in ref]
    run = run_on_terminal(
        "archive", *app0, "--to", str(store), "--src-tls-verify=false", env=isolated_env(tmp_path)
    )
    assert run.returncode == 0, run.text
    repo = app0[0].rsplit(":", 1)[0]
    dest = f"{fleet.registry.host}/{fleet.prefix}/restored"
    run = run_on_terminal(
        "restore", repo, dest, "--from", str(store), "--all-tags", "--jobs", "4",
        "--dest-tls-verify=false", "--report", str(report_path), env=isolated_env(tmp_path),
    )  # fmt: skip
    assert run.returncode == 0, run.text
    assert "Traceback" not in run.text
    report = json.loads(report_path.read_text())
    assert sorted(i["source"] for i in report["images"]) == sorted(app0)
    assert {i["status"] for i in report["images"]} == {"restored"}


def test_sync_on_a_terminal(fleet: Fleet, tmp_path: Path) -> None:
    """`sync` of a repository's tags, twice: copied, then each "already there"."""
    repo = fleet.refs[1].rsplit(":", 1)[0]  # app1: three tags
    tags = [ref for ref in fleet.refs if ref.startswith(repo + ":")]
    dest = f"{fleet.registry.host}/{fleet.prefix}/synced"
    args = ("sync", f"docker://{repo}", dest, "--src-tls-verify=false",
            "--dest-tls-verify=false", "--keep-going", "--jobs", "4")  # fmt: skip
    for status in ("copied", "skipped"):
        report_path = tmp_path / f"{status}.json"
        run = run_on_terminal(*args, "--report", str(report_path), env=isolated_env(tmp_path))
        assert run.returncode == 0, run.text
        assert "Traceback" not in run.text
        report = json.loads(report_path.read_text())
        assert sorted(i["source"] for i in report["images"]) == sorted(tags)
        assert {i["status"] for i in report["images"]} == {status}
    assert len([line for line in run.text.splitlines() if "already there" in line]) >= len(tags)

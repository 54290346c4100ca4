"""The catalog over an archive: pages and `/api/` JSON from images `bale archive` wrote (local
directory and moto S3), tar downloads (streamed, or a presigned redirect), the index that keeps
a page from reading every record, 10,000 images, and a real headless Chromium clicking through."""

from __future__ import annotations

import hashlib
import http.client
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pipeline.archive import layout
from pipeline.archive.record import BlobEntry, ImageRecord
from pipeline.oci import OCI_MANIFEST
from pipeline.refs import Reference
from pipeline.serve.catalog_index import CatalogIndex
from pipeline.store.local import LocalStore
from tests.bed.cli import isolated_env, run_bale
from tests.bed.moto import MotoServer
from tests.bed.serve_web import (
    Sample,
    ServeWeb,
    archive_everywhere,
    push_sample,
    request,
    serving,
    start_serve_web,
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
"""Screenshots of the browser test land here (gitignored), one PNG per page."""


# ---- the index, in process --------------------------------------------------------------------


def synthetic_record(i: int, *, repos: int = 100, when: datetime | None = None) -> ImageRecord:
    """Image `i` of a made-up archive: `repos` repositories, each image a base layer shared
    with its repository and a layer of its own (so dedup has something to find)."""
    ref = Reference.parse(f"registry.example.com:5000/team{i % repos % 10}/app{i % repos}:v{i}")
    base = BlobEntry("sha256:" + hashlib.sha256(f"base{i % repos}".encode()).hexdigest(), 1000, "l")
    own = BlobEntry("sha256:" + hashlib.sha256(f"own{i}".encode()).hexdigest(), 10 + i, "l")
    manifest = BlobEntry(
        "sha256:" + hashlib.sha256(f"manifest{i}".encode()).hexdigest(), 500, OCI_MANIFEST
    )
    return ImageRecord(
        source=str(ref),
        repo=ref.store_repo,
        tag=ref.tag,
        digest=manifest.digest,
        media_type=OCI_MANIFEST,
        tar_key=layout.tar_key_for(ref),
        tar_digest=manifest.digest,
        tar_media_type=OCI_MANIFEST,
        tar_size=3000 + i,
        archived_at=when or datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i),
        version="test",
        platforms=("linux/amd64",),
        blobs=(manifest, base, own),
    )


def write_records(store: LocalStore, records: list[ImageRecord]) -> None:
    """Each record and a stand-in tar, as files where the layout puts them (faster than the
    store's own atomic writes, which 10,000 images would wait a minute for)."""
    for record in records:
        for key, data in ((record.record_key, record.to_json()), (record.tar_key, b"tar")):
            path = store.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def test_index_sums_sizes_with_dedup_and_reads_only_changed_records(tmp_path):
    store = LocalStore(tmp_path / "archive", fsync=False)
    write_records(store, [synthetic_record(i, repos=2) for i in range(6)])
    index = CatalogIndex(store)
    snap = index.refresh()
    assert index.records_read == 6
    assert [r.repo for r in snap.repos] == [
        "registry.example.com-5000/team0/app0",
        "registry.example.com-5000/team1/app1",
    ]
    app0 = snap.repos[0]
    assert app0.images == app0.tags == 3
    # images 0, 2, 4: each 500 + 1000 + (10 + i) on its own; the base layer once after dedup
    assert app0.stored_bytes == 3 * 1500 + 10 + 12 + 14
    assert app0.unique_bytes == 3 * 500 + 1000 + 10 + 12 + 14
    assert snap.totals.unique_bytes == sum(r.unique_bytes for r in snap.repos)
    assert app0.last_archived == synthetic_record(4).archived_at

    # nothing changed: one listing, no record read
    index.refresh()
    assert index.records_read == 6
    # one record rewritten, one removed, one bad: only those are read
    write_records(store, [synthetic_record(2, repos=2, when=datetime(2027, 1, 1, tzinfo=UTC))])
    store.delete(synthetic_record(5, repos=2).record_key)
    store.put("images/registry.example.com-5000/team9/bad/v1.json", b"{not json")
    snap = index.refresh()
    assert index.records_read == 8
    assert snap.totals.images == 5
    assert snap.repos[0].last_archived == datetime(2027, 1, 1, tzinfo=UTC)
    assert len(snap.problems) == 1 and "bad/v1.json" in snap.problems[0]
    index.refresh()
    assert index.records_read == 8  # a bad record is not read again until it changes


def test_a_stale_snapshot_is_served_while_the_next_is_built(tmp_path):
    store = LocalStore(tmp_path / "archive", fsync=False)
    write_records(store, [synthetic_record(0)])
    now = [0.0]
    index = CatalogIndex(store, max_age=10, clock=lambda: now[0])
    first = index.snapshot()
    write_records(store, [synthetic_record(1)])
    assert index.snapshot() is first  # young: no refresh
    now[0] = 11
    assert index.snapshot() is first  # old: served, and a refresh starts
    assert index._background is not None
    index._background.join(30)
    assert index.snapshot().totals.images == 2


def test_a_warmed_index_builds_before_the_first_page(tmp_path):
    store = LocalStore(tmp_path / "archive", fsync=False)
    write_records(store, [synthetic_record(i) for i in range(3)])
    index = CatalogIndex(store)
    index.warm()
    assert index.snapshot().totals.images == 3
    assert index.refreshes == 1  # the page waited for the warm-up's build, not a second one


# ---- pages and JSON over a real archive ------------------------------------------------------


@dataclass
class Catalog:
    sample: Sample
    local: ServeWeb
    s3: ServeWeb
    store_dir: Path
    bucket: str


@pytest.fixture(scope="module")
def catalog(
    registry, image_factory, skopeo, moto_server: MotoServer, tmp_path_factory
) -> Iterator[Catalog]:
    tmp = tmp_path_factory.mktemp("serve-catalog")
    sample = push_sample(registry, image_factory, skopeo, tmp / "artifacts", "catalog")
    stores = archive_everywhere(sample, tmp, moto_server)
    specs: list[tuple[str, tuple[str, ...]]] = [(str(stores.local), ()), (stores.s3, ())]
    with serving(specs, tmp, env=stores.env) as (local, s3):
        yield Catalog(sample, local, s3, stores.local, stores.s3.split("/")[2])


@pytest.mark.integration
@pytest.mark.parametrize("which", ["local", "s3"])
def test_api_lists_repositories_images_and_one_image(catalog, which):
    server: ServeWeb = getattr(catalog, which)
    sample = catalog.sample
    app_repo, multi_repo = sample.store_repo(sample.app), sample.store_repo(sample.multi)
    repos = request(server, "GET", "/api/repositories").json()
    assert repos["total"] == 2
    by_name = {r["repository"]: r for r in repos["items"]}
    app = by_name[app_repo]
    assert app["images"] == app["tags"] == 1
    app_blobs = sum(d.size for d in sample.app.blobs) + len(sample.app.manifest)
    assert app["stored_bytes"] == app["unique_bytes"] == app_blobs
    assert app["registries"] == [sample.registry_host]
    assert repos["totals"]["images"] == 2

    found = request(server, "GET", "/api/images?q=multi").json()
    assert [i["repository"] for i in found["items"]] == [multi_repo]
    assert found["items"][0]["platforms"] == ["linux/amd64", "linux/arm64"]
    assert request(server, "GET", "/api/repositories?q=nothing-like-it").json()["items"] == []

    listed = request(server, "GET", f"/api/repositories/{app_repo}").json()
    [image] = listed["items"]
    assert image["digest"] == sample.app.digest
    assert image["signed"] and image["attested"]
    assert image["artifacts"] == ["signature", "attestation", "referrers"]
    assert image["storage_class"] == (None if which == "local" else "STANDARD")
    assert image["source"] == sample.app.reference

    detail = request(server, "GET", f"/api/images/{app_repo}/v1").json()
    [manifest] = detail["manifests"]
    assert manifest["platform"] == "linux/amd64"  # from the config: a lone manifest has none
    assert [layer["digest"] for layer in manifest["layers"]] == [
        d.digest for d in sample.app.layers
    ]
    assert manifest["config"]["digest"] == sample.app.config_descriptor.digest
    commands = detail["commands"]
    store = catalog.store_dir.as_uri() if which == "local" else f"s3://{catalog.bucket}/team"
    tar = catalog.store_dir if which == "local" else store
    assert commands["restore"].startswith(f"bale restore {sample.app.reference} docker://")
    assert commands["restore"].endswith(f"--from {store}")
    assert f"docker-archive:{tar}/images/{app_repo}/v1.tar" in commands["copy"]
    assert f"{server.host}/{app_repo}:v1" in commands["pull"]
    by_digest = request(server, "GET", f"/api/images/{app_repo}/{sample.app.digest}").json()
    assert by_digest["ref"] == "v1"
    multi = request(server, "GET", f"/api/images/{multi_repo}/v2").json()
    assert [m["platform"] for m in multi["manifests"]] == [None, "linux/amd64", "linux/arm64"]
    assert request(server, "GET", f"/api/images/{app_repo}/nope").status == 404


@pytest.mark.integration
@pytest.mark.parametrize("which", ["app", "multi"])
def test_the_commands_an_image_page_shows_work(catalog, registry, skopeo, which, tmp_path):
    """`bale restore` and `bale copy` as the page spells them, REGISTRY filled in: the image
    lands in a registry under the digest it was archived with (restore) or the tar's (copy)."""
    image = getattr(catalog.sample, which)
    tag = image.reference.rsplit(":", 1)[1]
    name = image.repository.split("/", 1)[1]
    detail = request(catalog.local, "GET", f"/api/images/{catalog.sample.store_repo(image)}/{tag}")
    detail_json = detail.json()
    env = isolated_env(tmp_path)
    for kind, expected in (("restore", image.digest), ("copy", detail_json["tar_digest"])):
        where = f"{registry.host}/{kind}-{which}"
        argv = shlex.split(detail_json["commands"][kind].replace("REGISTRY", where))
        assert argv[0] == "bale"
        run_bale(*argv[1:], "--dest-tls-verify=false", env=env, check=True)
        assert skopeo.inspect(f"docker://{where}/{name}:{tag}")["Digest"] == expected


@pytest.mark.integration
def test_pages_render_with_search_sort_and_pages(catalog):
    sample = catalog.sample
    app_repo = sample.store_repo(sample.app)
    home = request(catalog.local, "GET", "/?sort=unique&order=desc").body.decode()
    assert app_repo in home and "unique after dedup" in home
    searched = request(catalog.local, "GET", "/?q=multi").body.decode()
    assert sample.store_repo(sample.multi) in searched and f">{app_repo}<" not in searched
    repo = request(catalog.local, "GET", f"/repos/{app_repo}").body.decode()
    assert sample.app.digest[:19] in repo and "signature" in repo
    image = request(catalog.local, "GET", f"/images/{app_repo}/v1").body.decode()
    for layer in sample.app.layers:
        assert layer.digest in image
    assert f'href="/download/{app_repo}/v1.tar"' in image
    assert "bale copy docker-archive:" in image and "bale restore " in image
    missing = request(catalog.local, "GET", "/repos/no/such/repo")
    assert missing.status == 404 and "not in the archive" in missing.body.decode()


@pytest.mark.integration
def test_download_streams_the_tar_from_a_local_store(catalog):
    repo = catalog.sample.store_repo(catalog.sample.app)
    tar = (catalog.store_dir / "images" / repo / "v1.tar").read_bytes()
    got = request(catalog.local, "GET", f"/download/{repo}/v1.tar")
    assert got.status == 200
    assert hashlib.sha256(got.body).digest() == hashlib.sha256(tar).digest()
    assert got.headers["content-type"] == "application/x-tar"
    assert got.headers["content-disposition"].startswith("attachment; filename=")
    part = request(catalog.local, "GET", f"/download/{repo}/v1.tar", {"Range": "bytes=512-1023"})
    assert part.status == 206 and part.body == tar[512:1024]
    assert request(catalog.local, "GET", f"/download/{repo}/v9.tar").status == 404
    assert request(catalog.local, "GET", f"/download/{repo}/v1.json").status == 404  # tars only


@pytest.mark.integration
def test_download_redirects_to_a_presigned_url_on_s3(catalog, moto_server):
    repo = catalog.sample.store_repo(catalog.sample.app)
    got = request(catalog.s3, "GET", f"/download/{repo}/v1.tar")
    assert got.status == 307
    location = urlsplit(got.headers["location"])
    assert f"{location.scheme}://{location.netloc}" == moto_server.endpoint_url
    conn = http.client.HTTPConnection(location.netloc, timeout=60)
    conn.request("GET", f"{location.path}?{location.query}")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    key = f"team/images/{repo}/v1.tar"
    stored = moto_server.client().get_object(Bucket=catalog.bucket, Key=key)["Body"].read()
    assert body == stored


# ---- 10,000 images ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_images_page_without_reading_records(tmp_path):
    """A page at 10,000 images costs the in-memory snapshot only: after the first build a
    refresh with nothing new reads no record. Times are printed (-s), not asserted."""
    store = LocalStore(tmp_path / "archive", fsync=False)
    n = 10_000
    started = time.perf_counter()
    write_records(store, [synthetic_record(i, repos=1000) for i in range(n)])
    wrote = time.perf_counter() - started
    env = isolated_env(tmp_path)
    server = start_serve_web(str(tmp_path / "archive"), tmp_path, env=env, extra=("--max-age", "0"))
    try:
        timings = []
        for path in (
            "/",  # the first page builds the index
            "/",
            "/?sort=unique&order=desc&page=7",
            "/images?q=app99&sort=date",
            "/images?page=200&per_page=50",
            "/api/images?q=team3/app&page=3",
            "/repos/registry.example.com-5000/team3/app993",
        ):
            t0 = time.perf_counter()
            got = request(server, "GET", path)
            timings.append((path, time.perf_counter() - t0))
            assert got.status == 200, (path, got.body[:300])
        home = request(server, "GET", "/api/repositories?per_page=100&page=10").json()
        assert home["total"] == 1000 and home["pages"] == 10 and len(home["items"]) == 100
        found = request(server, "GET", "/api/images?q=team3/app99&per_page=500").json()
        # app99x in team3: images i with i % 1000 in 990..999 (team = i % 10 = 3 → 993), 10 each
        assert found["total"] == 10
        assert all(i["repository"].endswith("/team3/app993") for i in found["items"])
        last = request(server, "GET", "/api/images?page=200&per_page=50").json()
        assert last["page"] == 200 and len(last["items"]) == 50
        repo = request(
            server, "GET", "/api/repositories/registry.example.com-5000/team3/app993"
        ).json()
        assert (
            repo["total"] == 10
            and repo["repository"]["unique_bytes"] < repo["repository"]["stored_bytes"]
        )
    finally:
        server.stop()
    print(f"\nwrote {n} records in {wrote:.1f} s")
    for path, seconds in timings:
        print(f"{seconds * 1000:8.1f} ms  GET {path}")


# ---- a real browser --------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
@pytest.mark.integration
def test_headless_chromium_browses_searches_and_downloads(catalog, tmp_path):
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("Debian's chromium is not installed (`make deps` installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    shots = ARTIFACTS / "serve-catalog"
    shots.mkdir(parents=True, exist_ok=True)
    sample = catalog.sample
    app_repo = sample.store_repo(sample.app)
    tar = (catalog.store_dir / "images" / app_repo / "v1.tar").read_bytes()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": 1400, "height": 900})
            page.goto(catalog.local.url + "/")
            assert page.locator("#repositories tbody tr").count() == 2
            page.screenshot(path=str(shots / "1-catalog.png"), full_page=True)

            page.fill("input[name=q]", "app")
            page.click("form.search button")
            page.wait_for_url("**/?q=app")
            rows = page.locator("#repositories tbody tr")
            assert rows.count() == 1
            assert app_repo in rows.first.inner_text()
            page.screenshot(path=str(shots / "2-search.png"), full_page=True)

            page.click(f"text={app_repo}")
            page.wait_for_url(f"**/repos/{app_repo}")
            assert "signature" in page.inner_text("#images")
            page.screenshot(path=str(shots / "3-repository.png"), full_page=True)

            page.click("#images tbody tr >> text=v1")
            page.wait_for_url(f"**/images/{app_repo}/v1")
            assert page.inner_text("#digest") == sample.app.digest
            assert page.inner_text("#copy").startswith("bale copy docker-archive:")
            page.screenshot(path=str(shots / "4-image.png"), full_page=True)

            with page.expect_download() as info:
                page.click("#download")
            saved = tmp_path / "download.tar"
            info.value.save_as(saved)
            assert info.value.suggested_filename == f"{app_repo.replace('/', '_')}_v1.tar"
            assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(tar).digest()
        finally:
            browser.close()
    assert sorted(os.listdir(shots)) == [
        "1-catalog.png",
        "2-search.png",
        "3-repository.png",
        "4-image.png",
    ]

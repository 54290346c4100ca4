"""`bale serve`: a real registry notifies a real `bale serve` process, which archives.

The registry (distribution 2.8.2) is configured with `notifications.endpoints` pointing at the
service, with the shared secret in its `headers`; images are pushed with skopeo; the archive is
a local directory read back with `bale ls`/the records. Queues: the embedded SQLite file, and a
real redis-server for two replicas.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.bed.cli import run_bale, show
from tests.bed.fixtures_registry import ImageFactory, RegistryFactory
from tests.bed.images import LayerSpec
from tests.bed.redis import RedisServer
from tests.bed.registry import NotifyEndpoint, RegistryServer, free_port
from tests.bed.serve import SECRET, BaleServe

pytestmark = pytest.mark.integration


def notified_registry(make_registry: RegistryFactory, *ports: int) -> RegistryServer:
    """A registry that sends its events to `bale serve` on each of `ports`."""
    endpoints = tuple(
        NotifyEndpoint(
            f"http://127.0.0.1:{port}/events/distribution",
            headers={"Authorization": f"Bearer {SECRET}"},
            name=f"bale-{port}",
        )
        for port in ports
    )
    return make_registry(notify=endpoints)


def notified_serve(
    tmp_path: Path, make_registry: RegistryFactory, *args: str
) -> tuple[RegistryServer, Path, BaleServe]:
    """A registry notifying a `bale serve` (not started yet) that archives into `archive`."""
    port = free_port()
    registry = notified_registry(make_registry, port)
    archive = tmp_path / "archive"
    serve = BaleServe(
        tmp_path / "serve", store=str(archive), allow=[registry.host], port=port, args=args
    )
    return registry, archive, serve


def archived_digest(archive: Path, registry: RegistryServer, repo: str, tag: str) -> str:
    """The digest the archive's record names for `repo:tag` of `registry`."""
    return records(archive)[f"{registry.host.replace(':', '-')}/{repo}/{tag}"]["digest"]


def records(archive: Path) -> dict[str, dict]:
    """Image records in a local archive, by `repo/tag` path under images/."""
    out = {}
    for path in (archive / "images").rglob("*.json"):
        out[str(path.relative_to(archive / "images"))[: -len(".json")]] = json.loads(
            path.read_text()
        )
    return out


def archived_attempts(jobs: list[dict]) -> dict[str, int]:
    """Per job key, how many attempts archived it (wrote the tar and record)."""
    return {j["key"]: sum(a["outcome"] == "archived" for a in j["history"]) for j in jobs}


def test_pushes_with_duplicates_archive_each_image_once(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    # An index's platform manifests are pushed by digest before its tag: they wait 5 s.
    registry, archive, serve = notified_serve(tmp_path, make_registry, "--digest-grace", "5s")
    serve.start()
    try:
        images = [image_factory.image([LayerSpec(4096, seed=900 + n)]) for n in range(4)]
        for image in images:
            image_factory.push(image, "dedup/app:" + image.digest[7:15], registry)
        for image in images[:2]:  # the same pushes again: events for archived digests
            image_factory.push(image, "dedup/app:" + image.digest[7:15], registry)
        # And as generic events, while the first may still be running.
        for image in images:
            status, _ = serve.post(
                "/events/generic", {"image": f"{registry.host}/dedup/app:{image.digest[7:15]}"}
            )
            assert status == 202
        index = image_factory.push(image_factory.index(), "dedup/multi:1", registry)
        serve.wait_idle(7)
        jobs = {j["key"]: j for j in serve.jobs()}
        assert len(jobs) == 7, jobs
        assert all(j["state"] == "done" for j in jobs.values()), jobs
        assert set(archived_attempts(list(jobs.values())).values()) == {0, 1}, jobs
        for image in images:
            key = f"{registry.host}/dedup/app:{image.digest[7:15]}"
            assert archived_attempts([jobs[key]]) == {key: 1}
            assert jobs[key]["events"] >= 2
            assert archived_digest(archive, registry, "dedup/app", image.digest[7:15]) == (
                image.digest
            )
        # The index once, under its tag; its platform manifests' own events found them there.
        assert archived_digest(archive, registry, "dedup/multi", "1") == index.digest
        for child in index.children:
            job = jobs[f"{registry.host}/dedup/multi@{child.digest}"]
            assert job["result"]["status"] == "covered", job
        # Another tag for an archived digest: archived under that tag, no blob fetched again.
        image_factory.push(images[0], "dedup/app:again", registry)
        serve.wait_idle(8)
        again = next(j for j in serve.jobs() if j["key"].endswith(":again"))
        assert again["result"]["status"] == "archived", again
        assert again["result"]["bytes_downloaded"] == 0, again
        assert archived_digest(archive, registry, "dedup/app", "again") == images[0].digest
    finally:
        serve.stop()


def test_refusals_secret_size_shape_and_hosts_not_allowed(tmp_path: Path) -> None:
    """Intake only (`--workers 0`): what is refused is never queued."""
    serve = BaleServe(
        tmp_path / "serve",
        store=str(tmp_path / "archive"),
        allow=["registry.example.com:5000"],
        args=["--workers", "0", "--max-body", "64K"],
    ).start()
    try:
        good = {"image": "registry.example.com:5000/team/app:1"}
        assert serve.post("/events/generic", good, secret=None)[0] == 401
        assert serve.post("/events/generic", good, secret="wrong")[0] == 401
        # Harbor's auth header sends the secret as is.
        status, _ = serve.post("/events/generic", good, secret=None, Authorization=SECRET)
        assert status == 202
        big = json.dumps({"image": "registry.example.com:5000/team/app:1", "pad": "x" * 70_000})
        assert serve.post("/events/generic", big.encode())[0] == 413
        assert serve.post("/events/generic", b"{nope")[0] == 400
        assert serve.post("/events/distribution", {"image": "x"})[0] == 400
        # A host outside the allow-list: refused and logged, by every endpoint.
        status, body = serve.post("/events/generic", {"image": "evil.example.com/team/app:1"})
        assert status == 403 and body["refused"][0]["image"] == "evil.example.com/team/app:1"
        envelope = {
            "events": [
                {
                    "action": "push",
                    "target": {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + "c" * 64,
                        "repository": "team/app",
                        "tag": "2",
                    },
                    "request": {"host": "evil.example.com"},
                }
            ]
        }
        # distribution retries a failed delivery forever and in order: refused with a 200.
        status, body = serve.post("/events/distribution", envelope)
        assert status == 200 and body["queued"] == [] and body["refused"], body
        harbor = {
            "type": "PUSH_ARTIFACT",
            "event_data": {
                "resources": [
                    {
                        "digest": "sha256:" + "c" * 64,
                        "tag": "2",
                        "resource_url": "evil.example.com/team/app:2",
                    }
                ]
            },
        }
        assert serve.post("/events/harbor", harbor)[0] == 403
        # Mixed: the allowed image is queued, the other refused.
        status, body = serve.post(
            "/events/generic",
            {"image": ["registry.example.com:5000/team/app:3", "evil.example.com/x:1"]},
        )
        assert status == 202 and len(body["queued"]) == 1 and len(body["refused"]) == 1
        keys = sorted(j["key"] for j in serve.jobs())
        assert keys == [
            "registry.example.com:5000/team/app:1",
            "registry.example.com:5000/team/app:3",
        ]
        assert (
            "evil.example.com/team/app:1 (registry evil.example.com is not allowed)" in serve.log()
        )
        status, metrics = serve.get("/metrics", raw=True)
        text = metrics.decode()
        assert 'bale_serve_events_refused_total{reason="auth",source="generic"} 2.0' in text
        assert 'bale_serve_events_refused_total{reason="registry",source="generic"} 2.0' in text
        assert 'bale_serve_events_refused_total{reason="registry",source="distribution"} 1.0' in (
            text
        )
        assert 'bale_serve_events_refused_total{reason="size",source="generic"} 1.0' in text
        assert 'bale_serve_queue_jobs{state="pending"} 2.0' in text
        assert serve.get("/healthz", raw=True)[0] == 200
        # Retrying needs the secret too, and only a parked job can be retried.
        job_id = serve.jobs()[0]["id"]
        assert serve.post(f"/api/queue/{job_id}/retry", {}, secret=None)[0] == 401
        assert serve.post(f"/api/queue/{job_id}/retry", {})[0] == 409
        assert serve.post("/api/queue/nope/retry", {})[0] == 404
    finally:
        serve.stop()


def test_failures_are_parked_then_retried_from_the_api(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    registry = make_registry()
    serve = BaleServe(
        tmp_path / "serve",
        store=str(tmp_path / "archive"),
        allow=[registry.host],
        args=[
            "--max-attempts",
            "2",
            "--retry-delay",
            "0.2s",
            "--retries",
            "0",
            "--src-creds",
            "bed-user:sekrit-never-queued",
        ],
    ).start()
    try:
        ref = f"{registry.host}/parked/app:1"
        assert serve.post("/events/generic", {"image": ref})[0] == 202
        serve.wait_for(lambda: serve.counts()["parked"] == 1, what="the job parked")
        (job,) = serve.jobs("parked")
        assert job["attempts"] == 2 and job["error"]
        assert [a["outcome"] for a in job["history"]] == ["failed", "failed"]
        assert "bale_serve_jobs_parked_total 1.0" in serve.get("/metrics", raw=True)[1].decode()
        image_factory.build_and_push("parked/app:1", registry, layers=[LayerSpec(2048, seed=77)])
        status, body = serve.post(f"/api/queue/{job['id']}/retry", {})
        assert status == 202 and body["state"] == "pending"
        serve.wait_idle(1)
        (job,) = serve.jobs()
        assert job["state"] == "done" and job["result"]["status"] == "archived"
        # Jobs hold references: the service's credentials are nowhere in the queue.
        queue_files = [p for p in (tmp_path / "serve").glob("queue.db*") if p.is_file()]
        assert queue_files and not any(b"sekrit" in p.read_bytes() for p in queue_files)
    finally:
        serve.stop()


class _StubRegistry(BaseHTTPRequestHandler):
    """Answers `/v2/`; holds requests for `slow/` images until `release` is set; says any
    other image is unknown, in words that are HTML."""

    release = threading.Event()
    words = "<script>alert(1)</script> not here"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v2":
            self._answer(200, b"{}")
            return
        if "/slow/" in self.path:
            self.release.wait(120)
        errors = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": self.words}]}
        self._answer(404, json.dumps(errors).encode())

    do_HEAD = do_GET

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def stub_registry() -> Iterator[str]:
    _StubRegistry.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubRegistry)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        _StubRegistry.release.set()
        server.shutdown()
        server.server_close()


def test_queue_page_lists_waiting_running_parked_and_guards_like_the_catalog(
    tmp_path: Path,
    make_registry: RegistryFactory,
    image_factory: ImageFactory,
    stub_registry: str,
) -> None:
    registry = make_registry()
    tokens = tmp_path / "tokens"
    tokens.write_text("page-token\n")
    serve = BaleServe(
        tmp_path / "serve",
        store=str(tmp_path / "archive"),
        allow=[registry.host, stub_registry],
        args=[
            *("--max-attempts", "2", "--retry-delay", "0.2s", "--retries", "0"),
            *("--registry-token-file", str(tokens)),
        ],
    )
    serve.start()
    try:
        image_factory.build_and_push("page/done:1", registry, layers=[LayerSpec(1024, seed=81)])
        assert serve.post("/events/generic", {"image": f"{registry.host}/page/done:1"})[0] == 202
        serve.wait_idle(1)
        assert serve.post("/events/generic", {"image": f"{stub_registry}/page/bad:1"})[0] == 202
        serve.wait_for(lambda: serve.counts()["parked"] == 1, what="the job parked")
        # Both workers (the default two) held by the stub, so the next job waits.
        for name in ("slow/a:1", "slow/b:1", "page/next:1"):
            assert serve.post("/events/generic", {"image": f"{stub_registry}/{name}"})[0] == 202
        serve.wait_for(lambda: serve.counts()["running"] == 2, what="two jobs running")
        (parked,) = serve.jobs("parked")
        assert "<script>" in parked["error"]

        # The catalog's rules: without the registry token, no page.
        assert serve.request("GET", "/queue")[0] == 401
        assert serve.get("/api/queue", raw=True, secret=None)[0] == 401  # job errors name images
        status, body = serve.request(
            "GET", "/queue", headers={"Authorization": "Bearer page-token"}
        )
        assert status == 200, body
        page = body.decode()
        counts = dict(re.findall(r'<div id="count-(\w+)"><b>(\d+)</b>', page))
        assert counts == {"pending": "1", "running": "2", "parked": "1", "done": "1"}
        assert '<a href="/queue">queue</a>' in page

        def section(state: str) -> str:
            return page.split(f'<table id="{state}">')[1].split("</table>")[0]

        assert f"{stub_registry}/page/next:1" in section("pending")
        assert f"{stub_registry}/slow/a:1" in section("running")
        assert f"{stub_registry}/slow/b:1" in section("running")
        row = section("parked").split(f'<tr id="job-{parked["id"]}">')[1].split("</tr>")[0]
        assert f"{stub_registry}/page/bad:1" in row
        assert '<td class="num">2</td>' in row  # attempts
        # The error is text on the page, never markup.
        assert "<script>" not in page
        assert html.escape(parked["error"], quote=False) in row
        assert f"{serve.url}/api/queue/{parked['id']}/retry" in row
        assert f"{registry.host}/page/done:1" not in page  # done jobs are counted only
    finally:
        _StubRegistry.release.set()
        serve.stop()


def test_kill_9_with_jobs_queued_and_running_loses_no_accepted_event(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    # One worker, slowed down, so that the kill finds one image running and others waiting;
    # a short lease so that the restarted service takes the running one back soon.
    registry, archive, serve = notified_serve(
        tmp_path, make_registry, "--workers", "1", "--lease", "2s", "--limit-rate", "400K"
    )
    serve.start()
    try:
        images = [image_factory.image([LayerSpec(600_000, seed=300 + n)]) for n in range(4)]
        for image in images:
            image_factory.push(image, f"crash/app:{image.digest[7:15]}", registry)

        def busy() -> bool:
            c = serve.counts()
            return c["running"] >= 1 and c["pending"] >= 1

        serve.wait_for(busy, what="a job running and another waiting")
        running = {j["key"] for j in serve.jobs("running")}
        serve.kill()
        serve.start()
        serve.wait_idle(len(images), timeout=180)
        jobs = serve.jobs()
        assert {j["state"] for j in jobs} == {"done"}, jobs
        lost = [j for j in jobs if any(a["outcome"] == "lost" for a in j["history"])]
        assert {j["key"] for j in lost} == running
        for image in images:
            assert archived_digest(archive, registry, "crash/app", image.digest[7:15]) == (
                image.digest
            )
        # The archive the killed worker left half done is whole now: bale verify reads it back.
        verify = run_bale("verify", str(archive))
        assert verify.returncode == 0, show(verify)
    finally:
        serve.stop()


def test_two_replicas_on_redis_share_the_work_without_overlap(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    ports = (free_port(), free_port())
    # Both replicas get every event (two endpoints): duplicates across replicas too.
    registry = notified_registry(make_registry, *ports)
    archive = tmp_path / "archive"
    replicas = [
        BaleServe(
            tmp_path / f"serve-{n}",
            store=str(archive),
            allow=[registry.host],
            port=port,
            queue=redis.url,
            args=["--workers", "1", "--limit-rate", "600K"],
        ).start()
        for n, port in enumerate(ports)
    ]
    try:
        images = [image_factory.image([LayerSpec(500_000, seed=500 + n)]) for n in range(6)]
        for image in images:
            image_factory.push(image, f"replicas/app:{image.digest[7:15]}", registry)
        replicas[0].wait_idle(len(images), timeout=180)
        jobs = replicas[1].jobs()
        assert len(jobs) == len(images) and {j["state"] for j in jobs} == {"done"}, jobs
        assert set(archived_attempts(jobs).values()) == {1}, jobs
        workers = {a["worker"].rsplit(":", 1)[0] for j in jobs for a in j["history"]}
        assert len(workers) == 2, jobs  # both replicas archived
        for job in jobs:
            spans = sorted((a["started"], a["finished"]) for a in job["history"])
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert end is not None and end <= start, job
        assert len(records(archive)) == len(images)
        # Redis away: not ready, and an event is refused with 503 (its sender retries).
        redis.stop()
        assert replicas[0].get("/readyz", raw=True)[0] == 503
        event = {"image": f"{registry.host}/replicas/app:later"}
        assert replicas[0].post("/events/generic", event)[0] == 503
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()


def test_reconcile_queues_what_the_archive_lacks(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    """No notifications at all: `bale reconcile` once, then `serve --reconcile` on its own.
    The registry wants a password, which only the spec holds: the jobs carry none, the
    workers take it from the spec the service was given."""
    registry = make_registry("htpasswd")
    for n in range(2):
        image_factory.build_and_push(
            f"sweep/app:{n}", registry, layers=[LayerSpec(2048, seed=700 + n)]
        )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"{registry.host}:\n  tls-verify: false\n"
        f"  credentials:\n    username: {registry.username}\n    password: {registry.password}\n"
        "  images:\n    sweep/app: []\n"
    )
    archive = tmp_path / "archive"
    queue = tmp_path / "queue.db"
    once = run_bale("reconcile", str(spec), "--to", str(archive), "--queue", str(queue))
    assert once.returncode == 0, show(once)
    assert "2 listed, 0 archived, 2 queued" in once.stdout
    assert registry.password is not None
    files = [p for p in tmp_path.glob("queue.db*") if p.is_file()]
    assert files and not any(registry.password.encode() in p.read_bytes() for p in files)
    serve = BaleServe(
        tmp_path / "serve",
        store=str(archive),
        allow=[registry.host],
        queue=str(queue),
        args=["--spec", str(spec)],
    ).start()
    try:
        serve.wait_idle(2)
        assert len(records(archive)) == 2
        serve.stop()
        again = run_bale("reconcile", str(spec), "--to", str(archive), "--queue", str(queue))
        assert "2 listed, 2 archived, 0 queued" in again.stdout, show(again)
        image_factory.build_and_push("sweep/app:2", registry, layers=[LayerSpec(2048, seed=702)])
        serve.args = ["--spec", str(spec), "--reconcile", "1h"]
        serve.start()
        serve.wait_idle(3)
        assert len(records(archive)) == 3
    finally:
        serve.stop()


@pytest.mark.slow
def test_100_pushes_of_20_images_archive_each_once(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    registry, archive, serve = notified_serve(tmp_path, make_registry, "--workers", "4")
    serve.start()
    try:
        images = [image_factory.image([LayerSpec(8192, seed=1000 + n)]) for n in range(20)]
        for _round in range(5):
            for image in images:
                image_factory.push(image, f"many/app:{image.digest[7:15]}", registry)
        serve.wait_idle(20, timeout=300)
        jobs = serve.jobs()
        assert len(jobs) == 20 and {j["state"] for j in jobs} == {"done"}
        assert set(archived_attempts(jobs).values()) == {1}, jobs
        assert sum(j["events"] for j in jobs) >= 100
        assert len(records(archive)) == 20
    finally:
        serve.stop()


def test_sigterm_puts_the_running_job_back_without_using_an_attempt(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    registry = make_registry()
    image = image_factory.build_and_push(
        "term/app:1", registry, layers=[LayerSpec(800_000, seed=41)]
    )
    archive = tmp_path / "archive"
    serve = BaleServe(
        tmp_path / "serve",
        store=str(archive),
        allow=[registry.host],
        args=["--workers", "1", "--limit-rate", "200K"],
    ).start()
    try:
        assert serve.post("/events/generic", {"image": f"{registry.host}/term/app:1"})[0] == 202
        serve.wait_for(lambda: serve.counts()["running"] == 1, what="the job running")
        assert serve.proc is not None
        proc = serve.proc
        serve.stop()
        # uvicorn shuts down, then ends with the signal it caught (143 to a shell).
        assert proc.returncode == -15 and "Traceback" not in serve.log(), serve.log()
        serve.args = ["--workers", "1"]
        serve.start()
        (job,) = serve.jobs()
        assert job["history"][0]["outcome"] == "interrupted"
        serve.wait_idle(1)
        (job,) = serve.jobs()
        assert job["state"] == "done" and job["attempts"] == 1
        assert archived_digest(archive, registry, "term/app", "1") == image.digest
        assert not list(archive.rglob(".bale-tmp/*"))
    finally:
        serve.stop()


def test_harbor_webhooks_default_and_cloudevents_archive(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    """The bed registry stands in for Harbor's: the payloads are Harbor's, the host is ours."""
    registry = make_registry()
    pushed = [
        image_factory.build_and_push(f"proj/app:{n}", registry, layers=[LayerSpec(2048, seed=n)])
        for n in (61, 62)
    ]
    archive = tmp_path / "archive"
    serve = BaleServe(tmp_path / "serve", store=str(archive), allow=[registry.host]).start()
    try:

        def data(image, tag: str) -> dict:
            return {
                "resources": [
                    {
                        "digest": image.digest,
                        "tag": tag,
                        "resource_url": f"{registry.host}/proj/app:{tag}",
                    }
                ],
                "repository": {"name": "app", "namespace": "proj", "repo_full_name": "proj/app"},
            }

        default = {"type": "PUSH_ARTIFACT", "occur_at": 1, "event_data": data(pushed[0], "61")}
        assert serve.post("/events/harbor", default, secret=None, Authorization=SECRET)[0] == 202
        cloud = {
            "specversion": "1.0",
            "id": "1",
            "source": "/projects/1/webhook/policies/1",
            "type": "harbor.artifact.pushed",
            "datacontenttype": "application/json",
            "data": data(pushed[1], "62"),
        }
        assert serve.post("/events/harbor", cloud, secret=None, Authorization=SECRET)[0] == 202
        serve.wait_idle(2)
        for image, tag in zip(pushed, ("61", "62"), strict=True):
            assert archived_digest(archive, registry, "proj/app", tag) == image.digest
    finally:
        serve.stop()

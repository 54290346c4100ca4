"""The job ledger's rules (collapse, lease, backoff, parking, retry) on both backends, a real
SQLite file and a real redis-server, with a clock the test moves; and event parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.serve import intake
from pipeline.serve.queue import JobQueue, Policy, RedisBackend, SqliteBackend, Target
from tests.bed.redis import RedisServer

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    made = []

    def make(policy: Policy, clock: Clock) -> JobQueue:
        if request.param == "sqlite":
            backend: SqliteBackend | RedisBackend = SqliteBackend(tmp_path / "q.db")
        else:
            server = request.getfixturevalue("redis_server")
            backend = RedisBackend(server.url, prefix=f"t{tmp_path.name}")
        made.append(backend)
        return JobQueue(backend, policy, clock)

    yield make
    for backend in made:
        backend.close()


POLICY = Policy(max_attempts=3, retry_delay=10, retry_max=100, lease=30, digest_grace=5)


def test_duplicates_collapse_and_a_new_digest_runs_again(make_queue) -> None:
    clock = Clock()
    q = make_queue(POLICY, clock)
    first = q.submit(Target("r.example/app:1", DIGEST_A, "distribution"))
    assert first.how == "new"
    assert q.submit(Target("r.example/app:1", DIGEST_A, "harbor")).how == "collapsed"
    job = q.claim("w1")
    assert job is not None and job.attempts == 1 and q.claim("w2") is None
    # The same digest while it runs: nothing more; another digest: once more after.
    assert q.submit(Target("r.example/app:1", DIGEST_A, "generic")).how == "collapsed"
    assert q.submit(Target("r.example/app:1", DIGEST_B, "generic")).how == "collapsed"
    after = q.finish(job, "w1", "archived", {"digest": DIGEST_A})
    assert after is not None and after.state == "pending" and after.digest == DIGEST_B
    job = q.claim("w1")
    assert job is not None
    done = q.finish(job, "w1", "archived", {"digest": DIGEST_B})
    assert done is not None and done.state == "done" and done.events == 4
    # Done with that digest: a repeat stays done; a push of another digest wakes it.
    assert q.submit(Target("r.example/app:1", DIGEST_B, "distribution")).how == "collapsed"
    assert q.claim("w1") is None
    assert q.submit(Target("r.example/app:1", DIGEST_A, "distribution")).how == "woken"


def test_an_expired_lease_is_claimed_again_and_counted(make_queue) -> None:
    clock = Clock()
    q = make_queue(POLICY, clock)
    q.submit(Target("r.example/app:1", DIGEST_A, "generic"))
    job = q.claim("dead-worker")
    assert job is not None
    clock.now += 29
    assert q.claim("w2") is None  # lease still running
    assert q.renew(job, "dead-worker")
    clock.now += 20
    assert q.claim("w2") is None  # renewed: its lease ends 30 s after the renewal
    clock.now += 31
    again = q.claim("w2")
    assert again is not None and again.owner == "w2" and again.attempts == 2
    assert [a.outcome for a in again.history] == ["lost", "running"]
    # The first worker comes back: it no longer owns the job; its finish changes nothing.
    assert not q.renew(job, "dead-worker")
    stale = q.finish(job, "dead-worker", "archived", {})
    assert stale is not None and stale.state == "running" and stale.owner == "w2"


def test_failures_back_off_then_park_and_retry_brings_it_back(make_queue) -> None:
    clock = Clock()
    q = make_queue(POLICY, clock)
    q.submit(Target("r.example/app:1", None, "generic"))
    for attempt, wait in ((1, 10), (2, 20)):
        job = q.claim("w")
        assert job is not None and job.attempts == attempt
        after = q.fail(job, "w", "boom")
        assert after is not None and after.state == "pending"
        assert after.not_before == clock.now + wait
        assert q.claim("w") is None
        clock.now += wait
    job = q.claim("w")
    assert job is not None
    parked = q.fail(job, "w", "still boom")
    assert parked is not None and parked.state == "parked" and parked.error == "still boom"
    assert q.counts()["parked"] == 1
    assert [j.id for j in q.jobs("parked")] == [parked.id]
    back = q.retry(parked.id)
    assert back is not None and back.state == "pending" and back.attempts == 0
    assert q.retry(parked.id) is None  # not parked any more
    job = q.claim("w")
    assert job is not None
    # A stop (SIGTERM) returns the job without using an attempt.
    returned = q.fail(job, "w", "interrupted", count=False)
    assert returned is not None and returned.state == "pending" and returned.attempts == 0


def test_an_untagged_push_waits_and_a_tag_event_covers_it(make_queue) -> None:
    clock = Clock()
    q = make_queue(POLICY, clock)
    q.submit(Target(f"r.example/app@{DIGEST_A}", DIGEST_A, "distribution"))
    assert q.claim("w") is None  # the grace period
    q.covered_by_tag("r.example/app", DIGEST_A)
    assert q.counts()["done"] == 1
    clock.now += 10
    assert q.claim("w") is None


def test_an_untagged_push_defers_while_a_tag_job_of_its_repository_is_busy(make_queue) -> None:
    clock = Clock()
    q = make_queue(POLICY, clock)
    q.submit(Target(f"r.example/app@{DIGEST_B}", DIGEST_B, "distribution"))
    q.submit(Target("r.example/other:1", DIGEST_A, "distribution"))
    assert not q.tag_jobs_busy("r.example/app")
    q.submit(Target("r.example/app:1", DIGEST_A, "distribution"))
    assert q.tag_jobs_busy("r.example/app")
    clock.now += 5
    claimed = [q.claim(f"w{n}") for n in range(3)]
    assert q.tag_jobs_busy("r.example/app")  # running counts too
    (digest_job,) = [j for j in claimed if j is not None and "@" in j.key]
    deferred = q.defer(digest_job, digest_job.owner, "waiting")
    assert deferred is not None and deferred.state == "pending" and deferred.attempts == 0
    assert deferred.not_before == clock.now + POLICY.digest_grace
    assert deferred.history[-1].outcome == "deferred"


def test_a_job_lost_too_often_is_parked(make_queue) -> None:
    clock = Clock()
    q = make_queue(Policy(max_attempts=2, lease=5), clock)
    q.submit(Target("r.example/app:1", None, "generic"))
    for _ in range(2):
        assert q.claim("w") is not None
        clock.now += 6
    assert q.claim("w") is None
    (parked,) = q.jobs("parked")
    assert "lease expired" in (parked.error or "")


# ---- parsing --------------------------------------------------------------------------------


def distribution(*events: dict) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def push_event(repo: str, tag: str | None, digest: str, media_type: str, host: str) -> dict:
    target = {"mediaType": media_type, "digest": digest, "repository": repo, "size": 1}
    if tag:
        target["tag"] = tag
    return {"action": "push", "target": target, "request": {"host": host, "method": "PUT"}}


def test_distribution_envelope_keeps_manifest_pushes_only() -> None:
    body = distribution(
        push_event(
            "team/app",
            "1.0",
            DIGEST_A,
            "application/vnd.oci.image.manifest.v1+json",
            "reg.example:5000",
        ),
        push_event("team/app", None, DIGEST_B, "application/octet-stream", "reg.example:5000"),
        {"action": "pull", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json"}},
    )
    pushes, ignored = intake.parse("distribution", body, {})
    assert ignored == 2
    assert [(p.key, p.digest) for p in pushes] == [("reg.example:5000/team/app:1.0", DIGEST_A)]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"events": "x"}',
        distribution(
            push_event(
                "Bad/Repo", "1", DIGEST_A, "application/vnd.oci.image.manifest.v1+json", "r.example"
            )
        ),
        distribution(
            push_event(
                "app",
                "1",
                "sha256:short",
                "application/vnd.oci.image.manifest.v1+json",
                "r.example",
            )
        ),
        distribution(
            push_event("app", "1", DIGEST_A, "application/vnd.oci.image.manifest.v1+json", "")
        ),
    ],
)
def test_bad_distribution_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(intake.BadEvent):
        intake.parse("distribution", body, {})


HARBOR_DATA = {
    "resources": [
        {
            "digest": DIGEST_A,
            "tag": "v2",
            "resource_url": "harbor.example.com/library/nginx:v2",
        }
    ],
    "repository": {"name": "nginx", "namespace": "library", "repo_full_name": "library/nginx"},
}


def test_harbor_default_json_and_cloudevents() -> None:
    default = json.dumps({"type": "PUSH_ARTIFACT", "event_data": HARBOR_DATA}).encode()
    structured = json.dumps(
        {"specversion": "1.0", "type": "harbor.artifact.pushed", "data": HARBOR_DATA}
    ).encode()
    binary = json.dumps(HARBOR_DATA).encode()
    for body, headers in (
        (default, {}),
        (structured, {}),
        (binary, {"ce-type": "harbor.artifact.pushed"}),
    ):
        pushes, ignored = intake.parse("harbor", body, headers)
        assert ignored == 0
        assert [(p.key, p.digest) for p in pushes] == [
            ("harbor.example.com/library/nginx:v2", DIGEST_A)
        ]
    scan = json.dumps({"type": "SCANNING_COMPLETED", "event_data": {}}).encode()
    assert intake.parse("harbor", scan, {}) == ([], 1)


def test_generic_forms_and_the_allow_list() -> None:
    for body in (
        {"image": "r.example/app:1"},
        {"image": ["r.example/app:1", "evil.example/app:1"]},
        ["r.example/app:1", {"image": "evil.example/app:1"}],
    ):
        pushes, _ = intake.parse("generic", json.dumps(body).encode(), {})
        screened = intake.screen(pushes, frozenset({"r.example"}))
        assert [p.key for p in screened.pushes] == ["r.example/app:1"]
        assert [r.what for r in screened.refused] == (
            ["evil.example/app:1"] if len(pushes) == 2 else []
        )
    with pytest.raises(intake.BadEvent):
        intake.parse("generic", b'{"images": 3}', {})

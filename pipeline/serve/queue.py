"""The job ledger of `bale serve`: one row per image to archive, in SQLite or Redis.

Why not a queue library as it is: huey (SQLite and Redis storage), like rq's and most Redis
queues' list pops, removes a task from its storage when a consumer dequeues it (SQLite: a
DELETE in the dequeue transaction; Redis: BRPOP); a consumer killed with SIGKILL while it runs
the task loses it, and its retries are re-enqueued by that same consumer. Measured with huey
3.5.4 on both storages: a task started, the consumer killed -9, the task gone from the queue
(pending 1 of 2, nothing scheduled). An archive takes minutes and replicas are restarted, so
the ledger keeps each job until its record is written, with a lease: a worker claims a job for
`lease` seconds and renews it while it works; a job whose lease ran out is claimed again by
any worker (another replica, or the same service after a restart).

The ledger is the queue: every change of a job is one `update(id, change)`, run atomically
by the backend (SQLite: one `BEGIN IMMEDIATE` transaction; Redis: WATCH/MULTI on the job's key,
retried on conflict), so the rules below live once, above both backends:

- `submit`: a job per image key (`registry/repository:tag`, or `@digest` for an untagged
  push); an event for a job already waiting or running with that digest collapses into it, a
  new digest while it runs makes it run again after, a done job with that digest stays done.
- `claim`: pending and due, or running with its lease expired (its worker died).
- `finish`: done; `fail`: back to pending after a backoff, parked after `max_attempts`.
- `retry`: a parked job back to pending.

Jobs hold references only (image, digest, tag), never credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, cast

State = Literal["pending", "running", "done", "parked"]
STATES: tuple[State, ...] = ("pending", "running", "done", "parked")
HISTORY_KEPT = 20


@dataclass(frozen=True)
class Attempt:
    worker: str
    started: float
    finished: float | None = None
    outcome: str = "running"
    """`archived`, `skipped`, `covered`, `failed`, `lost` (lease expired), `interrupted`."""
    error: str | None = None


@dataclass(frozen=True)
class Job:
    id: str
    key: str
    """`registry/repository:tag` or `registry/repository@digest`: what is archived."""
    image: str
    """The reference the worker archives (the key; a digest job names its digest)."""
    digest: str | None = None
    """The digest the last event named (None: not said, e.g. a generic event by tag)."""
    state: State = "pending"
    attempts: int = 0
    not_before: float = 0.0
    lease_until: float = 0.0
    owner: str | None = None
    error: str | None = None
    again: bool = False
    """A new digest came while it ran: run once more after."""
    events: int = 1
    """Events collapsed into this job."""
    source: str = ""
    """Where the job came from: `distribution`, `harbor`, `generic`, `reconcile`."""
    created: float = 0.0
    updated: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    history: tuple[Attempt, ...] = ()

    @property
    def tagged(self) -> bool:
        return "@" not in self.key

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        data = json.loads(text)
        data["history"] = tuple(Attempt(**a) for a in data.get("history", ()))
        return cls(**data)

    def score(self) -> float:
        """The order inside its state: due time, lease end, or last change."""
        if self.state == "pending":
            return self.not_before
        if self.state == "running":
            return self.lease_until
        return self.updated

    def public(self) -> dict[str, Any]:
        """What `/api/queue` shows."""
        return asdict(self)


def job_id(key: str) -> str:
    """Stable per image key: the same push seen twice (or by two replicas) is one row."""
    return hashlib.sha256(key.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Target:
    """One image an event (or a reconciliation) asks to archive."""

    key: str
    digest: str | None
    source: str

    @property
    def tagged(self) -> bool:
        return "@" not in self.key


Change = Callable[["Job | None"], "Job | None"]
"""Gets the job as stored (None: no such job), returns the new one (None: leave as is)."""


class Backend(Protocol):
    def update(self, job_id: str, change: Change) -> Job | None:
        """Apply `change` atomically; return the job as it is after."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def due(self, now: float, limit: int) -> list[str]:
        """Ids of pending jobs due by `now` and running jobs whose lease ended before it."""
        ...

    def jobs(self, state: State | None, offset: int, limit: int) -> list[Job]: ...

    def counts(self) -> dict[str, int]: ...

    def ping(self) -> None:
        """Raise if the backend cannot be reached (for `/readyz`)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 5
    retry_delay: float = 10.0
    """First backoff; doubles per failed attempt, up to `retry_max`."""
    retry_max: float = 600.0
    lease: float = 60.0
    digest_grace: float = 10.0
    """An untagged (digest) push waits this long: an index's children are pushed by digest
    just before the index is tagged, and the tag's archive covers them."""

    def backoff(self, attempts: int) -> float:
        return float(min(self.retry_max, self.retry_delay * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Submitted:
    job: Job
    how: Literal["new", "woken", "collapsed"]
    """A new job, a done or parked one pending again, or collapsed into one waiting/running."""

    @property
    def queued(self) -> bool:
        return self.how != "collapsed"


class JobQueue:
    """The rules over one backend; every method is safe from many threads and replicas."""

    def __init__(
        self, backend: Backend, policy: Policy | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.backend = backend
        self.policy = policy or Policy()
        self.clock = clock

    # -- intake ------------------------------------------------------------------------------
    def submit(self, target: Target) -> Submitted:
        now = self.clock()
        what: list[Literal["new", "woken", "collapsed"]] = []

        def change(job: Job | None) -> Job | None:
            what[:] = ["collapsed"]
            if job is None:
                what[:] = ["new"]
                grace = 0.0 if target.tagged else self.policy.digest_grace
                return Job(
                    id=job_id(target.key),
                    key=target.key,
                    image=target.key,
                    digest=target.digest,
                    not_before=now + grace,
                    source=target.source,
                    created=now,
                    updated=now,
                )
            same = target.digest is not None and target.digest == job.digest
            if job.state == "pending" or (job.state == "running" and same):
                return replace(
                    job, events=job.events + 1, digest=target.digest or job.digest, updated=now
                )
            if job.state == "running":
                return replace(
                    job, events=job.events + 1, digest=target.digest, again=True, updated=now
                )
            if job.state == "done" and same:
                return replace(job, events=job.events + 1, updated=now)
            # done with another (or an unknown) digest, or parked: archive (again); a
            # current image is skipped by the archive itself.
            what[:] = ["woken"]
            return replace(
                job,
                state="pending",
                digest=target.digest,
                attempts=0,
                not_before=now,
                error=None,
                events=job.events + 1,
                source=target.source,
                updated=now,
            )

        job = self.backend.update(job_id(target.key), change)
        assert job is not None
        return Submitted(job, what[0])

    def covered_by_tag(self, repository_key: str, digest: str) -> None:
        """A tag event for `digest`: a waiting untagged job for the same digest is its duplicate."""
        now = self.clock()

        def change(job: Job | None) -> Job | None:
            if job is None or job.state != "pending":
                return None
            return replace(
                job,
                state="done",
                result={"status": "covered", "by": "tag event"},
                updated=now,
            )

        self.backend.update(job_id(f"{repository_key}@{digest}"), change)

    # -- workers -----------------------------------------------------------------------------
    def claim(self, worker: str) -> Job | None:
        """The next due job, leased to `worker` (None: nothing due)."""
        now = self.clock()
        claimed: list[bool] = []

        def change(job: Job | None) -> Job | None:
            claimed.clear()
            if job is None:
                return None
            history = job.history
            if job.state == "running" and job.lease_until < now:
                lost = history[-1] if history else Attempt(job.owner or "?", now)
                history = (
                    *history[:-1],
                    replace(lost, finished=now, outcome="lost", error="lease expired"),
                )
                if job.attempts >= self.policy.max_attempts:
                    return replace(
                        job,
                        state="parked",
                        owner=None,
                        error=f"worker lost {job.attempts} times (lease expired)",
                        history=history,
                        updated=now,
                    )
            elif not (job.state == "pending" and job.not_before <= now):
                return None
            claimed.append(True)
            return replace(
                job,
                state="running",
                owner=worker,
                lease_until=now + self.policy.lease,
                attempts=job.attempts + 1,
                again=False,
                history=(*history, Attempt(worker, now))[-HISTORY_KEPT:],
                updated=now,
            )

        for candidate in self.backend.due(now, 8):
            job = self.backend.update(candidate, change)
            if claimed and job is not None:
                return job
        return None

    def renew(self, job: Job, worker: str) -> bool:
        """Extend the lease; False when the job is no longer this worker's."""
        now = self.clock()
        kept: list[bool] = []

        def change(current: Job | None) -> Job | None:
            kept.clear()
            if current is None or current.state != "running" or current.owner != worker:
                return None
            kept.append(True)
            return replace(current, lease_until=now + self.policy.lease)

        self.backend.update(job.id, change)
        return bool(kept)

    def finish(self, job: Job, worker: str, outcome: str, result: dict[str, Any]) -> Job | None:
        """The image's record is written (or it was current): the job is done, unless a newer
        digest came while it ran."""
        return self._end(job, worker, outcome, None, result)

    def fail(self, job: Job, worker: str, error: str, *, count: bool = True) -> Job | None:
        """Back to pending after a backoff, or parked after `max_attempts`; `count=False` (the
        service stopping) returns it at once without using up an attempt."""
        return self._end(job, worker, "failed" if count else "interrupted", error, {}, count)

    def defer(self, job: Job, worker: str, reason: str) -> Job | None:
        """Back to pending for another `digest_grace`, without using an attempt."""
        return self._end(job, worker, "deferred", reason, {}, False, self.policy.digest_grace)

    def tag_jobs_busy(self, repository: str) -> bool:
        """A tagged job of `repository` (`registry/path`) is waiting or running: an untagged
        push of the same repository may be one of its manifests."""
        for state in ("running", "pending"):
            for job in self.backend.jobs(state, 0, 1000):
                if job.tagged and job.key.rpartition(":")[0] == repository:
                    return True
        return False

    def _end(
        self,
        job: Job,
        worker: str,
        outcome: str,
        error: str | None,
        result: dict[str, Any],
        count: bool = True,
        delay: float = 0.0,
    ) -> Job | None:
        now = self.clock()

        def change(current: Job | None) -> Job | None:
            if current is None:
                return None
            history = current.history
            if history and history[-1].worker == worker and history[-1].finished is None:
                history = (
                    *history[:-1],
                    replace(history[-1], finished=now, outcome=outcome, error=error),
                )
            if current.state != "running" or current.owner != worker:
                # Another worker took it over (this one's lease ran out): it decides.
                return replace(current, history=history)
            base = replace(current, owner=None, lease_until=0.0, history=history, updated=now)
            if error is None:
                if current.again:
                    return replace(base, state="pending", not_before=now, result=result)
                return replace(base, state="done", error=None, result=result)
            if not count:
                return replace(
                    base,
                    state="pending",
                    attempts=current.attempts - 1,
                    not_before=now + delay,
                    error=error,
                )
            if current.attempts >= self.policy.max_attempts:
                return replace(base, state="parked", error=error)
            return replace(
                base,
                state="pending",
                not_before=now + self.policy.backoff(current.attempts),
                error=error,
            )

        return self.backend.update(job.id, change)

    # -- operators ---------------------------------------------------------------------------
    def retry(self, job_id_: str) -> Job | None:
        """A parked job back to pending with fresh attempts; None if there is no parked job."""
        now = self.clock()
        moved: list[bool] = []

        def change(job: Job | None) -> Job | None:
            moved.clear()
            if job is None or job.state != "parked":
                return None
            moved.append(True)
            return replace(job, state="pending", attempts=0, not_before=now, updated=now)

        job = self.backend.update(job_id_, change)
        return job if moved else None

    def get(self, job_id_: str) -> Job | None:
        return self.backend.get(job_id_)

    def jobs(self, state: State | None = None, offset: int = 0, limit: int = 100) -> list[Job]:
        return self.backend.jobs(state, offset, limit)

    def counts(self) -> dict[str, int]:
        return self.backend.counts()


# ---- SQLite --------------------------------------------------------------------------------


class SqliteBackend:
    """One file; WAL and `synchronous=FULL`, so a committed submit survives a power cut.
    Several processes may share the file (each change is a `BEGIN IMMEDIATE` transaction)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                "score REAL NOT NULL, data TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, score)")

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def update(self, job_id: str, change: Change) -> Job | None:
        with self._tx() as db:
            row = db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
            job = Job.from_json(row[0]) if row else None
            new = change(job)
            if new is None:
                return job
            db.execute(
                "INSERT OR REPLACE INTO jobs (id, state, score, data) VALUES (?, ?, ?, ?)",
                (new.id, new.state, new.score(), new.to_json()),
            )
            return new

    def get(self, job_id: str) -> Job | None:
        row = self._db().execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_json(row[0]) if row else None

    def due(self, now: float, limit: int) -> list[str]:
        rows = self._db().execute(
            "SELECT id FROM jobs WHERE state IN ('pending', 'running') AND score <= ? "
            "ORDER BY score LIMIT ?",
            (now, limit),
        )
        return [r[0] for r in rows]

    def jobs(self, state: State | None, offset: int, limit: int) -> list[Job]:
        if state is None:
            rows = self._db().execute(
                "SELECT data FROM jobs ORDER BY score DESC LIMIT ? OFFSET ?", (limit, offset)
            )
        else:
            rows = self._db().execute(
                "SELECT data FROM jobs WHERE state = ? ORDER BY score LIMIT ? OFFSET ?",
                (state, limit, offset),
            )
        return [Job.from_json(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(STATES, 0)
        for state, n in self._db().execute("SELECT state, count(*) FROM jobs GROUP BY state"):
            out[state] = n
        return out

    def ping(self) -> None:
        self._db().execute("SELECT 1").fetchone()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


# ---- Redis ---------------------------------------------------------------------------------


class RedisBackend:
    """Jobs as JSON strings (`<prefix>:job:<id>`) and one sorted set per state (scored as
    `Job.score`). Durability is Redis's own: run it with `appendonly yes` (and
    `appendfsync always` if an acknowledged event must survive a power cut of the Redis host)."""

    def __init__(self, url: str, prefix: str = "bale:serve") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.redis = redis.Redis.from_url(url)

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _index(self, state: str) -> str:
        return f"{self.prefix}:{state}"

    def update(self, job_id: str, change: Change) -> Job | None:
        from redis.exceptions import WatchError

        key = self._key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    job = Job.from_json(raw) if raw else None
                    new = change(job)
                    if new is None:
                        pipe.unwatch()
                        return job
                    pipe.multi()
                    pipe.set(key, new.to_json())
                    for state in STATES:
                        if state != new.state:
                            pipe.zrem(self._index(state), job_id)
                    pipe.zadd(self._index(new.state), {job_id: new.score()})
                    pipe.execute()
                    return new
                except WatchError:
                    continue

    def get(self, job_id: str) -> Job | None:
        raw = self.redis.get(self._key(job_id))
        return Job.from_json(raw) if raw else None

    def due(self, now: float, limit: int) -> list[str]:
        ids: list[str] = []
        for state in ("running", "pending"):
            found = self.redis.zrangebyscore(self._index(state), "-inf", now, start=0, num=limit)
            ids += [i.decode() for i in cast(list[bytes], found)]
        return ids[:limit]

    def jobs(self, state: State | None, offset: int, limit: int) -> list[Job]:
        if state is None:
            ids: list[bytes] = []
            for s in STATES:
                ids += cast(list[bytes], self.redis.zrange(self._index(s), 0, -1))
            ids = ids[offset : offset + limit]
        else:
            ids = cast(
                list[bytes], self.redis.zrange(self._index(state), offset, offset + limit - 1)
            )
        if not ids:
            return []
        raws = self.redis.mget([self._key(i.decode()) for i in ids])
        return [Job.from_json(r) for r in raws if r]

    def counts(self) -> dict[str, int]:
        return {s: int(self.redis.zcard(self._index(s))) for s in STATES}

    def ping(self) -> None:
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()


def open_queue(url: str, policy: Policy | None = None) -> JobQueue:
    """`redis://…` / `rediss://…` for several replicas, else a SQLite file (`sqlite:///path`
    or a plain path)."""
    from pipeline.errors import UsageError

    if url.startswith(("redis://", "rediss://", "unix://")):
        return JobQueue(RedisBackend(url), policy)
    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    if not path:
        raise UsageError(f"queue {url!r}: no file named")
    parent = Path(path).expanduser().parent
    if not parent.is_dir():
        raise UsageError(f"queue {url!r}: directory {str(parent)!r} does not exist")
    return JobQueue(SqliteBackend(Path(path).expanduser()), policy)

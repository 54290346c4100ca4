"""Worker threads of `bale serve`: claim a job, archive its image, then mark it done.

An image is archived by `Archiver.archive`, the function `bale archive` runs for each image:
its order of writes (blobs, links, tags, tar, record last) is what makes a retry after a crash
clean, and it skips an image whose record already names the digest. The job is marked done
only after that returns `archived` or `skipped`, i.e. after the record is written; a worker
killed before that leaves the job `running` with a lease that runs out, and any worker then
claims it again (at-least-once).

While it works, a worker renews its lease every third of the lease time, so a long image is
not taken over by another replica while its first worker is alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.copy.result import ImageResult
from pipeline.copy.session import Session
from pipeline.errors import BaleError
from pipeline.ops.archive import ArchiveOptions, Archiver
from pipeline.refs import Reference
from pipeline.serve.config import ServeConfig
from pipeline.serve.metrics import Metrics
from pipeline.serve.queue import Job, JobQueue
from pipeline.transfer import cancel

log = logging.getLogger("bale.serve")
IDLE_POLL = 1.0
"""Seconds between looks at the queue when idle (a local submit wakes the workers at once)."""


def worker_prefix() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Workers:
    """`config.workers` threads sharing one session and one `Archiver`, as `bale run` does."""

    def __init__(
        self,
        config: ServeConfig,
        queue: JobQueue,
        bucket: ArchiveBucket,
        session: Session,
        metrics: Metrics,
        options: ArchiveOptions | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.bucket = bucket
        self.session = session
        self.metrics = metrics
        self.options = options or ArchiveOptions()
        self.archiver = Archiver(bucket, session)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.prefix = config.worker_name or worker_prefix()
        self.running: dict[str, str] = {}
        """Worker name → image, for `/api/queue`."""

    def start(self) -> None:
        for n in range(self.config.workers):
            name = f"{self.prefix}:{n}"
            thread = threading.Thread(target=self._loop, args=(name,), name=f"bale-serve-{n}")
            thread.daemon = True
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop claiming; cut the archives still running (their jobs go back to pending
        without using an attempt) and wait for the threads."""
        self.stopping.set()
        self.wake.set()
        if self.running:
            cancel.RUN.cancel()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self, name: str) -> None:
        while not self.stopping.is_set():
            try:
                job = self.queue.claim(name)
            except Exception as exc:  # the broker away: wait, then look again
                log.warning("queue: %s", exc)
                job = None
            if job is None:
                self.wake.wait(IDLE_POLL)
                self.wake.clear()
                continue
            try:
                self.run(job, name)
            except Exception as exc:
                # The queue was away when the job ended: its lease runs out and it runs again
                # (the archive then finds the image current and skips it).
                log.error("%s: outcome not recorded in the queue: %s", job.image, exc)

    def run(self, job: Job, name: str) -> None:
        self.running[name] = job.image
        done = threading.Event()
        heartbeat = threading.Thread(target=self._renew, args=(job, name, done), daemon=True)
        heartbeat.start()
        started = time.monotonic()
        try:
            outcome, result, error = self._archive(job)
        finally:
            done.set()
            self.running.pop(name, None)
        seconds = time.monotonic() - started
        self.metrics.job_seconds.observe(seconds)
        result["seconds"] = round(seconds, 3)
        if error is None:
            self.queue.finish(job, name, outcome, result)
            self.metrics.jobs_done.labels(outcome).inc()
            self.metrics.bytes_archived.inc(int(result.get("bytes_uploaded", 0)))
            log.info("%s: %s (%s)", job.image, outcome, result.get("digest"))
            return
        if outcome == "deferred":
            self.queue.defer(job, name, error)
            return
        after = self.queue.fail(job, name, error, count=outcome != "interrupted")
        if outcome == "interrupted":
            return
        self.metrics.jobs_failed.inc()
        if after is not None and after.state == "parked":
            self.metrics.jobs_parked.inc()
            log.error("%s: parked after %d attempts: %s", job.image, after.attempts, error)
        else:
            log.warning("%s: attempt %d failed: %s", job.image, job.attempts, error)

    def _archive(self, job: Job) -> tuple[str, dict[str, Any], str | None]:
        """(outcome, result, error): error None means the record is written (or not needed)."""
        try:
            ref = Reference.parse(job.image)
            if ref.digest and not ref.tag:
                if self._covered(ref):
                    return "covered", {"status": "covered", "digest": ref.digest}, None
                if self._tag_may_cover(job, ref):
                    return "deferred", {}, "waiting for the repository's tag jobs"
            result = self.archiver.archive(
                ref, self.config.registry_for(ref.registry), self.options
            )
        except BaleError as exc:
            return "failed", {}, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug must not kill the worker thread
            log.exception("%s: unexpected error", job.image)
            return "failed", {}, f"{type(exc).__name__}: {exc}"
        return _outcome(result)

    def _covered(self, ref: Reference) -> bool:
        """An untagged push whose manifest is already in the archive's repository (an index's
        child, archived with the index's tag): nothing to do."""
        assert ref.digest is not None
        key = layout.revision_link_key(ref.store_repo, ref.digest)
        return self.bucket.store.head(key) is not None

    def _tag_may_cover(self, job: Job, ref: Reference) -> bool:
        """A tag job of the same repository is still waiting or running (an index's tag, whose
        archive stores this manifest too): wait for it, up to six grace periods in all."""
        grace = self.queue.policy.digest_grace
        if self.queue.clock() > job.created + 6 * grace:
            return False
        return self.queue.tag_jobs_busy(ref.name)

    def _renew(self, job: Job, name: str, done: threading.Event) -> None:
        every = max(0.2, self.queue.policy.lease / 3)
        while not done.wait(every):
            try:
                if not self.queue.renew(job, name):
                    log.warning("%s: lease lost to another worker", job.image)
                    return
            except Exception as exc:
                log.warning("%s: lease not renewed: %s", job.image, exc)


def _outcome(result: ImageResult) -> tuple[str, dict[str, Any], str | None]:
    summary: dict[str, Any] = {
        "status": result.status,
        "digest": result.digest,
        "tar_key": result.tar_key,
        "bytes_uploaded": result.bytes_uploaded,
        "bytes_downloaded": result.bytes_downloaded,
    }
    if result.status in ("archived", "skipped"):
        return result.status, summary, None
    error = result.error or result.status
    return ("interrupted" if result.status == "interrupted" else "failed"), summary, error

"""The `bale serve` ASGI app: event intake, the queue's JSON API, metrics and health, plus the
catalog pages and the read-only `/v2/` API when those modules are there.

An event is answered 202 only after every image it names is committed to the queue (SQLite
with `synchronous=FULL`, or Redis); a crash after that loses nothing, a crash before it makes
the sender retry (distribution and Harbor both retry a failed delivery).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from pipeline.archive.bucket import ArchiveBucket
from pipeline.copy.session import Session
from pipeline.serve import intake
from pipeline.serve.config import ServeConfig
from pipeline.serve.metrics import Metrics
from pipeline.serve.queue import STATES, JobQueue, State, Target
from pipeline.serve.worker import Workers

if TYPE_CHECKING:
    from pipeline.serve.catalog import Catalog

log = logging.getLogger("bale.serve")
EVENT_KINDS = ("distribution", "harbor", "generic")
QUEUE_PAGE_STATES: tuple[State, ...] = ("pending", "running", "parked")
"""What `/queue` lists job by job; done jobs are only counted there (`/api/queue?state=done`)."""
QUEUE_PAGE_LIMIT = 200


class TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused past `limit` bytes whether or not Content-Length says so."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class Service:
    """The pieces the routes share; `workers` is None when this process only takes events."""

    def __init__(
        self,
        config: ServeConfig,
        queue: JobQueue,
        bucket: ArchiveBucket,
        session: Session,
        *,
        run_workers: bool = True,
    ) -> None:
        self.config = config
        self.queue = queue
        self.bucket = bucket
        self.session = session
        self.metrics = Metrics(queue.counts)
        self.workers = (
            Workers(config, queue, bucket, session, self.metrics) if run_workers else None
        )
        self.stopping = threading.Event()
        self.sweeper: threading.Thread | None = None

    # -- intake ------------------------------------------------------------------------------
    async def event(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in EVENT_KINDS:
            return _error(404, f"no event endpoint {kind!r}; use one of {', '.join(EVENT_KINDS)}")
        if not self.config.authorised(request.headers.get("authorization")):
            self.metrics.events_refused.labels(kind, "auth").inc()
            log.warning("event %s from %s: bad or missing secret", kind, _peer(request))
            return _error(401, "missing or wrong shared secret (Authorization header)")
        try:
            body = await _body(request, self.config.max_body)
        except TooLarge:
            self.metrics.events_refused.labels(kind, "size").inc()
            return _error(413, f"body over {self.config.max_body} bytes")
        try:
            pushes, ignored = intake.parse(kind, body, request.headers)
        except intake.BadEvent as exc:
            self.metrics.events_refused.labels(kind, "invalid").inc()
            log.warning("event %s from %s: %s", kind, _peer(request), exc)
            return _error(400, str(exc))
        screened = intake.screen(pushes, self.config.allowed)
        self.metrics.events_received.labels(kind).inc(len(pushes))
        for refused in screened.refused:
            self.metrics.events_refused.labels(kind, "registry").inc()
            log.warning(
                "event %s from %s refused: %s (%s)",
                kind,
                _peer(request),
                refused.what,
                refused.reason,
            )
        try:
            queued, collapsed = await run_in_threadpool(self._submit, screened.pushes, kind)
        except Exception as exc:  # the broker away: the sender retries, duplicates collapse
            self.metrics.events_refused.labels(kind, "queue").inc()
            log.error("event %s: queue unavailable: %s", kind, exc)
            return _error(503, f"queue unavailable: {exc}")
        if self.workers is not None and queued:
            self.workers.wake.set()
        answer = {
            "queued": queued,
            "collapsed": collapsed,
            "ignored": ignored,
            "refused": [{"image": r.what, "reason": r.reason} for r in screened.refused],
        }
        if screened.refused and not screened.pushes:
            # distribution retries a failed delivery forever, one event at a time per
            # endpoint: a 403 would hold back every later push of that registry. It gets a 200
            # naming the refusal (logged and counted all the same); other senders get 403.
            status = 200 if kind == "distribution" else 403
            return JSONResponse({"error": "registry not allowed", **answer}, status_code=status)
        return JSONResponse(answer, status_code=202)

    def _submit(self, pushes: list[intake.Push], kind: str) -> tuple[list[str], int]:
        queued: list[str] = []
        collapsed = 0
        for push in pushes:
            submitted = self.queue.submit(Target(push.key, push.digest, kind))
            if submitted.queued:
                queued.append(submitted.job.id)
            else:
                collapsed += 1
            if push.tag and push.digest:
                self.queue.covered_by_tag(push.reference.with_tag(None).name, push.digest)
        return queued, collapsed

    # -- queue API ---------------------------------------------------------------------------
    async def queue_list(self, request: Request) -> Response:
        state = request.query_params.get("state") or None
        if state is not None and state not in STATES:
            return _error(400, f"state must be one of {', '.join(STATES)}")
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            return _error(400, "offset and limit must be integers")
        view = await run_in_threadpool(self.queue_view, (state,), offset, limit)
        return JSONResponse(view)

    def queue_view(self, states: Sequence[State | None], offset: int, limit: int) -> dict[str, Any]:
        """What `/api/queue` answers and `/queue` renders: the counts, what this process's
        workers run, and the jobs of each of `states` (None: of every state)."""
        return {
            "counts": self.queue.counts(),
            "running_here": dict(self.workers.running) if self.workers else {},
            "jobs": [j.public() for s in states for j in self.queue.jobs(s, offset, limit)],
        }

    def queue_page(self, request: Request) -> tuple[str, dict[str, Any]]:
        """The queue for people. Retrying needs the shared secret, which a browser's form
        cannot send (its Authorization header carries the catalog's credentials), so the page
        shows the command that can."""
        view = self.queue_view(QUEUE_PAGE_STATES, 0, QUEUE_PAGE_LIMIT)
        view["states"] = QUEUE_PAGE_STATES
        view["retry_url"] = f"{str(request.base_url).rstrip('/')}/api/queue"
        return "queue.html", view

    async def queue_job(self, request: Request) -> Response:
        job = await run_in_threadpool(self.queue.get, request.path_params["id"])
        if job is None:
            return _error(404, "no such job")
        return JSONResponse(job.public())

    async def queue_retry(self, request: Request) -> Response:
        if not self.config.authorised(request.headers.get("authorization")):
            return _error(401, "missing or wrong shared secret (Authorization header)")
        job_id = request.path_params["id"]
        job = await run_in_threadpool(self.queue.retry, job_id)
        if job is None:
            current = await run_in_threadpool(self.queue.get, job_id)
            if current is None:
                return _error(404, "no such job")
            return _error(409, f"job is {current.state}, not parked")
        if self.workers is not None:
            self.workers.wake.set()
        return JSONResponse(job.public(), status_code=202)

    # -- health ------------------------------------------------------------------------------
    async def metrics_page(self, _request: Request) -> Response:
        data = await run_in_threadpool(generate_latest, self.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, _request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(self, _request: Request) -> Response:
        try:
            await run_in_threadpool(self.queue.backend.ping)
        except Exception as exc:
            return PlainTextResponse(f"queue unreachable: {exc}\n", status_code=503)
        if self.stopping.is_set():
            return PlainTextResponse("stopping\n", status_code=503)
        return PlainTextResponse("ready\n")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.workers is not None:
            self.workers.start()
        if self.config.reconcile_every > 0 and self.config.spec_path:
            self.sweeper = threading.Thread(target=self._sweep, name="bale-reconcile", daemon=True)
            self.sweeper.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.workers is not None:
            self.workers.stop()

    def _sweep(self) -> None:
        from pipeline.batch.spec import load_spec
        from pipeline.serve.reconcile import reconcile

        assert self.config.spec_path is not None
        while not self.stopping.is_set():
            try:
                spec = load_spec(self.config.spec_path)
                reconcile(spec, self.session, self.config.registry, self.bucket, self.queue)
                if self.workers is not None:
                    self.workers.wake.set()
            except Exception as exc:
                log.error("reconcile %s: %s", self.config.spec_path, exc)
            self.stopping.wait(self.config.reconcile_every)

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/events/{kind}", self.event, methods=["POST"]),
            Route("/api/queue/{id}/retry", self.queue_retry, methods=["POST"]),
            Route("/metrics", self.metrics_page, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
        ]
        from pipeline.serve.catalog import Catalog
        from pipeline.serve.catalog_index import CatalogIndex
        from pipeline.serve.registry_api import registry_routes
        from pipeline.serve.registry_auth import RegistryAuth

        store = self.bucket.store
        index = CatalogIndex(store)
        index.warm()
        auth = RegistryAuth.from_files(**self.config.registry_auth)
        routes += registry_routes(store, auth, index=index)
        catalog = Catalog(store, index, auth)
        routes += catalog.routes()
        routes.append(Route("/queue", catalog.page(self.queue_page)))
        readable = self._readable(catalog)
        routes.append(Route("/api/queue", readable(self.queue_list), methods=["GET"]))
        routes.append(Route("/api/queue/{id}", readable(self.queue_job), methods=["GET"]))
        return routes

    def _readable(
        self, catalog: Catalog
    ) -> Callable[[Callable[[Request], Awaitable[Response]]], Callable[..., Awaitable[Response]]]:
        """The queue's JSON for whoever may read the catalog (its credentials) and for scripts
        holding the shared secret: job errors name images and registries."""

        def wrap(
            handler: Callable[[Request], Awaitable[Response]],
        ) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                header = request.headers.get("authorization")
                if not (self.config.authorised(header) or catalog.authenticator.allows(header)):
                    return _error(401, "the queue needs the catalog's credentials or the secret")
                return await handler(request)

            return endpoint

        return wrap


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"


def build_app(service: Service) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = Starlette(routes=service.routes(), lifespan=lifespan)
    app.state.service = service
    return app

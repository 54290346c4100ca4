"""`bale serve`: archive images as registries announce pushes (and the queue options that
`bale reconcile` shares with it)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from pipeline.cli.options import (
    RegistryFlags,
    SkopeoCommand,
    TransferFlags,
    endpoint_option,
    examples,
    option,
    src_registry_options,
    store_options,
    transfer_options,
)
from pipeline.cli.output import handles_errors
from pipeline.units import DURATION, SIZE

if TYPE_CHECKING:
    from pipeline.serve.queue import Policy

SECRET_VARIABLE = "BALE_SERVE_SECRET"


def queue_option(func: click.decorators.FC) -> click.decorators.FC:
    return option(
        "--queue",
        "queue_url",
        metavar="URL",
        default="bale-queue.db",
        show_default=True,
        help="The job queue: a SQLite file (one replica) or redis://HOST:PORT/DB (several).",
    )(func)


def policy_options(func: click.decorators.FC) -> click.decorators.FC:
    for decorator in reversed(
        [
            option(
                "--max-attempts",
                type=click.IntRange(min=1),
                default=5,
                show_default=True,
                help="Attempts before a job is parked (dead letters, see /api/queue).",
            ),
            option(
                "--retry-delay",
                type=DURATION,
                default="10s",
                show_default=True,
                help="Wait after a first failure; doubles with each (at most 10m).",
            ),
            option(
                "--lease",
                type=DURATION,
                default="60s",
                show_default=True,
                help="A job whose worker sent no heartbeat for this long is retried.",
            ),
            option(
                "--digest-grace",
                type=DURATION,
                default="10s",
                show_default=True,
                help="How long an untagged push waits for the tag that covers it.",
            ),
        ]
    ):
        func = decorator(func)
    return func


def make_policy(max_attempts: int, retry_delay: float, lease: float, digest_grace: float) -> Policy:
    from pipeline.errors import UsageError
    from pipeline.serve.queue import Policy

    if lease <= 0:
        raise UsageError("--lease must be more than 0 seconds")
    return Policy(
        max_attempts=max_attempts, retry_delay=retry_delay, lease=lease, digest_grace=digest_grace
    )


def _secret(secret_file: str | None) -> str:
    from pipeline.errors import UsageError

    if secret_file:
        try:
            with open(secret_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            raise UsageError(f"--secret-file {secret_file}: {exc.strerror}") from None
    return os.environ.get(SECRET_VARIABLE, "").strip()


def _listen(text: str) -> tuple[str, int]:
    from pipeline.errors import UsageError

    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


@examples(
    "BALE_SERVE_SECRET=... bale serve --store s3://my-archive/images "
    "--allow-registry registry.example.com",
    "bale serve --store ./archive --queue redis://redis:6379/0 --allow-registry harbor.example.com "
    "--spec manifests/example.yaml --reconcile 1h",
)
@click.command("serve", cls=SkopeoCommand)
@option(
    "--store",
    "--to",
    "store_url",
    required=True,
    metavar="STORE",
    help="The archive to fill and serve: s3://, oss://, file:// or a path.",
)
@endpoint_option()
@store_options
@option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to serve on (0.0.0.0:8080 in a container).",
)
@queue_option
@option(
    "--secret-file",
    metavar="PATH",
    help=f"File holding the shared secret events must send (default: ${SECRET_VARIABLE}).",
)
@option(
    "--allow-registry",
    "allowed",
    multiple=True,
    metavar="HOST[:PORT]",
    help="A registry events may name (repeat); a spec's registries are allowed too.",
)
@option(
    "--workers",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Images archived at once by this process (0: take events only).",
)
@option("--max-body", type=SIZE, default="1M", show_default=True, help="Largest event body.")
@option(
    "--spec",
    "spec_path",
    metavar="SPEC.yaml",
    help="Sources to reconcile (as `bale run` reads them); their registries are allowed.",
)
@option(
    "--reconcile",
    "reconcile_every",
    type=DURATION,
    default="0",
    help="Queue what --spec lists and the archive lacks, at start and then this often "
    "(1h; 0: never).",
)
@option(
    "--htpasswd",
    metavar="PATH",
    help="Pulls through /v2/ need a user of this htpasswd file (bcrypt, as distribution's).",
)
@option(
    "--registry-token-file",
    metavar="PATH",
    help="Pulls through /v2/ may send one of these bearer tokens (one per line).",
)
@option(
    "--anonymous-read",
    is_flag=True,
    help="With --htpasswd or --registry-token-file, also let anyone pull.",
)
@policy_options
@src_registry_options
@transfer_options
@handles_errors
def serve_command(
    store_url: str,
    endpoint_url: str | None,
    listen: str,
    queue_url: str,
    secret_file: str | None,
    allowed: tuple[str, ...],
    workers: int,
    max_body: int,
    spec_path: str | None,
    reconcile_every: float,
    max_attempts: int,
    retry_delay: float,
    lease: float,
    digest_grace: float,
    htpasswd: str | None,
    registry_token_file: str | None,
    anonymous_read: bool,
    src_registry: RegistryFlags,
    transfer: TransferFlags,
) -> None:
    """Archive images when registries announce pushes (distribution notifications, Harbor
    webhooks, generic events), with a queue, retries, /metrics and health endpoints."""
    import uvicorn

    from pipeline.batch.spec import load_spec
    from pipeline.cli.runtime import open_bucket, session_options
    from pipeline.copy.session import Session
    from pipeline.errors import UsageError
    from pipeline.serve.app import Service, build_app
    from pipeline.serve.config import ServeConfig, normalise_host
    from pipeline.serve.queue import open_queue
    from pipeline.serve.reconcile import spec_registries

    host, port = _listen(listen)
    if reconcile_every and not spec_path:
        raise UsageError("--reconcile needs --spec (the sources to list)")
    registry = src_registry.options("src")
    spec = load_spec(spec_path) if spec_path else None
    per_registry = spec_registries(spec, registry) if spec else {}
    hosts = frozenset({normalise_host(h) for h in allowed} | set(per_registry))
    if not hosts:
        raise UsageError("no registry allowed: give --allow-registry HOST (or --spec)")
    config = ServeConfig(
        store_url=store_url,
        queue_url=queue_url,
        secret=_secret(secret_file),
        allowed=hosts,
        endpoint_url=endpoint_url,
        workers=workers,
        max_body=max_body,
        registry=registry,
        per_registry=per_registry,
        reconcile_every=reconcile_every,
        spec_path=spec_path,
        registry_auth={
            "htpasswd": htpasswd,
            "token_file": registry_token_file,
            "anonymous_read": anonymous_read,
        },
    )
    queue = open_queue(queue_url, make_policy(max_attempts, retry_delay, lease, digest_grace))
    bucket = open_bucket(store_url, endpoint_url, transfer.retries, existing=False, write=True)
    with Session(session_options(transfer)) as session:
        service = Service(config, queue, bucket, session, run_workers=workers > 0)
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(service), host=host, port=port, log_level="warning", access_log=False
            )
        )
        click.echo(f"bale serve: listening on http://{listen} (queue {queue_url})", err=True)
        try:
            # On SIGINT/SIGTERM uvicorn stops taking requests, the app's shutdown cuts the
            # running archives (their jobs go back to pending), then it re-raises the signal:
            # the process ends as stopped by it (130/143).
            server.run()
        except KeyboardInterrupt:
            sys.exit(130)
        finally:
            queue.backend.close()

"""`bale reconcile SPEC --to STORE`: queue, once, what a spec lists and the archive lacks,
for `bale serve`'s workers (the sweep `bale serve --reconcile` runs on a timer)."""

from __future__ import annotations

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
from pipeline.cli.serve import make_policy, policy_options, queue_option


@examples(
    "bale reconcile manifests/example.yaml --to s3://my-archive/images --queue redis://redis:6379/0",
    "bale reconcile images.yaml --to ./archive --queue bale-queue.db   # the file bale serve uses",
)
@click.command("reconcile", cls=SkopeoCommand)
@click.argument("spec_path", metavar="SPEC.yaml")
@option("--to", "store_url", required=True, metavar="STORE", help="The archive `bale serve` fills.")
@endpoint_option()
@store_options
@queue_option
@policy_options
@src_registry_options
@transfer_options
@handles_errors
def reconcile_command(
    spec_path: str,
    store_url: str,
    endpoint_url: str | None,
    queue_url: str,
    max_attempts: int,
    retry_delay: float,
    lease: float,
    digest_grace: float,
    src_registry: RegistryFlags,
    transfer: TransferFlags,
) -> None:
    """List SPEC.yaml's sources and queue, for `bale serve`'s workers, every image the archive
    has no record of. Prints what it queued; exits 1 if a repository could not be listed."""
    import sys

    from pipeline.batch.spec import load_spec
    from pipeline.cli.output import echo_result
    from pipeline.cli.runtime import open_bucket, open_session
    from pipeline.serve.queue import open_queue
    from pipeline.serve.reconcile import reconcile

    spec = load_spec(spec_path)
    registry = src_registry.options("src")
    bucket = open_bucket(store_url, endpoint_url, transfer.retries, existing=False)
    queue = open_queue(queue_url, make_policy(max_attempts, retry_delay, lease, digest_grace))
    with open_session(transfer) as session:
        sweep = reconcile(spec, session, registry, bucket, queue)
    for key in sweep.queued:
        echo_result(f"queued {key}", event="queued", image=key)
    for failure in sweep.failures:
        echo_result(f"not listed: {failure}", err=True, event="error", message=failure)
    echo_result(
        f"{sweep.listed} listed, {sweep.present} archived, {len(sweep.queued)} queued, "
        f"{sweep.collapsed} already queued",
        event="reconciled",
        listed=sweep.listed,
        archived=sweep.present,
        queued=len(sweep.queued),
        already_queued=sweep.collapsed,
    )
    queue.backend.close()
    if sweep.failures:
        sys.exit(1)

"""`bale verify`: re-hash what a store holds and check that every name points at data."""

from __future__ import annotations

import sys
from typing import Any

import click

from pipeline.cli.options import (
    BaleCommand,
    TransferFlags,
    endpoint_option,
    examples,
    option,
    rate_options,
    store_options,
)
from pipeline.cli.output import echo_result, handles_errors


@examples(
    "bale verify s3://my-archive/images",
    "bale verify ./archive registry.example.com/team/app:1.0 --deep",
)
@click.command("verify", cls=BaleCommand)
@click.argument("store_url", metavar="STORE")
@click.argument("images", nargs=-1, metavar="[IMAGE]...")
@endpoint_option()
@store_options
@option("--deep", is_flag=True, help="Also decompress layers (gzip, zstd) and check diff_ids.")
@option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of lines.")
@rate_options
@handles_errors
def verify_command(
    store_url: str,
    images: tuple[str, ...],
    endpoint_url: str | None,
    deep: bool,
    as_json: bool,
    transfer: TransferFlags,
) -> None:
    """Re-hash blobs and tars in STORE and check links, tags and records (all, or IMAGE...).

    Prints one line per fault (kind, key, detail) and exits 1 on any fault, 0 when clean.
    Objects in an archive storage class and not restored cannot be read: they are counted as
    not checked (no fault), with the `bale thaw` command that makes them readable.
    """
    from pipeline.cli.runtime import open_bucket
    from pipeline.ops.verify import verify_store
    from pipeline.refs import Reference
    from pipeline.transfer.ratelimit import make_limiter

    refs = [Reference.parse(i) for i in images]
    bucket = open_bucket(store_url, endpoint_url, transfer.retries)
    limiter = make_limiter(transfer.limit_rate)
    report = verify_store(bucket, refs, jobs=transfer.jobs, deep=deep, limiter=limiter)
    if as_json:
        click.echo(report.to_json(), nl=False)
    for fault in [] if as_json else report.faults:
        fields: dict[str, Any] = dict(fault.to_json())
        echo_result(str(fault), event="fault", **fields)
    echo_result(report.summary(), err=True, event="summary", message=report.summary(), ok=report.ok)
    sys.exit(0 if report.ok else 1)

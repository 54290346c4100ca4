"""`bale ls`: the archived images in a store, as a table or JSON."""

from __future__ import annotations

import sys

import click

from pipeline.cli.options import endpoint_option, examples, option, store_options
from pipeline.cli.output import handles_errors


@examples(
    "bale ls s3://my-archive/images",
    "bale ls s3://my-archive/images team/app:1.0",
    "bale ls ./archive --json",
)
@click.command("ls")
@click.argument("store_url", metavar="STORE")
@click.argument("pattern", metavar="[REPO[:TAG]]", required=False)
@endpoint_option()
@store_options
@option("--json", "as_json", is_flag=True, help="One JSON array of records.")
@option(
    "--history",
    is_flag=True,
    help='Every digest each tag was archived with (* marks the current; JSON: "current").',
)
@option(
    "--prices",
    metavar="FILE",
    help="YAML/JSON: storage class -> price per GiB-month, for the monthly estimate "
    "(default: an example table, not real prices; see docs/lifecycle.md).",
)
@handles_errors
def ls_command(
    store_url: str,
    pattern: str | None,
    endpoint_url: str | None,
    as_json: bool,
    history: bool,
    prices: str | None,
) -> None:
    """The archived images in STORE: ref, digest, platforms, sizes, tar key, date.

    REPO (`host/team/app`, or `team/app`) or REPO:TAG lists only those images. PLATFORMS are
    all the platforms kept in the store; IN TAR those in the image's tar ("all" when the same).
    CLASS is what --storage-class wrote them in. --json adds each image's bytes per class and
    an estimated monthly storage figure from --prices.
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from pipeline.archive.classes import store_scheme
    from pipeline.archive.costs import bytes_by_class, load_prices, monthly
    from pipeline.archive.record import format_time, select_records
    from pipeline.cli.protected import store_facts, store_line
    from pipeline.cli.runtime import open_bucket
    from pipeline.units import format_size

    bucket = open_bucket(store_url, endpoint_url)
    records = sorted(
        bucket.records(history=history),
        key=lambda r: (r.source, r.is_history, -r.archived_at.timestamp()),
    )
    if history:  # a tag moved back to a digest it had: listed once, as the current
        current = {(r.source, r.digest) for r in records if not r.is_history}
        records = [r for r in records if not r.is_history or (r.source, r.digest) not in current]
    if pattern is not None:
        records = select_records(records, pattern)
    if as_json:
        facts = store_facts(bucket.store)  # the store's protection, with each record
        table_of_prices = load_prices(prices)
        scheme = store_scheme(store_url)
        listed = []
        for r in records:
            obj = json.loads(r.to_json())
            obj["bytes_by_class"] = found = bytes_by_class(r, scheme)
            obj["monthly_estimate"] = monthly(found, table_of_prices)
            if facts:
                obj["store"] = facts
            if history:
                obj["current"] = not r.is_history
            listed.append(obj)
        click.echo(json.dumps(listed, indent=2))
        return
    if pattern is not None and not records:
        click.echo(f"no archived image matches {pattern}", err=True)
        return
    table = Table(box=None, pad_edge=False)
    columns = (
        "IMAGE",
        "DIGEST",
        "PLATFORMS",
        "IN TAR",
        "BLOBS",
        "TAR",
        "TAR KEY",
        "ARCHIVED",
        "CLASS",
    )
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="fold")
    for r in records:
        stored = r.stored_platforms or r.platforms
        in_tar = ",".join(r.platforms) if r.platforms != stored else "all" if stored else "-"
        mark = ("  " if r.is_history else "* ") if history else ""  # the tag's current image
        table.add_row(
            mark + r.source,
            r.digest[:19],
            ",".join(stored) or "-",
            in_tar,
            format_size(r.blob_bytes),
            format_size(r.tar_size),
            r.tar_key,
            format_time(r.archived_at),
            str(r.storage_class or "-"),
        )
    Console(width=None if sys.stdout.isatty() else 400, soft_wrap=True).print(table)
    footer = store_line(bucket.store, (r.lock for r in records))
    if footer is not None:
        click.echo(footer)

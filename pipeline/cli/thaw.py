"""`bale thaw IMAGE... --from STORE`: restore requests for images kept in archive classes."""

from __future__ import annotations

import click

from pipeline.cli.options import endpoint_option, examples, option, store_options
from pipeline.cli.output import handles_errors


@examples(
    "bale thaw registry.example.com/team/app:1.0 --from s3://my-archive/images",
    "bale thaw team/app:1.0 team/app:1.1 --from oss://my-archive/images --days 3 --tier Bulk",
)
@click.command("thaw")
@click.argument("images", nargs=-1, required=True)
@option("--from", "store_url", required=True, metavar="STORE", help="s3://, oss:// or a path.")
@endpoint_option()
@store_options
@option("--days", type=click.IntRange(min=1), default=1, help="Keep restored copies N days.")
@option(
    "--tier",
    type=click.Choice(["Expedited", "Standard", "Bulk"]),
    default="Standard",
    help="Restore speed (and price) as the provider offers it.",
)
@option("--json", "as_json", is_flag=True, help="One JSON array, an object per image.")
@handles_errors
def thaw_command(
    images: tuple[str, ...],
    store_url: str,
    endpoint_url: str | None,
    days: int,
    tier: str,
    as_json: bool,
) -> None:
    """Ask STORE to restore every object IMAGE... needs (blobs and tar) that is in an archive
    storage class; says per image: ready, in progress (and the provider's estimate), or not
    needed. Asking again is harmless: a restore under way or done is not asked twice."""
    import json

    from pipeline.cli.runtime import open_bucket
    from pipeline.ops.thaw import thaw_image
    from pipeline.refs import Reference

    bucket = open_bucket(store_url, endpoint_url)
    states = [thaw_image(bucket, Reference.parse(i), days=days, tier=tier) for i in images]
    if as_json:
        click.echo(json.dumps([s.to_json() for s in states], indent=2))
        return
    for s in states:
        waiting = sum(o.state.value == "in progress" for o in s.objects)
        detail = f" ({waiting} object(s), expected {s.expected})" if s.expected else ""
        click.echo(f"{s.state.value:<12} {s.image}{detail}")

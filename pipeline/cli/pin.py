"""`bale pin`: keep an archived image whatever `bale prune`'s rules say."""

from __future__ import annotations

import click

from pipeline.cli.options import endpoint_option, examples, option, store_options
from pipeline.cli.output import echo_result, handles_errors


@examples(
    "bale pin team/app:1.0 --from s3://my-archive/images",
    "bale pin team/app:1.0 --from s3://my-archive/images --unpin",
)
@click.command("pin")
@click.argument("image", metavar="IMAGE")
@option("--from", "store_url", metavar="STORE", required=True, help="The archive.")
@endpoint_option()
@store_options
@option("--unpin", is_flag=True, help="Clear the pin instead.")
@handles_errors
def pin_command(image: str, store_url: str, endpoint_url: str | None, unpin: bool) -> None:
    """Pin IMAGE (REPO:TAG or REPO@DIGEST) in its record, so `bale prune` never deletes it."""
    from pipeline.cli.runtime import open_bucket
    from pipeline.ops.prune import pin_image

    bucket = open_bucket(store_url, endpoint_url)
    verb = "unpinned" if unpin else "pinned"
    for key, changed in pin_image(bucket, image, pinned=not unpin):
        text = f"{verb} {image} ({key})" if changed else f"{image} already {verb} ({key})"
        echo_result(text, event="pin", key=key, pinned=not unpin, changed=changed)

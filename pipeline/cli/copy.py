"""`bale copy`: one image between transports (docker://, docker-archive:, oci-archive:)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pipeline.cli.options import (
    ReferrerFlags,
    RegistryFlags,
    SkopeoCommand,
    TransferFlags,
    dest_registry_options,
    endpoint_option,
    examples,
    option,
    platform_options,
    referrer_options,
    src_registry_options,
    store_options,
    transfer_options,
)
from pipeline.cli.output import echo_result, handles_errors, naming
from pipeline.units import SIZE

if TYPE_CHECKING:
    from pipeline.oci import Platform

PLATFORM_HELP = (
    "The platform to copy from an index. Without it, to docker:// an index is copied whole "
    "(every platform, digest kept), and to a tar only linux/amd64 (else the first image) goes. "
    "With it, only that platform is copied, under its own manifest digest (no index)."
)
ALL_PLATFORMS_HELP = "Every platform and the index itself, also into a tar."


@examples(
    "bale copy docker://registry.example.com/team/app:1.0 docker://mirror.example.com/app:1.0",
    "bale copy docker://registry.example.com/team/app:1.0 docker-archive:app.tar",
    "bale copy oci-archive:s3://my-bucket/app.tar docker://registry.example.com/team/app:1.0",
)
@click.command("copy", cls=SkopeoCommand)
@click.argument("src")
@click.argument("dst")
@endpoint_option("S3-compatible or OSS endpoint for s3:// / oss://.")
@store_options
@option(
    "--stdin-memory",
    type=SIZE,
    default="512M",
    show_default=True,
    help="Largest tar read from a pipe (LOCATION -), held in memory: bale never stages on disk.",
)
@option("--force", is_flag=True, help="Replace an existing docker-archive: / oci-archive: tar.")
@platform_options(PLATFORM_HELP, ALL_PLATFORMS_HELP)
@src_registry_options
@dest_registry_options
@referrer_options
@transfer_options
@handles_errors
def copy_command(
    src: str,
    dst: str,
    endpoint_url: str | None,
    stdin_memory: int,
    force: bool,
    platform: Platform | None,
    all_platforms: bool,
    src_registry: RegistryFlags,
    dest_registry: RegistryFlags,
    referrer: ReferrerFlags,
    transfer: TransferFlags,
) -> None:
    """Copy an image between transports: docker://REF, docker-archive:LOC[:REF], oci-archive:LOC[:REF].

    LOC is a local path, - (stdin/stdout), s3://bucket/key or oss://bucket/key; tars are
    streamed, never staged on disk. Into a registry, an index is copied whole (digest kept)
    unless --platform picks one image.
    """
    from pipeline.cli.runtime import locations_encryption, open_session
    from pipeline.ops.copy import copy_transports
    from pipeline.transports import parse_transport
    from pipeline.transports.names import ArchiveTransport

    source, dest = parse_transport(src), parse_transport(dst)
    tars = [t.location for t in (source, dest) if isinstance(t, ArchiveTransport)]
    encryption = locations_encryption([loc for loc in tars if loc != "-"])
    with open_session(transfer) as session, naming(f"{source} -> {dest}"):
        result = copy_transports(
            source,
            dest,
            session=session,
            src_registry=src_registry.options("src"),
            dest_registry=dest_registry.options("dest", authfile=src_registry.authfile),
            platform=platform,
            all_platforms=all_platforms,
            endpoint_url=endpoint_url,
            stdin_limit=stdin_memory,
            referrers=referrer.referrers,
            compress=referrer.compress,
            force=force,
            encryption=encryption,
        )
    echo_result(
        f"copied {source} -> {result.destination} ({result.digest}, {result.size} bytes)",
        err=True,
        status="copied",
        image=str(source),
        digest=result.digest,
        destination=result.destination,
        bytes=result.size,
    )

"""`bale restore IMAGE DEST --from STORE`: archived images back into a registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pipeline.cli.options import (
    ReferrerFlags,
    RegistryFlags,
    ReportFlags,
    SkopeoCommand,
    TransferFlags,
    authfile_option,
    dest_registry_options,
    endpoint_option,
    examples,
    option,
    platform_option,
    referrer_options,
    report_options,
    store_options,
    transfer_options,
)
from pipeline.cli.output import echo_done, finish_run, handles_errors

if TYPE_CHECKING:
    from pipeline.archive.bucket import ArchiveBucket
    from pipeline.oci import Platform
    from pipeline.ops.thaw import ImageThaw
    from pipeline.refs import Reference


@examples(
    "bale restore registry.example.com/team/app:1.0 docker://mirror.example.com/team/app "
    "--from s3://my-archive/images",
    "bale restore registry.example.com/team/app docker://mirror.example.com/team/app "
    "--all-tags --from ./archive",
)
@click.command("restore", cls=SkopeoCommand)
@click.argument("image")
@click.argument("dest")
@option(
    "--from", "store_url", required=True, metavar="STORE", help="s3://, oss://, file:// or a path."
)
@endpoint_option()
@store_options
@option("--all-tags", is_flag=True, help="Restore every archived tag of IMAGE's repository.")
@platform_option(
    "The one platform of an archived index to push, under its own manifest digest "
    "(no index). Without it, the image goes back as it was archived: a whole index keeps its "
    "digest, an image archived with --platform is that one manifest."
)
@option("--fail-fast/--keep-going", default=False, help="Stop at the first failed image.")
@option(
    "--thaw",
    is_flag=True,
    help="Ask for the restore of objects in an archive class first (see `bale thaw`).",
)
@option("--wait", is_flag=True, help="With --thaw: wait until they are readable, then restore.")
@authfile_option
@dest_registry_options
@referrer_options
@transfer_options
@report_options
@handles_errors
def restore_command(
    image: str,
    dest: str,
    store_url: str,
    endpoint_url: str | None,
    all_tags: bool,
    platform: Platform | None,
    fail_fast: bool,
    thaw: bool,
    wait: bool,
    authfile: str | None,
    dest_registry: RegistryFlags,
    referrer: ReferrerFlags,
    transfer: TransferFlags,
    reports: ReportFlags,
) -> None:
    """Push IMAGE, as it was archived in STORE, to DEST (docker://host/repo[:tag]), digests
    unchanged. DEST's tag defaults to IMAGE's; with --all-tags both name repositories."""
    from pipeline.batch.runner import run_batch
    from pipeline.cli.runtime import open_bucket, open_display, open_session
    from pipeline.ops.restore import Restorer, restore_targets
    from pipeline.refs import Reference

    source = Reference.parse(image, default_tag=None if all_tags else "latest")
    target = Reference.parse(dest, default_tag=None)
    options = dest_registry.options("dest", authfile=authfile)
    reports.check()
    bucket = open_bucket(store_url, endpoint_url, transfer.retries)
    targets = restore_targets(
        bucket, source, target, all_tags=all_tags, referrers=referrer.referrers
    )
    _check_thawed(bucket, [t.source for t in targets], thaw=thaw, wait=wait)
    secrets = [options.credentials.password] if options.credentials else []
    with open_session(transfer) as session, open_display(secrets) as display:
        display.on_run_start(len(targets), what=str(bucket.url))
        restorer = Restorer(
            bucket,
            session,
            options,
            display,
            referrers=referrer.referrers,
            compress=referrer.compress,
        )
        report = run_batch(
            targets,
            lambda t: restorer.restore(t, platform),
            jobs=transfer.jobs,
            name=lambda t: str(t.source),
            fail_fast=fail_fast,
            on_result=lambda t, result: echo_done(result, f"docker://{t.dest}"),
        )
        display.on_run_done(report)
    finish_run(report, reports, secrets)


def _check_thawed(bucket: ArchiveBucket, refs: list[Reference], *, thaw: bool, wait: bool) -> None:
    """Before the first byte: exit 2 naming `bale thaw` for objects not readable, or with
    --thaw --wait, thaw and wait (a rerun after Ctrl-C finds its restores under way)."""
    from pipeline.errors import UsageError
    from pipeline.ops.thaw import check_thawed, thaw_and_wait

    if wait and not thaw:
        raise UsageError("--wait goes with --thaw")
    if thaw:

        def progress(states: list[ImageThaw]) -> None:
            for s in states:
                left = sum(o.state.value == "in progress" for o in s.objects)
                more = f": {left} object(s) to go, expected {s.expected}" if left else ""
                click.echo(f"thaw {s.image}: {s.state.value}{more}", err=True)

        if wait:
            from pipeline.transfer.cancel import on_signals

            with on_signals():  # Ctrl-C: exit 130; a rerun finds the restores under way
                thaw_and_wait(bucket, refs, progress=progress)
            return
        from pipeline.ops.thaw import thaw_image

        progress([thaw_image(bucket, r) for r in refs])
    check_thawed(bucket, refs)

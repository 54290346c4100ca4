"""`bale sync SOURCE DESTINATION`: every image of a repository or spec into a registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pipeline.cli.options import (
    ReferrerFlags,
    RegistryFlags,
    ReportFlags,
    SkopeoCommand,
    TransferFlags,
    dest_registry_options,
    examples,
    option,
    platform_option,
    referrer_options,
    report_options,
    src_registry_options,
    transfer_options,
)
from pipeline.cli.output import echo_done, finish_run, handles_errors

if TYPE_CHECKING:
    from pipeline.oci import Platform


@examples(
    "bale sync docker://registry.example.com/team/app docker://mirror.example.com/team",
    "bale sync --src yaml manifests/example.yaml docker://mirror.example.com/mirror --dry-run",
    "bale sync --all docker://docker.io/library/alpine:3.20 docker://mirror.example.com/library",
)
@click.command("sync", cls=SkopeoCommand)
@click.argument("source")
@click.argument("destination")
@option(
    "-s",
    "--src",
    "src_transport",
    type=click.Choice(["docker", "yaml"]),
    default="docker",
    show_default=True,
    help="SOURCE is a repository or image (docker), or a spec file (yaml).",
)
@option(
    "-d",
    "--dest",
    "dest_transport",
    type=click.Choice(["docker"]),
    default="docker",
    show_default=True,
    help="DESTINATION is a registry, optionally with a path prefix.",
)
@option("--scoped", is_flag=True, help="Keep the full source reference under DESTINATION.")
@option(
    "-a",
    "--all",
    "all_images",
    is_flag=True,
    help="Copy an index whole: every platform, digest kept.",
)
@platform_option(
    "The platform taken from an index without --all, copied under its own manifest "
    "digest (the index is not copied). Without it that is linux/amd64; an index without "
    "linux/amd64 then fails, as in skopeo. With --all the whole index is copied and this is "
    "ignored."
)
@option("--dry-run", is_flag=True, help="Report what would be copied; write nothing.")
@option("--keep-going", is_flag=True, help="Do not stop at the first failed image.")
@src_registry_options
@dest_registry_options
@option("--src-authfile", metavar="PATH", help="auth file for the source (over --authfile).")
@option("--dest-authfile", metavar="PATH", help="auth file for the destination.")
@referrer_options
@transfer_options
@report_options
@handles_errors
def sync_command(
    source: str,
    destination: str,
    src_transport: str,
    dest_transport: str,
    scoped: bool,
    all_images: bool,
    platform: Platform | None,
    dry_run: bool,
    keep_going: bool,
    src_registry: RegistryFlags,
    dest_registry: RegistryFlags,
    src_authfile: str | None,
    dest_authfile: str | None,
    referrer: ReferrerFlags,
    transfer: TransferFlags,
    reports: ReportFlags,
) -> None:
    """Copy every image of SOURCE into DESTINATION, as skopeo sync does.

    SOURCE is docker://HOST/REPO (every tag), docker://HOST/REPO:TAG, or with --src yaml a
    spec file. Each image goes to DESTINATION/<last component of its name>:<tag> (--scoped:
    the whole name). Tags already at the same digest are skipped.
    """
    # batch.plan and batch.spec bring yaml and the spec's machinery: imported only when a
    # spec needs them (start-up is part of every sync's time).
    from pipeline.batch.runner import run_batch
    from pipeline.cli.runtime import open_display, open_session
    from pipeline.ops.sync import Syncer, SyncOptions, plan_images, plan_repository

    del dest_transport  # only docker, as a choice: skopeo's spelling
    src = src_registry.options("src", "--src-authfile", authfile=src_authfile)
    dest = dest_registry.options(
        "dest", "--dest-authfile", authfile=dest_authfile or src_registry.authfile
    )
    options = SyncOptions(
        scoped=scoped,
        all_platforms=all_images,
        platform=platform,
        dry_run=dry_run,
        keep_going=keep_going,
        referrers=referrer.referrers,
        compress=referrer.compress,
    )
    reports.check()
    secrets = [o.credentials.password for o in (src, dest) if o.credentials]
    spec = None
    if src_transport == "yaml":
        from pipeline.batch.plan import expand_spec, spec_secrets
        from pipeline.batch.spec import load_spec

        spec = load_spec(source)
        secrets += spec_secrets(spec)
    with open_session(transfer) as session, open_display(secrets) as display:
        if spec is not None:
            expanded = expand_spec(spec, session, src)
            plan = plan_images(
                expanded.images,
                destination,
                options,
                failures=expanded.failures,
                started=expanded.started,
            )
        else:
            plan = plan_repository(source, destination, session, src, options)
        display.on_run_start(len(plan.items) + len(plan.failures), what=source, dry_run=dry_run)
        for failure in plan.failures:
            display.on_image_done(failure)
        syncer = Syncer(session, dest, options, display)
        report = run_batch(
            plan.items,
            syncer.sync,
            jobs=transfer.jobs,
            name=lambda item: str(item.source),
            fail_fast=not keep_going,
            on_result=lambda item, result: echo_done(result, f"docker://{item.dest}"),
            later=lambda item: referrer.referrers and item.is_referrer_tag,
            listed=plan.failures,
            started=plan.started,
        )
        display.on_run_done(report)
    finish_run(report, reports, secrets)

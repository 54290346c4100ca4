"""`bale gc`: remove what no tag or record reaches, and abandoned multipart uploads."""

from __future__ import annotations

import click

from pipeline.cli.options import endpoint_option, examples, option, store_options
from pipeline.cli.output import echo_result, handles_errors
from pipeline.units import DURATION


@examples("bale gc s3://my-archive/images --dry-run", "bale gc ./archive --grace 0s")
@click.command("gc")
@click.argument("store_url", metavar="STORE")
@endpoint_option()
@store_options
@option("--dry-run", is_flag=True, help="List what would be removed, with sizes; remove nothing.")
@option(
    "--grace",
    "--older-than",
    "older_than",
    type=DURATION,
    default="24h",
    show_default=True,
    help="Only remove blobs, links, uploads and staging copies older than this (0s, 90m, "
    "24h). A concurrent archive may be writing links for a younger blob right now, so it is "
    "never removed.",
)
@option("--jobs", type=click.IntRange(min=1), default=4, help="Parallel reads and deletes.")
@option(
    "--retries",
    "--retry-times",
    "retries",
    type=click.IntRange(min=0),
    default=5,
    help="Retries for failed requests.",
)
@handles_errors
def gc_command(
    store_url: str,
    endpoint_url: str | None,
    dry_run: bool,
    older_than: float,
    jobs: int,
    retries: int,
) -> None:
    """Remove blobs no tag or record reaches, stale multipart uploads and staging copies.

    Marks from every tag, every record and every link younger than --grace; never removes
    anything younger than --grace (a concurrent archive may be linking it right now), and reads
    the links and records written since its plan again just before each batch of deletes.
    """
    from datetime import timedelta

    from pipeline.cli.runtime import open_bucket
    from pipeline.ops.gc import collect_garbage
    from pipeline.units import format_size

    bucket = open_bucket(store_url, endpoint_url, retries)
    report = collect_garbage(
        bucket, older_than=timedelta(seconds=older_than), dry_run=dry_run, jobs=jobs
    )
    verb = "would remove" if dry_run else "removed"
    kept = {r.key for r in report.retained}
    for blob in (b for b in report.blobs if b.key not in kept):
        echo_result(
            f"{verb} blob {blob.digest} {format_size(blob.size)} {blob.key}",
            event="gc",
            action=verb,
            kind="blob",
            key=blob.key,
            digest=blob.digest,
            bytes=blob.size,
        )
    for key in (k for k in report.links if k not in kept):
        echo_result(f"{verb} link {key}", event="gc", action=verb, kind="link", key=key)
    for staged in (o for o in report.staging if o.key not in kept):
        echo_result(
            f"{verb} staging copy {staged.key} {format_size(staged.size)}",
            event="gc",
            action=verb,
            kind="staging",
            key=staged.key,
            bytes=staged.size,
        )
    for held in report.retained:
        until = held.until.isoformat() if held.until else None
        why = "under legal hold" if held.legal_hold else f"until {until or 'unknown'}"
        echo_result(
            f"retained {held.key} {format_size(held.size)} ({why})",
            event="gc",
            action="retained",
            key=held.key,
            bytes=held.size,
            retain_until=until,
            legal_hold=held.legal_hold,
        )
    for upload in report.uploads:
        when = upload.initiated.isoformat() if upload.initiated else "unknown time"
        verb_upload = "would abort" if dry_run else "aborted"
        echo_result(
            f"{verb_upload} upload {upload.key} {upload.upload_id} (started {when})",
            event="gc",
            action=verb_upload,
            kind="upload",
            key=upload.key,
            upload_id=upload.upload_id,
            started=when,
        )
    for link in report.dangling:
        echo_result(
            f"dangling link {link.key} -> {link.digest} (blob missing)",
            event="gc",
            action="dangling",
            kind="link",
            key=link.key,
            digest=link.digest,
        )
    echo_result(report.summary(), err=True, event="summary", message=report.summary())

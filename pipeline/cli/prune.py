"""`bale prune`: delete archived images no retention rule keeps (a dry run unless --apply)."""

from __future__ import annotations

import sys

import click

from pipeline.cli.options import endpoint_option, examples, option, store_options
from pipeline.cli.output import echo_result, handles_errors


@examples(
    "bale prune s3://my-archive/images --keep-last 10 --exclude-tags latest",
    "bale prune s3://my-archive/images --keep-semver '>=2.0' --keep-within 90d --json",
    "bale prune ./archive --spec images.yaml --apply",
)
@click.command("prune")
@click.argument("store_url", metavar="STORE")
@endpoint_option()
@store_options
@option("--keep-last", type=click.IntRange(min=1), help="Keep each repository's N newest images.")
@option("--keep-tags", metavar="REGEX", help="Keep tags matching this RE2 regex (unanchored).")
@option("--keep-semver", metavar="RANGE", help="Keep tags inside this semver range (>=1.2, ~2).")
@option("--keep-within", metavar="DURATION", help="Keep what was archived within this (90d).")
@option("--exclude-tags", metavar="TAG,...", help="Tags always kept (exceptions, not a rule).")
@option(
    "--spec",
    "spec_path",
    metavar="FILE",
    help="Spec file whose `retention:` blocks give rules per registry or repository; the "
    "command line's rules apply to the repositories it gives none.",
)
@option("--json", "as_json", is_flag=True, help="The plan as one JSON object (docs/lifecycle.md).")
@option("--apply", is_flag=True, help="Delete what the plan says goes (default: dry run).")
@option(
    "--allow-early-delete",
    is_flag=True,
    help="Let --apply delete objects inside their class's minimum storage duration (billed).",
)
@option("--jobs", type=click.IntRange(min=1), default=4, help="Parallel reads and deletes.")
@option("--retries", type=click.IntRange(min=0), default=5, help="Retries for failed requests.")
@handles_errors
def prune_command(
    store_url: str,
    endpoint_url: str | None,
    keep_last: int | None,
    keep_tags: str | None,
    keep_semver: str | None,
    keep_within: str | None,
    exclude_tags: str | None,
    spec_path: str | None,
    as_json: bool,
    apply: bool,
    allow_early_delete: bool,
    jobs: int,
    retries: int,
) -> None:
    """Delete the archived images in STORE that no retention rule keeps.

    An image stays when any keep rule keeps it, when its tag is in --exclude-tags, or when it is
    pinned (bale pin). A rule set without a keep rule is refused. Deleting an image removes its
    record, tar and tag links; its blobs go with the next `bale gc` (the plan says how many
    bytes that frees: blobs a kept image shares free nothing).
    """
    import json

    from pipeline.batch.spec import load_spec, retention_scopes
    from pipeline.cli.runtime import open_bucket
    from pipeline.errors import UsageError
    from pipeline.ops.prune import apply_prune, plan_prune, rules_from
    from pipeline.retention import Retention

    spec = load_spec(spec_path) if spec_path else None
    given = (keep_last, keep_tags, keep_semver, keep_within, exclude_tags)
    default = None
    if any(v is not None for v in given):
        default = Retention.build(
            keep_last=keep_last,
            keep_tags=keep_tags,
            keep_semver=keep_semver,
            keep_within=keep_within,
            exclude_tags=tuple(t.strip() for t in (exclude_tags or "").split(",")),
        )
    elif spec is None or not any(r.retention or r.repository_retention for r in spec.registries):
        raise UsageError(
            "no retention rules: give --keep-last, --keep-tags, --keep-semver or --keep-within, "
            "or a --spec file with a retention: block"
        )
    bucket = open_bucket(store_url, endpoint_url, retries)
    plan = plan_prune(
        bucket.archived(jobs=max(jobs, 8)),
        rules_from(retention_scopes(spec) if spec else [], default),
    )
    if apply:
        apply_prune(bucket, plan, allow_early_delete=allow_early_delete, jobs=jobs)
    if as_json:
        click.echo(json.dumps(plan.to_json(bucket.url), indent=2))
    else:
        _table(plan)
    for key, why in plan.skipped:
        echo_result(f"left {key}: {why}", err=True, event="skipped", key=key, reason=why)
    echo_result(_summary(plan), err=True, event="summary", message=_summary(plan))


def _table(plan: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from pipeline.archive.record import format_time
    from pipeline.ops.prune import PrunePlan
    from pipeline.units import format_size

    assert isinstance(plan, PrunePlan)
    table = Table(box=None, pad_edge=False)
    for column in ("ACTION", "IMAGE", "DIGEST", "ARCHIVED", "TAR", "KEPT BY / NOTE"):
        # The image and the reasons may wrap in a narrow terminal; the rest never shrinks.
        wraps = column in ("IMAGE", "KEPT BY / NOTE")
        table.add_column(
            column, no_wrap=not wraps, overflow="fold", min_width=None if wraps else len(column)
        )
    for d in plan.decisions:
        record = d.image.record
        note = ", ".join(
            [
                *d.kept_by,
                *(
                    f"early delete: {e.key} {e.storage_class} (minimum {e.minimum_days} d, "
                    f"{e.remaining_days:.0f} d left, {format_size(e.bytes)})"
                    for e in d.early
                ),
            ]
        )
        action = "keep" if d.kept_by else ("deleted" if plan.applied else "delete")
        table.add_row(
            action,
            record.source
            if d.image.key == record.record_key
            else f"{record.source} ({d.image.key})",
            record.digest[:19],
            format_time(record.archived_at),
            format_size(d.image.tar.size) if d.image.tar else "-",
            note,
        )
    Console(width=None if sys.stdout.isatty() else 400, soft_wrap=True).print(table)


def _summary(plan: object) -> str:
    from pipeline.ops.prune import PrunePlan
    from pipeline.units import format_size

    assert isinstance(plan, PrunePlan)
    gone = len(plan.deleted) - len(plan.skipped)
    verb = "deleted" if plan.applied else "to delete"
    text = (
        f"prune: {gone} image(s) {verb} (tars {format_size(plan.tar_bytes)}), "
        f"{len(plan.kept)} kept; bytes gc will free: {format_size(plan.gc_bytes)}"
    )
    if plan.early:
        text += f"; {len(plan.early)} object(s) inside their minimum storage duration"
    if not plan.applied:
        text += "; dry run, nothing deleted (--apply deletes)"
    return text

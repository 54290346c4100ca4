"""`bale archive IMAGE...` and `bale run SPEC.yaml`: images into a store, one run each."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import click

from pipeline.cli.options import (
    RegistryFlags,
    ReportFlags,
    SkopeoCommand,
    TransferFlags,
    endpoint_option,
    examples,
    fold,
    option,
    platform_options,
    referrers_option,
    report_options,
    src_registry_options,
    store_options,
    transfer_options,
)
from pipeline.cli.output import finish_run, handles_errors

if TYPE_CHECKING:
    from pipeline.batch.plan import RunPlan
    from pipeline.copy.session import RegistryOptions, Session
    from pipeline.oci import Platform
    from pipeline.ops.archive import SourceFinder

PLATFORM_HELP = (
    "The one platform of an index to archive. Without it, an index is stored whole (every "
    "platform, and the index itself under its own digest) and the tar holds linux/amd64, else "
    "the index's first image. With it, only that platform is stored, under its own manifest "
    "digest (the index is not kept), and the tar holds it."
)
ALL_PLATFORMS_HELP = "Store the whole index and put every platform (and the index) in the tar."


class ArchiveFlags(NamedTuple):
    """What `archive` and `run` both take once their images are known: where to, how, reports."""

    store_url: str
    endpoint_url: str | None
    dry_run: bool
    force: bool
    fail_fast: bool
    platform: Platform | None
    all_platforms: bool
    src_registry: RegistryFlags
    referrers: bool
    transfer: TransferFlags
    reports: ReportFlags


archive_options = fold(
    "flags",
    ArchiveFlags,
    option(
        "--to",
        "store_url",
        required=True,
        metavar="STORE",
        help="s3://, oss://, file:// or a path.",
    ),
    endpoint_option(),
    store_options,
    option(
        "--dry-run",
        is_flag=True,
        help="Show what would move (manifests and HEADs only); write nothing.",
    ),
    option("--force", is_flag=True, help="Rewrite the tar and record even if already archived."),
    option(
        "--fail-fast/--keep-going",
        default=False,
        help="Stop at the first failure, or go on with the other images.",
    ),
    platform_options(PLATFORM_HELP, ALL_PLATFORMS_HELP),
    src_registry_options,
    referrers_option,
    transfer_options,
    report_options,
)


def archive_images(
    flags: ArchiveFlags,
    plan_for: Callable[[Session, RegistryOptions], RunPlan],
    *,
    what: str = "",
    secrets: list[str] | None = None,
    sources: SourceFinder | None = None,
) -> None:
    """Archive (or plan) the images `plan_for(session, registry)` names, then report and exit.

    The plan is made inside the session because a spec's expansion lists tags through it;
    `secrets` are the caller's own (a spec's passwords), scrubbed with --src-creds' from reports;
    `sources` reads the images that do not come from their registry (a tar's).
    """
    from pipeline.batch.run import run_plan
    from pipeline.cli.runtime import open_bucket, open_display, open_session
    from pipeline.ops.archive import ArchiveOptions, Archiver
    from pipeline.ops.dryrun import Planner

    registry = flags.src_registry.options("src")
    flags.reports.check()
    retries, dry_run = flags.transfer.retries, flags.dry_run
    bucket = open_bucket(
        flags.store_url, flags.endpoint_url, retries, existing=False, write=not dry_run
    )
    options = ArchiveOptions(
        platform=flags.platform,
        all_platforms=flags.all_platforms,
        force=flags.force,
        referrers=flags.referrers,
    )
    credentials = registry.credentials
    secrets = (secrets or []) + ([credentials.password] if credentials else [])
    with open_session(flags.transfer) as session:
        plan = plan_for(session, registry)
        with open_display(secrets) as display:
            display.on_run_start(len(plan.images) + len(plan.failures), what=what, dry_run=dry_run)
            for failure in plan.failures:
                display.on_image_done(failure)
            worker = (Planner if dry_run else Archiver)(bucket, session, display, sources=sources)
            report = run_plan(plan, worker, options, fail_fast=flags.fail_fast)
            display.on_run_done(report)
    finish_run(report, flags.reports, secrets, display.summary)


@examples(
    "bale archive docker.io/library/alpine:3.20 --to s3://my-archive/images",
    "bale archive --from-file images.txt --to oss://my-archive/images --jobs 8 --report r.json",
    "bale archive docker-archive:s3://drop/app.tar --to s3://my-archive/images",
)
@click.command("archive", cls=SkopeoCommand)
@click.argument("images", nargs=-1)
@option("--from-file", metavar="LIST", help="Images one per line (# comments, - for stdin).")
@option(
    "--name",
    metavar="REPO:TAG",
    help="The name to archive a tar's one image under (needed when the tar names none).",
)
@option(
    "--from",
    "from_store",
    metavar="STORE",
    help="Read IMAGE... as archived in this bale store, not from their registries.",
)
@archive_options
@handles_errors
def archive_command(
    images: tuple[str, ...],
    from_file: str | None,
    name: str | None,
    from_store: str | None,
    flags: ArchiveFlags,
) -> None:
    """Archive IMAGE... into STORE: blobs by digest, a per-image tar, a record.

    IMAGE is a registry reference, or docker-archive:LOC[:REF] / oci-archive:LOC[:REF] (LOC a
    path, s3:// or oss://): each image of the tar is archived under its RepoTags / ref.name.
    With --from STORE, the registry references are read from that bale store instead.
    """
    from pipeline.batch.imagelist import read_image_list
    from pipeline.batch.plan import RunPlan
    from pipeline.cli.runtime import open_bucket
    from pipeline.errors import UsageError
    from pipeline.ops.archive import NamedSource, bucket_sources, tar_sources
    from pipeline.refs import Reference
    from pipeline.transfer.retry import RetryPolicy
    from pipeline.transports import parse_transport
    from pipeline.transports.names import ArchiveTransport

    tars = [i for i in images if i.startswith(("docker-archive:", "oci-archive:"))]
    refs = [Reference.parse(i) for i in images if i not in tars]
    if from_file:
        refs += read_image_list(from_file)
    if name is not None and (len(tars) != 1 or refs):
        raise UsageError("--name names the image of one docker-archive: or oci-archive: tar")
    found: dict[Reference, NamedSource] = {}
    for text in tars:  # read (headers only) before the store is opened: bad input writes nothing
        transport = parse_transport(text)
        assert isinstance(transport, ArchiveTransport)
        found |= tar_sources(
            transport,
            Reference.parse(name) if name is not None else None,
            endpoint_url=flags.endpoint_url,
            retry=RetryPolicy(retries=flags.transfer.retries),
        )
    stored: SourceFinder | None = None
    if from_store is not None:
        if from_store == flags.store_url:
            raise UsageError("--from and --to name the same store")
        retries = flags.transfer.retries
        stored = bucket_sources(open_bucket(from_store, flags.endpoint_url, retries))
    refs += list(found)
    if not refs:
        raise UsageError("no images given (IMAGE... or --from-file)")

    def sources(ref: Reference) -> NamedSource | None:
        return found.get(ref) or (stored(ref) if stored is not None else None)

    archive_images(
        flags,
        lambda _session, registry: RunPlan(images=[(r, registry) for r in refs]),
        sources=sources,
    )


@examples(
    "bale run manifests/example.yaml --to s3://my-archive/images --report report.json",
    "bale run manifests/example.yaml --to s3://my-archive/images --dry-run",
    "bale run images.yaml --to oss://my-archive/images --shard 4   # in an indexed K8s Job",
)
@click.command("run", cls=SkopeoCommand)
@click.argument("spec_path", metavar="SPEC.yaml")
@option(
    "--shard",
    metavar="I/N",
    help="Only slice I of N (0-based); N alone takes I from $JOB_COMPLETION_INDEX.",
)
@archive_options
@handles_errors
def run_command(spec_path: str, shard: str | None, flags: ArchiveFlags) -> None:
    """Archive every image SPEC.yaml selects (skopeo sync's YAML, see manifests/) into STORE."""
    from pipeline.batch.plan import check_cert_dirs, expand_spec, spec_secrets
    from pipeline.batch.shard import parse_shard
    from pipeline.batch.spec import load_spec

    spec = load_spec(spec_path)
    check_cert_dirs(spec)  # bad input, before the store is opened (and a local one made)
    where = parse_shard(shard) if shard else None
    archive_images(
        flags,
        lambda session, defaults: expand_spec(spec, session, defaults, shard=where),
        what=spec_path if where is None else f"{spec_path} shard {where[0]}/{where[1]}",
        secrets=spec_secrets(spec),
    )

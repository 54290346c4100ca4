"""The `bale` command line: parse, call the library, render. No logic lives here.

Every option also reads `BALE_<OPTION>` from the environment (`--limit-rate` ← `BALE_LIMIT_RATE`);
`option()` below wires that, so commands declare options the ordinary click way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click

from pipeline import __version__
from pipeline.errors import AuthError, BaleError

F = TypeVar("F", bound=Callable[..., Any])


def option(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    """`click.option` with `envvar=BALE_<LONG_NAME>` filled in."""
    if "envvar" not in kwargs:
        longs = [d for d in decls if d.startswith("--")]
        if longs:
            name = longs[0][2:].split("/")[0].replace("-", "_").upper()
            kwargs["envvar"] = f"BALE_{name}"
    kwargs.setdefault("show_envvar", True)
    kwargs.setdefault("show_default", True)
    return click.option(*decls, **kwargs)


def _store_setting(variable: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A store option's callback: the flag sets the variable boto3 and open_store read, so the
    flag and the variable are one setting (the flag wins)."""

    def remember(_ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            import os

            os.environ[variable] = str(value)

    return remember


def store_options(func: F) -> F:
    """--s3-addressing, --region, --store-ca-bundle: how to reach an s3:// store."""
    addressing = option(
        "--s3-addressing",
        type=click.Choice(["path", "virtual", "auto"]),
        expose_value=False,
        callback=_store_setting("AWS_S3_ADDRESSING_STYLE"),
        help="S3 bucket addressing (AWS_S3_ADDRESSING_STYLE; default: path with an endpoint).",
    )
    region = option(
        "--region",
        metavar="REGION",
        expose_value=False,
        callback=_store_setting("AWS_REGION"),
        help="S3 region (AWS_REGION, AWS_DEFAULT_REGION or the profile's otherwise).",
    )
    ca_bundle = option(
        "--store-ca-bundle",
        metavar="PEM",
        expose_value=False,
        callback=_store_setting("AWS_CA_BUNDLE"),
        help="CA certificates to trust for an https store endpoint (AWS_CA_BUNDLE).",
    )
    return addressing(region(ca_bundle(func)))


_log_format = ["text"]
"""`main`'s --log-format, for lines written from worker threads (click's context is per thread)."""


def examples(*lines: str) -> Callable[[click.Command], click.Command]:
    """The `Examples:` epilog of a command's --help, one command line per argument."""

    def apply(command: click.Command) -> click.Command:
        # \b keeps click from re-flowing the lines into one paragraph.
        command.epilog = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
        return command

    return apply


def _json_log() -> bool:
    """`--log-format json` was given: every line bale writes is then one JSON object."""
    return _log_format[0] == "json"


def echo_result(text: str, *, err: bool = False, event: str = "result", **fields: Any) -> None:
    """A result line (`restored …`, `copied …`): `text`, or with --log-format json the fields."""
    if _json_log():
        from pipeline.display import json_line

        text = json_line(event, **fields)
    click.echo(text, err=err)


def fail(exc: BaleError, about: str = "") -> None:
    """Report a user-facing error as one line and exit with its code; `about` names the
    image or transfer it concerns when the message alone may not. After Ctrl-C or SIGTERM,
    whatever error the cut work became, the line says that the signal ended it (130 or 143)."""
    from pipeline.transfer.cancel import RUN

    if RUN.cancelled:
        text = str(RUN.error())
        echo_result(
            f"bale: {text}", err=True, event="interrupted", message=text, exit_code=RUN.exit_code
        )
        sys.exit(RUN.exit_code)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if about:
        message = f"{about}: {message}"
    echo_result(
        f"bale: error: {message}", err=True, event="error", message=message, exit_code=exc.exit_code
    )
    sys.exit(exc.exit_code)


def handles_errors(func: F) -> F:
    """Turn `BaleError` into one line on stderr and the contract's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BaleError as exc:
            fail(exc)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _naming(about: str, kind: type[BaleError] = BaleError) -> Iterator[None]:
    """A failure of `kind` inside (not bad input: that names its argument) is reported as
    `about: …`, so the line names the image the user gave rather than a blob of it."""
    try:
        yield
    except kind as exc:
        if exc.exit_code == 2:
            raise
        fail(exc, about)


class BaleGroup(click.Group):
    """Maps click's usage errors to exit 2 (click already does) and ours to their codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaleError as exc:
            fail(exc)
        except click.ClickException as exc:
            if not _json_log():
                raise
            # A usage error after --log-format json: the same one line, as JSON.
            message = exc.format_message()
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message = f"{exc.ctx.command_path}: {message}"
            echo_result(message, err=True, event="error", message=message, exit_code=exc.exit_code)
            sys.exit(exc.exit_code)


THIRD_PARTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "oss2", "requests")


@examples(
    "bale archive docker.io/library/alpine:3.20 --to s3://my-archive/images",
    "bale ls s3://my-archive/images",
    "bale restore docker.io/library/alpine:3.20 docker://registry.example.com/alpine:3.20 "
    "--from s3://my-archive/images",
)
@click.group(
    cls=BaleGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="bale")
@option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@option("-q", "--quiet", is_flag=True, help="Only errors.")
@option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="Log lines as text or one JSON object per event.",
)
def main(verbose: int, quiet: bool, log_format: str) -> None:
    """Archive container images into object storage (OSS, S3, local) and bring them back."""
    from pipeline.malloc import tune

    tune()  # keeps resident memory flat over long transfers (see pipeline/malloc.py)
    _log_format[0] = log_format
    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if log_format == "json":
        from pipeline.display import JsonLogFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLogFormatter())
    # Third-party HTTP stacks log signed headers, session tokens and presigned URL queries at
    # DEBUG; -v/-vv is for bale's own lines, so they never go below WARNING.
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


# ---- inspect, list-tags ------------------------------------------------------------------------


class SkopeoCommand(click.Command):
    """Accepts Go-style `--flag=false` for boolean flags (`--tls-verify=false`), as skopeo does.

    click's flags take no value; pflag's booleans take an optional `=value`. The rewrite turns
    `--x=false` into `--no-x` (or drops it for a flag without a negative form).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags: dict[str, tuple[str, str | None]] = {}
        for param in self.params:
            if isinstance(param, click.Option) and param.is_flag and param.is_bool_flag:
                off = param.secondary_opts[0] if param.secondary_opts else None
                for name in param.opts:
                    flags[name] = (name, off)
        rewritten: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":
                rewritten.extend(args[i:])
                break
            name, eq, value = arg.partition("=")
            if eq and name in flags:
                try:
                    on = click.BOOL.convert(value, None, ctx)
                except click.BadParameter:
                    raise click.BadParameter(
                        f"{value!r} is not a boolean", ctx=ctx, param_hint=f"'{name}'"
                    ) from None
                yes, no = flags[name]
                if on:
                    rewritten.append(yes)
                elif no is not None:
                    rewritten.append(no)
                continue
            rewritten.append(arg)
        return super().parse_args(ctx, rewritten)


PLATFORM_METAVAR = "OS/ARCH[/VARIANT]"


def _platform(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    from pipeline.oci import Platform

    if value is None:
        return None
    try:
        return Platform.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def cert_dir_option(prefix: str) -> Callable[[F], F]:
    """skopeo's --cert-dir (--src-cert-dir, --dest-cert-dir): the registry's CAs and client
    certificate, in place of the certs.d directories (see pipeline/registry/tls.py)."""
    return option(
        f"--{prefix}cert-dir",
        metavar="DIR",
        type=click.Path(exists=True, file_okay=False),
        help="*.crt CA certificates (added to the system's) and a *.cert/*.key client "
        "certificate for the registry (default: certs.d/HOST[:PORT]/ under "
        "~/.config/containers, /etc/containers, /etc/docker).",
    )


def _positive_seconds(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    if value <= 0:
        raise click.BadParameter("must be more than 0 seconds")
    return value


def timeout_options(func: F) -> F:
    """skopeo's --command-timeout (the whole command) and --read-timeout (one stalled request)."""
    from pipeline.units import DURATION

    @functools.wraps(func)
    def wrapper(*args: Any, command_timeout: float, **kwargs: Any) -> Any:
        from pipeline.deadline import command_deadline

        with command_deadline(command_timeout):
            return func(*args, **kwargs)

    options = [
        option(
            "--command-timeout",
            type=DURATION,
            default="0",
            help="End the whole command after this long (90s, 10m; 0: no limit).",
        ),
        option(
            "--read-timeout",
            type=DURATION,
            default="15s",
            show_default=True,
            callback=_positive_seconds,
            help="A registry that sends nothing for this long is stalled; a stalled request "
            "is retried once.",
        ),
    ]
    for decorator in reversed(options):
        wrapper = decorator(wrapper)
    return wrapper  # type: ignore[return-value]


def registry_options(func: F) -> F:
    """skopeo's flags for reaching one registry: --creds, --authfile, --tls-verify, retries."""
    for decorator in reversed(
        [
            option("--creds", metavar="USER:PASS", help="Credentials for the registry."),
            option("--authfile", metavar="PATH", help="auth.json / config.json to read."),
            option(
                "--tls-verify/--no-tls-verify",
                default=True,
                help="Verify TLS; --tls-verify=false also allows plain HTTP.",
            ),
            cert_dir_option(""),
            option(
                "--retries",
                "--retry-times",
                "retries",
                type=click.IntRange(min=0),
                default=None,
                help="Retries for failed requests (default 5).",
            ),
            timeout_options,
        ]
    ):
        func = decorator(func)
    return func


def _registry_client(
    registry: str,
    creds: str | None,
    authfile: str | None,
    tls_verify: bool,
    retries: int | None,
    cert_dir: str | None = None,
    read_timeout: float | None = None,
) -> Any:
    from pipeline.registry.client import READ_TIMEOUT, RegistryClient
    from pipeline.registry.credentials import parse_creds
    from pipeline.transfer.retry import RetryPolicy

    return RegistryClient(
        registry,
        credentials=parse_creds(creds) if creds else None,
        authfile=authfile,
        tls_verify=tls_verify,
        retry=RetryPolicy() if retries is None else RetryPolicy(retries=retries),
        cert_dir=cert_dir,
        read_timeout=read_timeout or READ_TIMEOUT,
    )


@examples(
    "bale inspect docker://registry.example.com/team/app:1.0",
    "bale inspect --config --platform linux/arm64 docker://registry.example.com/team/app:1.0",
    "bale inspect --from s3://my-archive/images registry.example.com/team/app:1.0",
)
@main.command("inspect", cls=SkopeoCommand)
@click.argument("image")
@option(
    "--raw", is_flag=True, help="Print the manifest exactly as served (with --config: the config)."
)
@option("--config", "show_config", is_flag=True, help="Print the image's config.")
@option("-n", "--no-tags", is_flag=True, help="Do not list the repository's tags.")
@option(
    "--platform",
    callback=_platform,
    metavar=PLATFORM_METAVAR,
    help="The platform of an index to describe. Without it, an index is described by "
    "its image for this machine (linux/<this architecture>), as skopeo does; --raw prints the "
    "index itself either way.",
)
@option("--from", "from_store", metavar="STORE", help="Inspect the image as archived in STORE.")
@option("--endpoint-url", metavar="URL", help="S3-compatible or OSS endpoint (with --from).")
@store_options
@registry_options
@handles_errors
def inspect_command(
    image: str,
    raw: bool,
    show_config: bool,
    no_tags: bool,
    platform: Any,
    from_store: str | None,
    endpoint_url: str | None,
    creds: str | None,
    authfile: str | None,
    tls_verify: bool,
    cert_dir: str | None,
    retries: int | None,
    read_timeout: float,
) -> None:
    """skopeo inspect's JSON for IMAGE (docker://host/repo:tag, or a bare reference).

    With --from STORE the image is read from the archive (its tags are the archived ones).
    """
    from contextlib import nullcontext

    from pipeline.ops import inspect as ops
    from pipeline.refs import Reference
    from pipeline.registry.source import RegistrySource

    ref = Reference.parse(image)
    if from_store:
        bucket = _open_bucket(from_store, endpoint_url)
        context: Any = nullcontext()
        source: Any = bucket.image(ref)
        tags = lambda: bucket.tags(ref.store_repo)  # noqa: E731
    else:
        context = client = _registry_client(
            ref.registry, creds, authfile, tls_verify, retries, cert_dir, read_timeout
        )
        source = RegistrySource(client, ref)
        tags = lambda: client.list_tags(ref.repository)  # noqa: E731
    with context, _naming(image, AuthError):
        if raw and not show_config:
            out: bytes | str = ops.raw_manifest(source)
        elif raw:
            out = ops.raw_config(source, platform=platform)
        elif show_config:
            out = ops.render_json(ops.image_config(source, platform=platform))
        else:
            info = ops.inspect_source(
                source, name=ref.name, tags=None if no_tags else tags, platform=platform
            )
            out = ops.render_json(info)
    stream = sys.stdout.buffer
    stream.write(out if isinstance(out, bytes) else out.encode())
    stream.flush()


@examples(
    "bale list-tags docker://registry.example.com/team/app",
    "bale list-tags --creds alice:secret docker://registry.example.com/team/app",
)
@main.command("list-tags", cls=SkopeoCommand)
@click.argument("repository")
@registry_options
@handles_errors
def list_tags_command(
    repository: str,
    creds: str | None,
    authfile: str | None,
    tls_verify: bool,
    cert_dir: str | None,
    retries: int | None,
    read_timeout: float,
) -> None:
    """skopeo list-tags' JSON for REPOSITORY (docker://host/repo, no tag)."""
    from pipeline.ops import inspect as ops
    from pipeline.refs import parse_repository

    ref = parse_repository(repository)
    client = _registry_client(
        ref.registry, creds, authfile, tls_verify, retries, cert_dir, read_timeout
    )
    with client, _naming(repository, AuthError):
        out = ops.render_json(ops.tag_list(ref, client))
    sys.stdout.write(out)
    sys.stdout.flush()


# ---- shared option groups ------------------------------------------------------------------


def _apply(func: F, decorators: list[Callable[[F], F]]) -> F:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def transfer_options(func: F) -> F:
    """--jobs, --limit-rate, --retries: how hard one process may push the network."""
    from pipeline.units import SIZE

    return _apply(
        func,
        [
            option(
                "--jobs", type=click.IntRange(min=1), default=4, help="Parallel blob transfers."
            ),
            option(
                "--limit-rate",
                type=SIZE,
                default=None,
                help="Total bytes/s across all transfers (50M, 1.5G).",
            ),
            option(
                "--retries",
                "--retry-times",
                "retries",
                type=click.IntRange(min=0),
                default=5,
                help="Retries for failed requests.",
            ),
        ],
    )


def src_registry_options(func: F) -> F:
    """skopeo's spelling for the source registry: --src-creds, --authfile, --src-tls-verify."""
    return _apply(
        func,
        [
            option("--src-creds", metavar="USER:PASS", help="Credentials for the source registry."),
            option("--authfile", metavar="PATH", help="auth.json / config.json to read."),
            option(
                "--src-tls-verify/--no-src-tls-verify",
                default=True,
                help="Verify TLS; --src-tls-verify=false also allows plain HTTP.",
            ),
            cert_dir_option("src-"),
        ],
    )


ARCHIVE_PLATFORM_HELP = (
    "The one platform of an index to archive. Without it, an index is stored whole (every "
    "platform, and the index itself under its own digest) and the tar holds linux/amd64, else "
    "the index's first image. With it, only that platform is stored, under its own manifest "
    "digest (the index is not kept), and the tar holds it."
)
ARCHIVE_ALL_PLATFORMS_HELP = (
    "Store the whole index and put every platform (and the index) in the tar."
)
COPY_PLATFORM_HELP = (
    "The platform to copy from an index. Without it, to docker:// an index is copied whole "
    "(every platform, digest kept), and to a tar only linux/amd64 (else the first image) goes. "
    "With it, only that platform is copied, under its own manifest digest (no index)."
)
COPY_ALL_PLATFORMS_HELP = "Every platform and the index itself, also into a tar."


def platform_options(platform_help: str, all_help: str) -> Callable[[F], F]:
    """--platform and --all-platforms, with help that says what this command keeps."""

    def apply(func: F) -> F:
        return _apply(
            func,
            [
                option(
                    "--platform", callback=_platform, metavar=PLATFORM_METAVAR, help=platform_help
                ),
                option("--all-platforms", is_flag=True, help=all_help),
            ],
        )

    return apply


def report_options(func: F) -> F:
    return _apply(
        func,
        [
            option("--report", "report_path", metavar="FILE", help="Write a JSON report."),
            option("--junit", "junit_path", metavar="FILE", help="Write a JUnit XML report."),
        ],
    )


def referrers_option(func: F) -> F:
    """--referrers/--no-referrers: signatures and attestations travel with their image."""
    return option(
        "--referrers/--no-referrers",
        default=True,
        help="Bring signatures and attestations (cosign tags, OCI referrers) along.",
    )(func)


def referrer_options(func: F) -> F:
    """--referrers/--no-referrers and --dest-compress-format/--dest-compress-level."""
    return _apply(
        func,
        [
            referrers_option,
            option(
                "--dest-compress-format",
                type=click.Choice(["zstd"]),
                default=None,
                help="Recompress layers (gzip and plain tar) to zstd: new manifest digests.",
            ),
            option(
                "--dest-compress-level",
                type=click.IntRange(1, 22),
                default=None,
                help="zstd level for --dest-compress-format (default 3).",
            ),
        ],
    )


def _compress(fmt: str | None, level: int | None) -> Any:
    from pipeline.errors import UsageError
    from pipeline.transfer.recompress import DEFAULT_LEVEL, CompressOptions

    if fmt is None:
        if level is not None:
            raise UsageError("--dest-compress-level needs --dest-compress-format")
        return None
    return CompressOptions(fmt, DEFAULT_LEVEL if level is None else level)


@contextlib.contextmanager
def _session(jobs: int, limit_rate: int | None, retries: int) -> Iterator[Any]:
    """The command's session; --read-timeout comes from the command's own options. While it
    is open, Ctrl-C and SIGTERM stop the work cleanly (the first signal cancels, see
    `pipeline/transfer/cancel.py`; the second exits at once)."""
    from pipeline.ops.session import Session, TransferOptions
    from pipeline.registry.client import READ_TIMEOUT
    from pipeline.transfer.cancel import on_signals
    from pipeline.transfer.retry import RetryPolicy

    read_timeout = click.get_current_context().params.get("read_timeout") or READ_TIMEOUT
    options = TransferOptions(
        jobs=jobs,
        retry=RetryPolicy(retries=retries),
        limit_rate=limit_rate,
        read_timeout=read_timeout,
    )
    with on_signals(), Session(options) as session:
        yield session


def _open_bucket(
    url: str,
    endpoint_url: str | None,
    retries: int = 5,
    *,
    existing: bool = True,
    write: bool = False,
) -> Any:
    """The archive at `url`, checked once for reading (or `write`) before any image; with
    `existing`, a local directory that is not there is bad input (a typo must not read as an
    empty, clean archive)."""
    from pathlib import Path

    from pipeline.archive.bucket import ArchiveBucket
    from pipeline.errors import UsageError
    from pipeline.store.url import open_store
    from pipeline.transfer.retry import RetryPolicy

    retry = RetryPolicy(retries=retries)
    access = "write" if write else "read"
    store = open_store(url, endpoint_url=endpoint_url, retry=retry, check=access)
    root = getattr(store, "root", None)
    if existing and root is not None and not Path(root).is_dir():
        raise UsageError(f"no archive at {url}: {root} is not a directory")
    return ArchiveBucket(store)


def _write_reports(
    report: Any, report_path: str | None, junit_path: str | None, secrets: list[str]
) -> None:
    from pathlib import Path

    if report_path:
        Path(report_path).write_text(report.to_json(secrets=secrets))
    if junit_path:
        Path(junit_path).write_text(report.to_junit(secrets=secrets))


def _echo_failures(report: Any) -> None:
    """`failed    SOURCE: ERROR` on stderr for each failed image (restore, sync)."""
    for failure in report.failures:
        echo_result(
            f"failed    {failure.source}: {failure.error}",
            err=True,
            status="failed",
            image=failure.source,
            error=failure.error,
        )


def _exit_after(report: Any, *written: str | None) -> NoReturn:
    """The run's exit code; after Ctrl-C or SIGTERM, one line saying so, and 130 or 143."""
    from pipeline.transfer.cancel import RUN

    if not RUN.cancelled:
        sys.exit(report.exit_code())
    totals = report.totals()
    counts = [f"{totals['images'] - totals['failed'] - totals['interrupted']} done"]
    if totals["failed"]:
        counts.append(f"{totals['failed']} failed")
    counts.append(f"{totals['interrupted']} interrupted")
    paths = [p for p in written if p]
    where = f", report written to {' and '.join(paths)}" if paths else ""
    echo_result(
        f"bale: interrupted by {RUN.signal_name}; {', '.join(counts)}{where}",
        err=True,
        event="interrupted",
        signal=RUN.signal_name,
        **{k: totals[k] for k in ("images", "failed", "interrupted")},
        reports=paths,
        exit_code=RUN.exit_code,
    )
    sys.exit(report.exit_code())


def _display(secrets: list[str]) -> Any:
    """Progress bars, log lines or JSON events, from `main`'s --log-format / -q."""
    from pipeline.display import open_display

    root = click.get_current_context().find_root().params
    return open_display(
        root.get("log_format") or "text", quiet=bool(root.get("quiet")), secrets=secrets
    )


def _archive_plan(
    session: Any,
    bucket: Any,
    plan: Any,
    options: Any,
    dry_run: bool,
    fail_fast: bool,
    secrets: list[str],
    what: str = "",
) -> Any:
    """Archive (or with `dry_run`, plan) a `RunPlan`'s images, showing progress; the report."""
    from pipeline.batch.run import run_plan
    from pipeline.ops.archive import Archiver
    from pipeline.ops.dryrun import Planner

    with _display(secrets) as display:
        display.on_run_start(len(plan.images) + len(plan.failures), what=what, dry_run=dry_run)
        for failure in plan.failures:
            display.on_image_done(failure)
        worker = (Planner if dry_run else Archiver)(bucket, session, display)
        report = run_plan(plan, worker, options, fail_fast=fail_fast)
        display.on_run_done(report)
    display.summary(report)
    return report


# ---- archive, ls ---------------------------------------------------------------------------


def archive_options(func: F) -> F:
    """What `archive` and `run` both take once their images are known: where to, how, reports."""
    return _apply(
        func,
        [
            option(
                "--to",
                "store_url",
                required=True,
                metavar="STORE",
                help="s3://, oss://, file:// or a path.",
            ),
            option("--endpoint-url", metavar="URL", help="S3-compatible or OSS endpoint."),
            store_options,
            option(
                "--dry-run",
                is_flag=True,
                help="Show what would move (manifests and HEADs only); write nothing.",
            ),
            option(
                "--force", is_flag=True, help="Rewrite the tar and record even if already archived."
            ),
            option(
                "--fail-fast/--keep-going",
                default=False,
                help="Stop at the first failure, or go on with the other images.",
            ),
            platform_options(ARCHIVE_PLATFORM_HELP, ARCHIVE_ALL_PLATFORMS_HELP),
            src_registry_options,
            referrers_option,
            transfer_options,
            timeout_options,
            report_options,
        ],
    )


def _archive_images(
    plan_for: Callable[[Any, Any], Any],
    *,
    what: str = "",
    secrets: list[str] | None = None,
    store_url: str,
    endpoint_url: str | None,
    dry_run: bool,
    force: bool,
    fail_fast: bool,
    platform: Any,
    all_platforms: bool,
    src_creds: str | None,
    authfile: str | None,
    src_tls_verify: bool,
    src_cert_dir: str | None,
    referrers: bool,
    jobs: int,
    limit_rate: int | None,
    retries: int,
    read_timeout: float,
    report_path: str | None,
    junit_path: str | None,
) -> None:
    """Archive (or plan) the images `plan_for(session, registry)` names, then report and exit.

    The plan is made inside the session because a spec's expansion lists tags through it;
    `secrets` are the caller's own (a spec's passwords), scrubbed with --src-creds' from reports.
    """
    from pipeline.batch.run import check_output_paths
    from pipeline.ops.archive import ArchiveOptions

    registry = _registry_options(src_creds, authfile, src_tls_verify, src_cert_dir, "src")
    check_output_paths((report_path, junit_path))
    bucket = _open_bucket(store_url, endpoint_url, retries, existing=False, write=not dry_run)
    options = ArchiveOptions(
        platform=platform, all_platforms=all_platforms, force=force, referrers=referrers
    )
    credentials = registry.credentials
    secrets = (secrets or []) + ([credentials.password] if credentials else [])
    with _session(jobs, limit_rate, retries) as session:
        plan = plan_for(session, registry)
        report = _archive_plan(session, bucket, plan, options, dry_run, fail_fast, secrets, what)
    _write_reports(report, report_path, junit_path, secrets)
    _exit_after(report, report_path, junit_path)


@examples(
    "bale archive docker.io/library/alpine:3.20 --to s3://my-archive/images",
    "bale archive --from-file images.txt --to oss://my-archive/images --jobs 8 --report r.json",
    "bale archive registry.example.com/team/app:1.0 --platform linux/arm64 --to ./archive",
)
@main.command("archive", cls=SkopeoCommand)
@click.argument("images", nargs=-1)
@option("--from-file", metavar="LIST", help="Images one per line (# comments, - for stdin).")
@archive_options
@handles_errors
def archive_command(images: tuple[str, ...], from_file: str | None, **common: Any) -> None:
    """Archive IMAGE... into STORE: blobs by digest, a per-image tar, a record."""
    from pipeline.batch.imagelist import read_image_list
    from pipeline.batch.run import RunPlan
    from pipeline.errors import UsageError
    from pipeline.refs import Reference

    refs = [Reference.parse(i) for i in images]
    if from_file:
        refs += read_image_list(from_file)
    if not refs:
        raise UsageError("no images given (IMAGE... or --from-file)")
    _archive_images(
        lambda _session, registry: RunPlan(images=[(r, registry) for r in refs]), **common
    )


@examples(
    "bale run manifests/example.yaml --to s3://my-archive/images --report report.json",
    "bale run manifests/example.yaml --to s3://my-archive/images --dry-run",
    "bale run images.yaml --to oss://my-archive/images --shard 4   # in an indexed K8s Job",
)
@main.command("run", cls=SkopeoCommand)
@click.argument("spec_path", metavar="SPEC.yaml")
@option(
    "--shard",
    metavar="I/N",
    help="Only slice I of N (0-based); N alone takes I from $JOB_COMPLETION_INDEX.",
)
@archive_options
@handles_errors
def run_command(spec_path: str, shard: str | None, **common: Any) -> None:
    """Archive every image SPEC.yaml selects (skopeo sync's YAML, see manifests/) into STORE."""
    from pipeline.batch.run import expand_spec, spec_secrets
    from pipeline.batch.shard import parse_shard
    from pipeline.batch.spec import load_spec

    spec = load_spec(spec_path)
    where = parse_shard(shard) if shard else None
    _archive_images(
        lambda session, defaults: expand_spec(spec, session, defaults, shard=where),
        what=spec_path if where is None else f"{spec_path} shard {where[0]}/{where[1]}",
        secrets=spec_secrets(spec),
        **common,
    )


@examples(
    "bale ls s3://my-archive/images",
    "bale ls s3://my-archive/images team/app:1.0",
    "bale ls ./archive --json",
)
@main.command("ls")
@click.argument("store_url", metavar="STORE")
@click.argument("pattern", metavar="[REPO[:TAG]]", required=False)
@option("--endpoint-url", metavar="URL", help="S3-compatible or OSS endpoint.")
@store_options
@option("--json", "as_json", is_flag=True, help="One JSON array of records.")
@handles_errors
def ls_command(
    store_url: str, pattern: str | None, endpoint_url: str | None, as_json: bool
) -> None:
    """The archived images in STORE: ref, digest, platforms, sizes, tar key, date.

    REPO (`host/team/app`, or `team/app`) or REPO:TAG lists only those images. PLATFORMS are
    all the platforms kept in the store; IN TAR those in the image's tar ("all" when the same).
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from pipeline.archive.record import format_time, select_records
    from pipeline.units import format_size

    records = sorted(_open_bucket(store_url, endpoint_url).records(), key=lambda r: r.source)
    if pattern is not None:
        records = select_records(records, pattern)
    if as_json:
        click.echo(json.dumps([json.loads(r.to_json()) for r in records], indent=2))
        return
    if pattern is not None and not records:
        click.echo(f"no archived image matches {pattern}", err=True)
        return
    table = Table(box=None, pad_edge=False)
    columns = ("IMAGE", "DIGEST", "PLATFORMS", "IN TAR", "BLOBS", "TAR", "TAR KEY", "ARCHIVED")
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="fold")
    for r in records:
        stored = r.stored_platforms or r.platforms
        in_tar = ",".join(r.platforms) if r.platforms != stored else "all" if stored else "-"
        table.add_row(
            r.source,
            r.digest[:19],
            ",".join(stored) or "-",
            in_tar,
            format_size(r.blob_bytes),
            format_size(r.tar_size),
            r.tar_key,
            format_time(r.archived_at),
        )
    Console(width=None if sys.stdout.isatty() else 400, soft_wrap=True).print(table)


# ---- copy, restore -------------------------------------------------------------------------


def dest_registry_options(func: F) -> F:
    """skopeo's spelling for the destination registry: --dest-creds, --dest-tls-verify."""
    return _apply(
        func,
        [
            option(
                "--dest-creds",
                metavar="USER:PASS",
                help="Credentials for the destination registry.",
            ),
            option(
                "--dest-tls-verify/--no-dest-tls-verify",
                default=True,
                help="Verify TLS; --dest-tls-verify=false also allows plain HTTP.",
            ),
            cert_dir_option("dest-"),
        ],
    )


def _size_type() -> Any:
    from pipeline.units import SIZE

    return SIZE


def _registry_options(
    creds: str | None,
    authfile: str | None,
    tls_verify: bool,
    cert_dir: str | None,
    role: str,
    authfile_flag: str = "--authfile",
) -> Any:
    """`role` is `src` or `dest`: errors then name `--src-creds`, `--dest-cert-dir`, ..."""
    from pipeline.ops.session import RegistryOptions
    from pipeline.registry.credentials import CredentialFlags, parse_creds

    if cert_dir:
        from pathlib import Path

        from pipeline.registry.tls import read_cert_dir

        read_cert_dir(Path(cert_dir))  # a key without its certificate is bad input: exit 2 now
    return RegistryOptions(
        credentials=parse_creds(creds) if creds else None,
        authfile=authfile,
        tls_verify=tls_verify,
        cert_dir=cert_dir,
        flags=CredentialFlags.of_role(role, authfile_flag),
    )


@examples(
    "bale copy docker://registry.example.com/team/app:1.0 docker://mirror.example.com/app:1.0",
    "bale copy docker://registry.example.com/team/app:1.0 docker-archive:app.tar",
    "bale copy oci-archive:s3://my-bucket/app.tar docker://registry.example.com/team/app:1.0",
)
@main.command("copy", cls=SkopeoCommand)
@click.argument("src")
@click.argument("dst")
@option("--endpoint-url", metavar="URL", help="S3-compatible or OSS endpoint for s3:// / oss://.")
@store_options
@option(
    "--stdin-memory",
    type=_size_type(),
    default="512M",
    show_default=True,
    help="Largest tar read from a pipe (LOCATION -), held in memory: bale never stages on disk.",
)
@option("--force", is_flag=True, help="Replace an existing docker-archive: / oci-archive: tar.")
@platform_options(COPY_PLATFORM_HELP, COPY_ALL_PLATFORMS_HELP)
@src_registry_options
@dest_registry_options
@referrer_options
@transfer_options
@timeout_options
@handles_errors
def copy_command(
    src: str,
    dst: str,
    endpoint_url: str | None,
    stdin_memory: int,
    force: bool,
    platform: Any,
    all_platforms: bool,
    src_creds: str | None,
    authfile: str | None,
    src_tls_verify: bool,
    src_cert_dir: str | None,
    dest_creds: str | None,
    dest_tls_verify: bool,
    dest_cert_dir: str | None,
    referrers: bool,
    dest_compress_format: str | None,
    dest_compress_level: int | None,
    jobs: int,
    limit_rate: int | None,
    retries: int,
    read_timeout: float,
) -> None:
    """Copy an image between transports: docker://REF, docker-archive:LOC[:REF], oci-archive:LOC[:REF].

    LOC is a local path, - (stdin/stdout), s3://bucket/key or oss://bucket/key; tars are
    streamed, never staged on disk. Into a registry, an index is copied whole (digest kept)
    unless --platform picks one image.
    """
    from pipeline.ops.copy import copy_transports
    from pipeline.transports import parse_transport

    source, dest = parse_transport(src), parse_transport(dst)
    with _session(jobs, limit_rate, retries) as session, _naming(f"{source} -> {dest}"):
        result = copy_transports(
            source,
            dest,
            session=session,
            src_registry=_registry_options(
                src_creds, authfile, src_tls_verify, src_cert_dir, "src"
            ),
            dest_registry=_registry_options(
                dest_creds, authfile, dest_tls_verify, dest_cert_dir, "dest"
            ),
            platform=platform,
            all_platforms=all_platforms,
            endpoint_url=endpoint_url,
            stdin_limit=stdin_memory,
            referrers=referrers,
            compress=_compress(dest_compress_format, dest_compress_level),
            force=force,
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


@examples(
    "bale restore registry.example.com/team/app:1.0 docker://mirror.example.com/team/app "
    "--from s3://my-archive/images",
    "bale restore registry.example.com/team/app docker://mirror.example.com/team/app "
    "--all-tags --from ./archive",
)
@main.command("restore", cls=SkopeoCommand)
@click.argument("image")
@click.argument("dest")
@option(
    "--from", "store_url", required=True, metavar="STORE", help="s3://, oss://, file:// or a path."
)
@option("--endpoint-url", metavar="URL", help="S3-compatible or OSS endpoint.")
@store_options
@option("--all-tags", is_flag=True, help="Restore every archived tag of IMAGE's repository.")
@option(
    "--platform",
    callback=_platform,
    metavar=PLATFORM_METAVAR,
    help="The one platform of an archived index to push, under its own manifest digest "
    "(no index). Without it, the image goes back as it was archived: a whole index keeps its "
    "digest, an image archived with --platform is that one manifest.",
)
@option("--fail-fast/--keep-going", default=False, help="Stop at the first failed image.")
@option("--authfile", metavar="PATH", help="auth.json / config.json to read.")
@dest_registry_options
@referrer_options
@transfer_options
@timeout_options
@report_options
@handles_errors
def restore_command(
    image: str,
    dest: str,
    store_url: str,
    endpoint_url: str | None,
    all_tags: bool,
    platform: Any,
    fail_fast: bool,
    authfile: str | None,
    dest_creds: str | None,
    dest_tls_verify: bool,
    dest_cert_dir: str | None,
    referrers: bool,
    dest_compress_format: str | None,
    dest_compress_level: int | None,
    jobs: int,
    limit_rate: int | None,
    retries: int,
    read_timeout: float,
    report_path: str | None,
    junit_path: str | None,
) -> None:
    """Push IMAGE, as it was archived in STORE, to DEST (docker://host/repo[:tag]), digests
    unchanged. DEST's tag defaults to IMAGE's; with --all-tags both name repositories."""
    from pipeline.batch.run import check_output_paths
    from pipeline.batch.runner import run_batch
    from pipeline.ops.restore import Restorer, restore_targets
    from pipeline.refs import Reference

    source = Reference.parse(image, default_tag=None if all_tags else "latest")
    target = Reference.parse(dest, default_tag=None)
    options = _registry_options(dest_creds, authfile, dest_tls_verify, dest_cert_dir, "dest")
    check_output_paths((report_path, junit_path))
    bucket = _open_bucket(store_url, endpoint_url, retries)
    compress = _compress(dest_compress_format, dest_compress_level)
    targets = restore_targets(bucket, source, target, all_tags=all_tags, referrers=referrers)
    secrets = [options.credentials.password] if options.credentials else []

    def show(item: Any, result: Any) -> None:
        if result.failed:
            return
        echo_result(
            f"restored  {result.source} {result.digest} -> docker://{item.dest}",
            status="restored",
            image=result.source,
            digest=result.digest,
            destination=f"docker://{item.dest}",
        )

    with _session(jobs, limit_rate, retries) as session, _display(secrets) as display:
        display.on_run_start(len(targets), what=str(bucket.url))
        restorer = Restorer(
            bucket, session, options, display, referrers=referrers, compress=compress
        )
        report = run_batch(
            targets,
            lambda t: restorer.restore(t, platform),
            jobs=jobs,
            name=lambda t: str(t.source),
            fail_fast=fail_fast,
            on_result=show,
        )
        display.on_run_done(report)
    _echo_failures(report)
    _write_reports(report, report_path, junit_path, secrets)
    _exit_after(report, report_path, junit_path)


# ---- sync ----------------------------------------------------------------------------------


@examples(
    "bale sync docker://registry.example.com/team/app docker://mirror.example.com/team",
    "bale sync --src yaml manifests/example.yaml docker://mirror.example.com/mirror --dry-run",
    "bale sync --all docker://docker.io/library/alpine:3.20 docker://mirror.example.com/library",
)
@main.command("sync", cls=SkopeoCommand)
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
@option(
    "--platform",
    callback=_platform,
    metavar=PLATFORM_METAVAR,
    help="The platform taken from an index without --all, copied under its own manifest "
    "digest (the index is not copied). Without it that is linux/amd64; an index without "
    "linux/amd64 then fails, as in skopeo. With --all the whole index is copied and this is "
    "ignored.",
)
@option("--dry-run", is_flag=True, help="Report what would be copied; write nothing.")
@option("--keep-going", is_flag=True, help="Do not stop at the first failed image.")
@src_registry_options
@dest_registry_options
@option("--src-authfile", metavar="PATH", help="auth file for the source (over --authfile).")
@option("--dest-authfile", metavar="PATH", help="auth file for the destination.")
@referrer_options
@transfer_options
@timeout_options
@report_options
@handles_errors
def sync_command(
    source: str,
    destination: str,
    src_transport: str,
    dest_transport: str,
    scoped: bool,
    all_images: bool,
    platform: Any,
    dry_run: bool,
    keep_going: bool,
    src_creds: str | None,
    authfile: str | None,
    src_tls_verify: bool,
    src_cert_dir: str | None,
    dest_creds: str | None,
    dest_tls_verify: bool,
    dest_cert_dir: str | None,
    src_authfile: str | None,
    dest_authfile: str | None,
    referrers: bool,
    dest_compress_format: str | None,
    dest_compress_level: int | None,
    jobs: int,
    limit_rate: int | None,
    retries: int,
    read_timeout: float,
    report_path: str | None,
    junit_path: str | None,
) -> None:
    """Copy every image of SOURCE into DESTINATION, as skopeo sync does.

    SOURCE is docker://HOST/REPO (every tag), docker://HOST/REPO:TAG, or with --src yaml a
    spec file. Each image goes to DESTINATION/<last component of its name>:<tag> (--scoped:
    the whole name). Tags already at the same digest are skipped.
    """
    # batch.run and batch.spec bring the archive machinery and yaml: imported only when a
    # report path or a spec needs them (start-up is part of every sync's time).
    from pipeline.batch.runner import run_batch
    from pipeline.ops.sync import Syncer, SyncOptions, plan_repository, plan_spec

    del dest_transport  # only docker, as a choice: skopeo's spelling
    src_options = _registry_options(
        src_creds, src_authfile or authfile, src_tls_verify, src_cert_dir, "src", "--src-authfile"
    )
    dest_options = _registry_options(
        dest_creds,
        dest_authfile or authfile,
        dest_tls_verify,
        dest_cert_dir,
        "dest",
        "--dest-authfile",
    )
    options = SyncOptions(
        scoped=scoped,
        all_platforms=all_images,
        platform=platform,
        dry_run=dry_run,
        keep_going=keep_going,
        referrers=referrers,
        compress=_compress(dest_compress_format, dest_compress_level),
    )
    if report_path or junit_path:
        from pipeline.batch.run import check_output_paths

        check_output_paths((report_path, junit_path))
    secrets = [o.credentials.password for o in (src_options, dest_options) if o.credentials]
    spec = None
    if src_transport == "yaml":
        from pipeline.batch.run import spec_secrets
        from pipeline.batch.spec import load_spec

        spec = load_spec(source)
        secrets += spec_secrets(spec)

    def show(item: Any, result: Any) -> None:
        if not result.failed:
            echo_result(
                f"{result.status:<9} {result.source} {result.digest} -> docker://{item.dest}",
                status=result.status,
                image=result.source,
                digest=result.digest,
                destination=f"docker://{item.dest}",
            )

    with _session(jobs, limit_rate, retries) as session, _display(secrets) as display:
        if spec is not None:
            plan = plan_spec(spec, destination, session, src_options, options)
        else:
            plan = plan_repository(source, destination, session, src_options, options)
        display.on_run_start(len(plan.items) + len(plan.failures), what=source, dry_run=dry_run)
        for failure in plan.failures:
            display.on_image_done(failure)
        report = run_batch(
            plan.items,
            Syncer(session, dest_options, options, display).sync,
            jobs=jobs,
            name=lambda item: str(item.source),
            fail_fast=not keep_going,
            on_result=show,
            later=lambda item: referrers and item.is_referrer_tag,
            listed=plan.failures,
            started=plan.started,
        )
        display.on_run_done(report)
    _echo_failures(report)
    _write_reports(report, report_path, junit_path, secrets)
    _exit_after(report, report_path, junit_path)


# ---- verify, gc ----------------------------------------------------------------------------


@examples(
    "bale verify s3://my-archive/images",
    "bale verify ./archive registry.example.com/team/app:1.0 --deep",
)
@main.command("verify")
@click.argument("store_url", metavar="STORE")
@click.argument("images", nargs=-1, metavar="[IMAGE]...")
@option("--endpoint-url", metavar="URL", help="S3-compatible or OSS endpoint.")
@store_options
@option("--deep", is_flag=True, help="Also decompress layers (gzip, zstd) and check diff_ids.")
@option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of lines.")
@transfer_options
@handles_errors
def verify_command(
    store_url: str,
    images: tuple[str, ...],
    endpoint_url: str | None,
    deep: bool,
    as_json: bool,
    jobs: int,
    limit_rate: int | None,
    retries: int,
) -> None:
    """Re-hash blobs and tars in STORE and check links, tags and records (all, or IMAGE...).

    Prints one line per fault (kind, key, detail) and exits 1 on any fault, 0 when clean.
    """
    from pipeline.ops.verify import verify_store
    from pipeline.refs import Reference
    from pipeline.transfer.ratelimit import make_limiter

    refs = [Reference.parse(i) for i in images]
    bucket = _open_bucket(store_url, endpoint_url, retries)
    report = verify_store(bucket, refs, jobs=jobs, deep=deep, limiter=make_limiter(limit_rate))
    if as_json:
        click.echo(report.to_json(), nl=False)
    for fault in [] if as_json else report.faults:
        echo_result(str(fault), event="fault", **fault.to_json())
    echo_result(report.summary(), err=True, event="summary", message=report.summary(), ok=report.ok)
    sys.exit(0 if report.ok else 1)


def _older_than_option(func: F) -> F:
    from pipeline.units import DURATION

    return option(
        "--older-than",
        type=DURATION,
        default="24h",
        show_default=True,
        help="Only remove blobs, links and uploads older than this (0s, 90m, 24h). A concurrent "
        "archive may be writing links for a younger blob right now, so it is never removed.",
    )(func)


@examples("bale gc s3://my-archive/images --dry-run", "bale gc ./archive --older-than 0s")
@main.command("gc")
@click.argument("store_url", metavar="STORE")
@option("--endpoint-url", metavar="URL", help="S3-compatible or OSS endpoint.")
@store_options
@option("--dry-run", is_flag=True, help="List what would be removed, with sizes; remove nothing.")
@_older_than_option
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
    """Remove blobs no tag or record reaches, and multipart uploads older than --older-than.

    Marks from every tag, every record and every link younger than --older-than; never removes
    anything younger than --older-than (a concurrent archive may be linking it right now).
    """
    from datetime import timedelta

    from pipeline.ops.gc import collect_garbage
    from pipeline.units import format_size

    bucket = _open_bucket(store_url, endpoint_url, retries)
    report = collect_garbage(
        bucket, older_than=timedelta(seconds=older_than), dry_run=dry_run, jobs=jobs
    )
    verb = "would remove" if dry_run else "removed"
    for blob in report.blobs:
        echo_result(
            f"{verb} blob {blob.digest} {format_size(blob.size)} {blob.key}",
            event="gc",
            action=verb,
            kind="blob",
            key=blob.key,
            digest=blob.digest,
            bytes=blob.size,
        )
    for key in report.links:
        echo_result(f"{verb} link {key}", event="gc", action=verb, kind="link", key=key)
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

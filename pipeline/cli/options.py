"""The option groups the commands share, and how a group reaches a command: as one typed object.

Every option also reads `BALE_<OPTION>` from the environment (`--limit-rate` ← `BALE_LIMIT_RATE`);
`option()` wires that, so commands declare options the ordinary click way. `fold()` gathers a
group's values into one small typed value (`RegistryFlags`, `TransferFlags`, `ReportFlags`, ...),
so a command takes `transfer: TransferFlags`, not `jobs`, `limit_rate`, `retries`, `read_timeout`.

Nothing here imports more than click at start-up: `bale --help` must stay quick. The groups are
NamedTuples, not dataclasses: defining six dataclasses cost ~8 ms of every start-up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import click

if TYPE_CHECKING:
    from pipeline.copy.session import RegistryOptions
    from pipeline.oci import Platform
    from pipeline.transfer.recompress import CompressOptions

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
C = TypeVar("C", bound=click.Command)


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


def examples(*lines: str) -> Callable[[C], C]:
    """The `Examples:` epilog of a command's --help, one command line per argument."""

    def apply(command: C) -> C:
        # \b keeps click from re-flowing the lines into one paragraph.
        command.epilog = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
        return command

    return apply


def _apply(func: F, decorators: list[Callable[[F], F]]) -> F:
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


FOLDS = "__bale_folds__"


def fold(name: str, build: Callable[..., T], *decorators: Callable[[F], F]) -> Callable[[F], F]:
    """The options `decorators` declare reach the command as one argument `name`: `build` called
    with the values of the parameters it declares. `BaleCommand` does the folding, inner groups
    first, so an outer group's `build` may take an inner group's object."""

    def apply(func: F) -> F:
        func = _apply(func, list(decorators))
        func.__dict__.setdefault(FOLDS, []).append((name, build))
        return func

    return apply


class BaleCommand(click.Command):
    """Folds option groups (see `fold`) into their objects before the command runs."""

    def invoke(self, ctx: click.Context) -> Any:
        import inspect

        params = dict(ctx.params)
        for name, build in getattr(self.callback, FOLDS, ()):
            wanted = inspect.signature(build).parameters
            params[name] = build(**{key: params.pop(key) for key in list(params) if key in wanted})
        ctx.params = params
        return super().invoke(ctx)


class SkopeoCommand(BaleCommand):
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


# ---- the store ---------------------------------------------------------------------------------


def _store_setting(variable: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    """A store option's callback: the flag sets the variable boto3 and open_store read, so the
    flag and the variable are one setting (the flag wins)."""

    def remember(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            import os

            os.environ[variable] = str(value)

    return remember


def store_options(func: F) -> F:
    """--s3-addressing, --region, --store-ca-bundle: how to reach an s3:// store; the
    encryption options (`encryption_options`)."""
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
    return addressing(region(ca_bundle(encryption_options(func))))


STORE_FLAGS = "bale.store"
"""Where the encryption and lock options leave their values (`click.Context.meta`): every
command that opens a store takes them, and `runtime.open_bucket` is the one place that reads
them, so no command signature carries them."""


class StoreFlags(NamedTuple):
    """--sse, --sse-kms-key-id, --sse-c-key-file (every command that opens a store) and
    --retain, --lock-mode, --legal-hold (archive, run)."""

    sse: str | None = None
    sse_kms_key_id: str | None = None
    sse_c_key_file: str | None = None
    retain: float | None = None
    """Seconds to keep every object written (Object Lock); None: the bucket's default."""
    lock_mode: str = "GOVERNANCE"
    legal_hold: bool = False


def store_flags() -> StoreFlags:
    """The running command's store flags (the defaults outside a command)."""
    ctx = click.get_current_context(silent=True)
    given = ctx.find_root().meta.get(STORE_FLAGS, {}) if ctx is not None else {}
    return StoreFlags(**given)


def _store_flag(_ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is not None and param.name is not None:
        _ctx.find_root().meta.setdefault(STORE_FLAGS, {})[param.name] = value


def encryption_options(func: F) -> F:
    """--sse, --sse-kms-key-id, --sse-c-key-file: what every write asks the store to encrypt
    with (and, for SSE-C, every read too)."""
    return _apply(
        func,
        [
            option(
                "--sse",
                metavar="AES256|aws:kms|KMS",
                expose_value=False,
                callback=_store_flag,
                help="Server-side encryption of every object written: AES256, aws:kms (S3) "
                "or KMS (OSS).",
            ),
            option(
                "--sse-kms-key-id",
                metavar="ID",
                expose_value=False,
                callback=_store_flag,
                help="The KMS key for --sse aws:kms / KMS (default: the account's).",
            ),
            option(
                "--sse-c-key-file",
                metavar="FILE",
                expose_value=False,
                callback=_store_flag,
                help="S3 SSE-C: the customer key (32 bytes, raw or base64), needed again to "
                "read; never stored or shown.",
            ),
        ],
    )


def lock_options(func: F) -> F:
    """--retain, --lock-mode, --legal-hold: the Object Lock every object written carries."""
    from pipeline.units import DURATION

    return _apply(
        func,
        [
            option(
                "--retain",
                type=DURATION,
                metavar="DURATION",
                expose_value=False,
                callback=_store_flag,
                help="S3 Object Lock: keep every object written this long (7y, 90d); "
                "default: the bucket's default retention.",
            ),
            option(
                "--lock-mode",
                type=click.Choice(["GOVERNANCE", "COMPLIANCE"], case_sensitive=False),
                metavar="GOVERNANCE|COMPLIANCE",
                default="GOVERNANCE",
                expose_value=False,
                callback=_store_flag,
                help="The Object Lock mode of --retain.",
            ),
            option(
                "--legal-hold",
                is_flag=True,
                default=None,
                expose_value=False,
                callback=_store_flag,
                help="S3 Object Lock: put a legal hold on every object written.",
            ),
        ],
    )


def endpoint_option(help: str = "S3-compatible or OSS endpoint.") -> Callable[[F], F]:
    return option("--endpoint-url", metavar="URL", help=help)


# ---- platforms ---------------------------------------------------------------------------------

PLATFORM_METAVAR = "OS/ARCH[/VARIANT]"


def _platform(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Platform | None:
    from pipeline.oci import Platform

    if value is None:
        return None
    try:
        return Platform.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def platform_option(help: str) -> Callable[[F], F]:
    """--platform OS/ARCH[/VARIANT], parsed into a `Platform`."""
    return option("--platform", callback=_platform, metavar=PLATFORM_METAVAR, help=help)


def platform_options(platform_help: str, all_help: str) -> Callable[[F], F]:
    """--platform and --all-platforms, with help that says what this command keeps."""

    def apply(func: F) -> F:
        return _apply(
            func,
            [
                platform_option(platform_help),
                option("--all-platforms", is_flag=True, help=all_help),
            ],
        )

    return apply


# ---- registries --------------------------------------------------------------------------------


class RegistryFlags(NamedTuple):
    """How the command line reaches one registry (skopeo's --creds, --authfile, --tls-verify,
    --cert-dir, spelled --src-… or --dest-… by the command)."""

    creds: str | None = None
    authfile: str | None = None
    tls_verify: bool = True
    cert_dir: str | None = None

    def options(
        self, role: str, authfile_flag: str = "--authfile", authfile: str | None = None
    ) -> RegistryOptions:
        """`role` is `src` or `dest`: errors then name `--src-creds`, `--dest-cert-dir`, ...;
        `authfile` (a per-role --src-authfile) wins over the group's --authfile."""
        from pipeline.copy.session import RegistryOptions
        from pipeline.registry.credentials import CredentialFlags, parse_creds

        if self.cert_dir:
            from pathlib import Path

            from pipeline.registry.tls import read_cert_dir

            read_cert_dir(Path(self.cert_dir))  # a key without its certificate: exit 2 now
        return RegistryOptions(
            credentials=parse_creds(self.creds) if self.creds else None,
            authfile=authfile or self.authfile,
            tls_verify=self.tls_verify,
            cert_dir=self.cert_dir,
            flags=CredentialFlags.of_role(role, authfile_flag),
        )


def _src_registry(
    src_creds: str | None, authfile: str | None, src_tls_verify: bool, src_cert_dir: str | None
) -> RegistryFlags:
    return RegistryFlags(src_creds, authfile, src_tls_verify, src_cert_dir)


def _dest_registry(
    dest_creds: str | None, dest_tls_verify: bool, dest_cert_dir: str | None
) -> RegistryFlags:
    return RegistryFlags(dest_creds, None, dest_tls_verify, dest_cert_dir)


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


def _authfile_option(func: F) -> F:
    return option("--authfile", metavar="PATH", help="auth.json / config.json to read.")(func)


def _tls_verify_option(prefix: str) -> Callable[[F], F]:
    spelled = f"--{prefix}tls-verify"
    return option(
        f"{spelled}/--no-{prefix}tls-verify",
        default=True,
        help=f"Verify TLS; {spelled}=false also allows plain HTTP.",
    )


src_registry_options = fold(
    "src_registry",
    _src_registry,
    option("--src-creds", metavar="USER:PASS", help="Credentials for the source registry."),
    _authfile_option,
    _tls_verify_option("src-"),
    cert_dir_option("src-"),
)
"""skopeo's spelling for the source registry: --src-creds, --authfile, --src-tls-verify."""

dest_registry_options = fold(
    "dest_registry",
    _dest_registry,
    option("--dest-creds", metavar="USER:PASS", help="Credentials for the destination registry."),
    _tls_verify_option("dest-"),
    cert_dir_option("dest-"),
)
"""skopeo's spelling for the destination registry: --dest-creds, --dest-tls-verify (its
--authfile is the command's own)."""

authfile_option = _authfile_option


# ---- timeouts and transfers --------------------------------------------------------------------


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
    decorated = cast(F, wrapper)
    for decorator in reversed(options):
        decorated = decorator(decorated)
    return decorated


class TransferFlags(NamedTuple):
    """How hard one process may push the network: --jobs, --limit-rate, --retries, and the
    command's --read-timeout (None: the registry client's default)."""

    jobs: int = 4
    limit_rate: int | None = None
    retries: int = 5
    read_timeout: float | None = None


def _retries_option(default: int | None, help: str) -> Callable[[F], F]:
    return option(
        "--retries",
        "--retry-times",
        "retries",
        type=click.IntRange(min=0),
        default=default,
        help=help,
    )


def _rate_options() -> list[Callable[[F], F]]:
    from pipeline.units import SIZE

    return [
        option("--jobs", type=click.IntRange(min=1), default=4, help="Parallel blob transfers."),
        option(
            "--limit-rate",
            type=SIZE,
            default=None,
            help="Total bytes/s across all transfers (50M, 1.5G).",
        ),
        _retries_option(5, "Retries for failed requests."),
    ]


def rate_options(func: F) -> F:
    """--jobs, --limit-rate, --retries as `transfer: TransferFlags` (no timeouts: `verify`)."""
    return fold("transfer", TransferFlags, *_rate_options())(func)


def transfer_options(func: F) -> F:
    """--jobs, --limit-rate, --retries and the timeouts, as `transfer: TransferFlags`."""
    return fold("transfer", TransferFlags, *_rate_options(), timeout_options)(func)


class ClientFlags(NamedTuple):
    """One registry reached directly (`inspect`, `list-tags`)."""

    registry: RegistryFlags
    retries: int | None
    read_timeout: float


def registry_options(func: F) -> F:
    """skopeo's flags for reaching one registry, as `client: ClientFlags`: --creds, --authfile,
    --tls-verify, --cert-dir, retries, timeouts."""
    return fold(
        "client",
        ClientFlags,
        fold(
            "registry",
            RegistryFlags,
            option("--creds", metavar="USER:PASS", help="Credentials for the registry."),
            _authfile_option,
            _tls_verify_option(""),
            cert_dir_option(""),
        ),
        _retries_option(None, "Retries for failed requests (default 5)."),
        timeout_options,
    )(func)


# ---- referrers, recompression, reports ---------------------------------------------------------


def referrers_option(func: F) -> F:
    """--referrers/--no-referrers: signatures and attestations travel with their image."""
    return option(
        "--referrers/--no-referrers",
        default=True,
        help="Bring signatures and attestations (cosign tags, OCI referrers) along.",
    )(func)


class ReferrerFlags(NamedTuple):
    """--referrers and the recompression asked for with --dest-compress-format/-level."""

    referrers: bool
    compress: CompressOptions | None


def _referrer_flags(
    referrers: bool, dest_compress_format: str | None, dest_compress_level: int | None
) -> ReferrerFlags:
    from pipeline.errors import UsageError
    from pipeline.transfer.recompress import DEFAULT_LEVEL, CompressOptions

    if dest_compress_format is None:
        if dest_compress_level is not None:
            raise UsageError("--dest-compress-level needs --dest-compress-format")
        return ReferrerFlags(referrers, None)
    level = DEFAULT_LEVEL if dest_compress_level is None else dest_compress_level
    return ReferrerFlags(referrers, CompressOptions(dest_compress_format, level))


referrer_options = fold(
    "referrer",
    _referrer_flags,
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
)
"""--referrers/--no-referrers and --dest-compress-format/--dest-compress-level, as
`referrer: ReferrerFlags`."""


class ReportFlags(NamedTuple):
    """--report and --junit: where the run's report goes, checked before any transfer."""

    report_path: str | None = None
    junit_path: str | None = None

    @property
    def paths(self) -> list[str]:
        return [p for p in (self.report_path, self.junit_path) if p]

    def check(self) -> None:
        """A typo in --report must not waste a night's run: bad paths are bad input now."""
        if self.paths:
            from pipeline.batch.run import check_output_paths

            check_output_paths(self.paths)


report_options = fold(
    "reports",
    ReportFlags,
    option("--report", "report_path", metavar="FILE", help="Write a JSON report."),
    option("--junit", "junit_path", metavar="FILE", help="Write a JUnit XML report."),
)
"""--report FILE and --junit FILE, as `reports: ReportFlags`."""

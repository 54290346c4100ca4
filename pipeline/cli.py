"""The `bale` command line: parse, call the library, render. No logic lives here.

Every option also reads `BALE_<OPTION>` from the environment (`--limit-rate` ← `BALE_LIMIT_RATE`);
`option()` below wires that, so commands declare options the ordinary click way.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pipeline import __version__
from pipeline.errors import BaleError

F = TypeVar("F", bound=Callable[..., Any])


def option(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    """`click.option` with `envvar=BALE_<LONG_NAME>` filled in."""
    if "envvar" not in kwargs:
        longs = [d for d in decls if d.startswith("--")]
        if longs:
            name = longs[0][2:].split("/")[0].replace("-", "_").upper()
            kwargs["envvar"] = f"BALE_{name}"
    kwargs.setdefault("show_envvar", False)
    return click.option(*decls, **kwargs)


def fail(exc: BaleError) -> None:
    """Report a user-facing error as one line and exit with its code."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    click.echo(f"bale: error: {message}", err=True)
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


class BaleGroup(click.Group):
    """Maps click's usage errors to exit 2 (click already does) and ours to their codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaleError as exc:
            fail(exc)


@click.group(cls=BaleGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


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


def _platform(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    from pipeline.oci import Platform

    if value is None:
        return None
    try:
        return Platform.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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
            option(
                "--retries",
                "--retry-times",
                "retries",
                type=click.IntRange(min=0),
                default=None,
                help="Retries for failed requests (default 5).",
            ),
        ]
    ):
        func = decorator(func)
    return func


def _registry_client(
    registry: str, creds: str | None, authfile: str | None, tls_verify: bool, retries: int | None
) -> Any:
    from pipeline.registry.client import RegistryClient
    from pipeline.registry.credentials import parse_creds
    from pipeline.transfer.retry import RetryPolicy

    return RegistryClient(
        registry,
        credentials=parse_creds(creds) if creds else None,
        authfile=authfile,
        tls_verify=tls_verify,
        retry=RetryPolicy() if retries is None else RetryPolicy(retries=retries),
    )


@main.command("inspect", cls=SkopeoCommand)
@click.argument("image")
@option(
    "--raw", is_flag=True, help="Print the manifest exactly as served (with --config: the config)."
)
@option("--config", "show_config", is_flag=True, help="Print the image's config.")
@option("-n", "--no-tags", is_flag=True, help="Do not list the repository's tags.")
@option("--platform", callback=_platform, help="os/arch[/variant] to pick from an index.")
@registry_options
@handles_errors
def inspect_command(
    image: str,
    raw: bool,
    show_config: bool,
    no_tags: bool,
    platform: Any,
    creds: str | None,
    authfile: str | None,
    tls_verify: bool,
    retries: int | None,
) -> None:
    """skopeo inspect's JSON for IMAGE (docker://host/repo:tag, or a bare reference)."""
    from pipeline.ops import inspect as ops
    from pipeline.refs import Reference

    ref = Reference.parse(image)
    with _registry_client(ref.registry, creds, authfile, tls_verify, retries) as client:
        if raw and not show_config:
            out: bytes | str = ops.raw_manifest(ref, client)
        elif raw:
            out = ops.raw_config(ref, client, platform=platform)
        elif show_config:
            out = ops.render_json(ops.image_config(ref, client, platform=platform))
        else:
            info = ops.inspect_image(ref, client, platform=platform, list_tags=not no_tags)
            out = ops.render_json(info)
    stream = sys.stdout.buffer
    stream.write(out if isinstance(out, bytes) else out.encode())
    stream.flush()


@main.command("list-tags", cls=SkopeoCommand)
@click.argument("repository")
@registry_options
@handles_errors
def list_tags_command(
    repository: str, creds: str | None, authfile: str | None, tls_verify: bool, retries: int | None
) -> None:
    """skopeo list-tags' JSON for REPOSITORY (docker://host/repo, no tag)."""
    from pipeline.ops import inspect as ops
    from pipeline.refs import parse_repository

    ref = parse_repository(repository)
    with _registry_client(ref.registry, creds, authfile, tls_verify, retries) as client:
        out = ops.render_json(ops.tag_list(ref, client))
    sys.stdout.write(out)
    sys.stdout.flush()

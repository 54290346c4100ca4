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

"""The `bale` group: global options (-v, -q, --log-format), logging, and errors as exit codes."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from pipeline import __version__
from pipeline.cli.options import examples, option
from pipeline.cli.output import echo_result, fail, json_log, set_log_format
from pipeline.errors import BaleError


class BaleGroup(click.Group):
    """Maps click's usage errors to exit 2 (click already does) and ours to their codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BaleError as exc:
            fail(exc)
        except click.ClickException as exc:
            if not json_log():
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
    set_log_format(log_format)
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

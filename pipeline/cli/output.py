"""What bale writes for people and scripts: result lines, one-line errors, and how a run ends.

With `--log-format json` every line is one JSON object (`echo_result`'s fields); a run's end
(`finish_run`) is the same for every command that moves many images.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pipeline.errors import BaleError

if TYPE_CHECKING:
    from pipeline.batch.report import ImageResult, RunReport
    from pipeline.cli.options import ReportFlags

F = TypeVar("F", bound=Callable[..., Any])

_log_format = ["text"]
"""`main`'s --log-format, for lines written from worker threads (click's context is per thread)."""


def set_log_format(log_format: str) -> None:
    _log_format[0] = log_format


def json_log() -> bool:
    """`--log-format json` was given: every line bale writes is then one JSON object."""
    return _log_format[0] == "json"


def echo_result(text: str, *, err: bool = False, event: str = "result", **fields: Any) -> None:
    """A result line (`restored …`, `copied …`): `text`, or with --log-format json the fields."""
    if json_log():
        from pipeline.display import json_line

        text = json_line(event, **fields)
    click.echo(text, err=err)


def fail(exc: BaleError, about: str = "") -> NoReturn:
    """Report a user-facing error as one line and exit with its code; `about` names the
    image or transfer it concerns when the message alone may not. After Ctrl-C, SIGTERM or
    `--command-timeout`, whatever error the cut work became, the line says what ended it
    (130, 143 or 124)."""
    from pipeline.transfer.cancel import RUN

    if RUN.cancelled and RUN.timed_out is not None:
        exc, about = RUN.error(), ""
    elif RUN.cancelled:
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
def naming(about: str, kind: type[BaleError] = BaleError) -> Iterator[None]:
    """A failure of `kind` inside (not bad input: that names its argument) is reported as
    `about: …`, so the line names the image the user gave rather than a blob of it."""
    try:
        yield
    except kind as exc:
        if exc.exit_code == 2:
            raise
        fail(exc, about)


def echo_done(result: ImageResult, destination: str) -> None:
    """`restored  SOURCE DIGEST -> DEST` (or `copied`, `skipped`, `planned`) for an image that
    got there; failed and interrupted images are listed at the end (`echo_failures`, the
    interrupted line)."""
    if result.status in ("failed", "interrupted"):
        return
    echo_result(
        f"{result.status:<9} {result.source} {result.digest} -> {destination}",
        status=result.status,
        image=result.source,
        digest=result.digest,
        destination=destination,
    )


def echo_failures(report: RunReport) -> None:
    """`failed    SOURCE: ERROR` on stderr for each failed image (restore, sync)."""
    for failure in report.failures:
        echo_result(
            f"failed    {failure.failure_line}",
            err=True,
            status="failed",
            image=failure.source,
            error=failure.error,
        )


def finish_run(
    report: RunReport,
    reports: ReportFlags,
    secrets: list[str],
    summary: Callable[[RunReport], None] = echo_failures,
) -> NoReturn:
    """The end of every run over many images: `summary` (failed lines, or the display's
    summary), --report/--junit written, and the report's exit code; after Ctrl-C, SIGTERM or
    `--command-timeout`, one line saying so (with what was done and where the report went),
    and 130, 143 or 124."""
    from pathlib import Path

    from pipeline.transfer.cancel import RUN

    with RUN.awaited():
        summary(report)
        if reports.report_path:
            Path(reports.report_path).write_text(report.to_json(secrets=secrets))
        if reports.junit_path:
            Path(reports.junit_path).write_text(report.to_junit(secrets=secrets))
    if not RUN.cancelled:
        sys.exit(report.exit_code())
    totals = report.totals()
    counts = [f"{totals['images'] - totals['failed'] - totals['interrupted']} done"]
    if totals["failed"]:
        counts.append(f"{totals['failed']} failed")
    counts.append(f"{totals['interrupted']} interrupted")
    paths = reports.paths
    where = f", report written to {' and '.join(paths)}" if paths else ""
    ended = str(RUN.error()) if RUN.timed_out is None else f"error: {RUN.error()}"
    echo_result(
        f"bale: {ended}; {', '.join(counts)}{where}",
        err=True,
        event="interrupted",
        signal=None if RUN.timed_out is not None else RUN.signal_name,
        message=str(RUN.error()),
        **{k: totals[k] for k in ("images", "failed", "interrupted")},
        reports=paths,
        exit_code=RUN.exit_code,
    )
    sys.exit(report.exit_code())

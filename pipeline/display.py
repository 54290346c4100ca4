"""What a run looks like: rich progress on a terminal, log lines otherwise, JSON on request.

Operations report through `ImageEvents` (pipeline/ops/events.py); the commands pick one display:

    --log-format json        one JSON object per event on stderr (`run_start`, `image_start`,
                             `image_size`, `image_done`, `run_done`), for log collectors
    stderr is a terminal     rich progress: one bar per image being worked on and one for the
                             run (bytes, rate, ETA); a line above the bars as each image ends
    otherwise (CI, cron)     one plain line per image start and end, with bytes and seconds
    -q                       failures only

Standard output carries the result, not the log: a summary table when it is a terminal, else
one line per image (`archived  SOURCE DIGEST -> TAR_KEY`) that scripts can read. Every line
that can hold an error message is scrubbed of the run's known secrets.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from pipeline.batch.report import ImageResult, RunReport, scrub
from pipeline.ops.events import NullImageEvents
from pipeline.units import format_size

LOG_FORMATS = ("text", "json")


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "-"


def _bytes_text(result: ImageResult) -> str:
    if result.status == "planned":
        return (
            f"would download {format_size(result.bytes_downloaded)}, "
            f"{format_size(result.bytes_already_stored)} already stored"
        )
    return (
        f"{format_size(result.bytes_downloaded)} down, {format_size(result.bytes_uploaded)} up, "
        f"{format_size(result.bytes_already_stored)} already stored"
    )


def _totals_text(report: RunReport) -> str:
    totals = report.totals()
    counts = ", ".join(
        f"{totals[s]} {s}"
        for s in ("archived", "skipped", "planned", "restored", "copied", "failed")
        if totals.get(s)
    )
    verb = "would download" if totals.get("planned") else "downloaded"
    return (
        f"{totals['images']} image(s){': ' + counts if counts else ''}; "
        f"{verb} {format_size(int(totals['bytes_downloaded']))}, "
        f"{format_size(int(totals['bytes_already_stored']))} already stored, "
        f"in {report.seconds:.1f}s"
    )


class Display(NullImageEvents):
    """Base display: results on stdout, nothing on stderr. Use as a context manager."""

    def __init__(
        self,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.secrets = tuple(s for s in secrets if s)
        self._lock = threading.Lock()

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop live output (progress bars); idempotent."""

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def on_run_start(self, images: int, *, what: str = "", dry_run: bool = False) -> None:
        pass

    def on_run_done(self, report: RunReport) -> None:
        pass

    def summary(self, report: RunReport) -> None:
        """The result on stdout: a table on a terminal, else one line per image."""
        if self.stdout.isatty():
            self._table(report)
            return
        lines = []
        for r in report.results:
            if r.failed:
                lines.append(f"{'failed':<9} {r.source}: {self.scrub(r.error or 'failed')}")
            else:
                where = r.destination or r.tar_key or "-"
                lines.append(f"{r.status:<9} {r.source} {r.digest or '-'} -> {where}")
        with self._lock:
            for line in lines:
                self.stdout.write(line + "\n")
            self.stdout.flush()

    def _table(self, report: RunReport) -> None:
        """One row per image, totals in the footer; errors below, where they have room.

        Bytes uploaded and copied are left to `--report`: on a terminal, what came down and
        what was already there are the numbers people look for.
        """
        table = Table(box=None, pad_edge=False, show_footer=True)
        totals = report.totals()
        longest = max((len(r.source) for r in report.results), default=5)
        table.add_column(
            "IMAGE",
            footer="total",
            overflow="fold",
            min_width=min(longest, 40),
        )
        table.add_column("STATUS", no_wrap=True)
        table.add_column("DIGEST", no_wrap=True)
        for title, name in (("DOWN", "bytes_downloaded"), ("STORED", "bytes_already_stored")):
            table.add_column(
                title, justify="right", no_wrap=True, footer=format_size(int(totals[name]))
            )
        table.add_column("TIME", justify="right", no_wrap=True, footer=f"{report.seconds:.1f}s")
        style = {"failed": "red", "archived": "green", "planned": "cyan"}
        for r in report.results:
            table.add_row(
                escape(r.source),
                f"[{style.get(r.status, 'default')}]{r.status}[/]",
                r.digest.split(":")[-1][:12] if r.digest else "-",
                format_size(r.bytes_downloaded),
                format_size(r.bytes_already_stored),
                f"{r.seconds:.1f}s",
            )
        console = Console(file=self.stdout, highlight=False)
        console.print(table)
        for r in report.failures:
            console.print(f"[red]failed[/] {escape(r.source)}: {escape(self.scrub(r.error or ''))}")
        console.print(_totals_text(report))


class TextLog(Display):
    """One plain line per image start and end on stderr (CI logs, cron mail)."""

    def __init__(self, *args: Any, quiet: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.quiet = quiet

    def _line(self, word: str, text: str, *, error: bool = False) -> None:
        if self.quiet and not error:
            return
        stamp = datetime.now().strftime("%H:%M:%S")
        with self._lock:
            self.stderr.write(f"{stamp} {word:<8} {self.scrub(text)}\n")
            self.stderr.flush()

    def on_run_start(self, images: int, *, what: str = "", dry_run: bool = False) -> None:
        mode = " (dry run: nothing is written)" if dry_run else ""
        self._line("run", f"{images} image(s){' from ' + what if what else ''}{mode}")

    def on_image_start(self, source: str) -> None:
        self._line("start", source)

    def on_image_done(self, result: ImageResult) -> None:
        if result.failed:
            self._line(
                "failed", f"{result.source} ({result.seconds:.2f}s): {result.error}", error=True
            )
            return
        self._line(
            result.status,
            f"{result.source} {_short(result.digest)} {_bytes_text(result)}, {result.seconds:.2f}s",
        )

    def on_run_done(self, report: RunReport) -> None:
        self._line("done", _totals_text(report), error=bool(report.failures))

    def summary(self, report: RunReport) -> None:
        if not self.quiet:
            super().summary(report)


class JsonLog(Display):
    """One JSON object per event on stderr; the last is `run_done` with the report's totals."""

    def _emit(self, event: str, **fields: Any) -> None:
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            **fields,
        }
        line = self.scrub(json.dumps(record, separators=(",", ":")))
        with self._lock:
            self.stderr.write(line + "\n")
            self.stderr.flush()

    def on_run_start(self, images: int, *, what: str = "", dry_run: bool = False) -> None:
        self._emit("run_start", images=images, source=what or None, dry_run=dry_run)

    def on_image_start(self, source: str) -> None:
        self._emit("image_start", image=source)

    def on_image_size(self, source: str, nbytes: int) -> None:
        self._emit("image_size", image=source, bytes=nbytes)

    def on_image_done(self, result: ImageResult) -> None:
        data = result.to_dict(self.secrets)
        self._emit("image_done", image=data.pop("source"), **data)

    def on_run_done(self, report: RunReport) -> None:
        self._emit("run_done", totals=report.totals(), exit_code=report.exit_code())


class RichProgress(TextLog):
    """Live bars on a terminal: per image in flight, and the whole run; lines as images end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.console = Console(file=self.stderr, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}", table_column=None),
            BarColumn(bar_width=28),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._overall: TaskID | None = None
        self._images = 0
        self._done = 0
        self._started = False

    def __enter__(self) -> RichProgress:
        self.progress.start()
        self._started = True
        return self

    def close(self) -> None:
        if self._started:
            self._started = False
            self.progress.stop()

    def _overall_text(self) -> str:
        return f"[bold]all images[/] {self._done}/{self._images}"

    def on_run_start(self, images: int, *, what: str = "", dry_run: bool = False) -> None:
        with self._lock:
            self._images = images
            if self._overall is None:
                self._overall = self.progress.add_task(self._overall_text(), total=0)
            self.progress.update(self._overall, description=self._overall_text())

    @staticmethod
    def _label(source: str) -> str:
        return source if len(source) <= 48 else "…" + source[-47:]

    def on_image_start(self, source: str) -> None:
        with self._lock:
            self._tasks[source] = self.progress.add_task(escape(self._label(source)), total=None)

    def on_image_size(self, source: str, nbytes: int) -> None:
        with self._lock:
            task = self._tasks.get(source)
            if task is not None:
                self.progress.update(task, total=nbytes)
            if self._overall is not None:
                total = self.progress.tasks[self._overall].total or 0
                self.progress.update(self._overall, total=total + nbytes)

    def on_image_bytes(self, source: str, moved: int = 0, skipped: int = 0) -> None:
        """Moved bytes advance the bars; skipped ones shrink their totals, so rates and ETAs
        count only what really moves."""
        with self._lock:
            for task in (self._tasks.get(source), self._overall):
                if task is None:
                    continue
                if moved:
                    self.progress.advance(task, moved)
                if skipped:
                    total = self.progress.tasks[task].total or 0
                    self.progress.update(task, total=max(0, total - skipped))

    def on_image_done(self, result: ImageResult) -> None:
        with self._lock:
            task = self._tasks.pop(result.source, None)
            if task is not None:
                self.progress.remove_task(task)
            self._done += 1
            if self._overall is not None:
                self.progress.update(self._overall, description=self._overall_text())
        colour = {"failed": "red", "archived": "green", "planned": "cyan"}.get(result.status, "")
        if result.failed:
            text = escape(f"{result.source}: {self.scrub(result.error or '')}")
        else:
            text = escape(f"{result.source} {_short(result.digest)} {_bytes_text(result)}")
        word = f"[{colour}]{result.status:<8}[/]" if colour else f"{result.status:<8}"
        self.console.print(f"{word} {text} [dim]{result.seconds:.1f}s[/]", highlight=False)

    def on_run_done(self, report: RunReport) -> None:
        self.close()
        if not self.stdout.isatty():  # the table on stdout carries the totals otherwise
            self.console.print(_totals_text(report), highlight=False)


def open_display(
    log_format: str = "text",
    *,
    quiet: bool = False,
    secrets: Iterable[str | None] = (),
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> Display:
    """The display for this terminal and these options (see the module doc)."""
    err = stderr or sys.stderr
    if log_format == "json":
        return JsonLog(stdout, err, secrets)
    if quiet or not err.isatty():
        return TextLog(stdout, err, secrets, quiet=quiet)
    return RichProgress(stdout, err, secrets)

"""What a run looks like: rich progress on a terminal, log lines otherwise, JSON on request.

Operations report through `ImageEvents` (pipeline/ops/events.py); the commands pick one display:

    --log-format json        one JSON object per event on stderr (`run_start`, `image_start`,
                             `image_size`, `image_done`, `run_done`), for log collectors
    stderr is a terminal     rich progress: one bar per image being worked on and one for the
                             run (bytes, rate, ETA, in powers of 1024 as --limit-rate counts);
                             an image's phase in words when no bytes move; a line above the
                             bars as each image ends. A drawing error ends the bars, not the run
    otherwise (CI, cron)     one plain line per image start and end, with bytes and seconds
    -q                       failures only

Standard output carries the result, not the log: a summary table when it is a terminal, else
one line per image (`archived  SOURCE DIGEST -> TAR_KEY`) that scripts can read; with
`--log-format json` one `result` object per image, and log records and the final error are
JSON too (`json_line`), so a json log holds no plain line. Every line that can hold an
error message is scrubbed of the run's known secrets.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from pipeline.batch.report import ImageResult, RunReport, scrub
from pipeline.copy.events import NullImageEvents
from pipeline.units import format_size

LOG_FORMATS = ("text", "json")

log = logging.getLogger("bale.display")


def json_line(event: str, secrets: Iterable[str] = (), **fields: Any) -> str:
    """One `--log-format json` line: time, event, fields; every stream of bale writes these."""
    record = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": event,
        **fields,
    }
    return scrub(json.dumps(record, separators=(",", ":")), secrets)


class JsonLogFormatter(logging.Formatter):
    """Log records (warnings, -v lines) as `log` events, so a json log has no plain line."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json_line("log", **fields)


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "-"


def _bytes_text(result: ImageResult) -> str:
    if result.status == "skipped":
        # archive's skip has a tar; sync's has none (the destination holds the digest)
        return "already archived" if result.tar_key else "already there"
    if result.status == "planned":
        text = (
            f"would download {format_size(result.bytes_downloaded)}, "
            f"{format_size(result.bytes_already_stored)} already stored"
        )
        if result.bytes_by_class and len(result.bytes_by_class) > 1:
            kept = ", ".join(f"{format_size(n)} {c}" for c, n in result.bytes_by_class.items())
            text += f"; keeps {kept}"
        return text
    return (
        f"{format_size(result.bytes_downloaded)} down, {format_size(result.bytes_uploaded)} up, "
        f"{format_size(result.bytes_already_stored)} already stored"
    )


def _totals_text(report: RunReport) -> str:
    totals = report.totals()
    counts = ", ".join(
        f"{totals[s]} {s}"
        for s in ("archived", "skipped", "planned", "restored", "copied", "failed", "interrupted")
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
                lines.append(f"{'failed':<9} {self.scrub(r.failure_line)}")
            else:
                where = r.destination or r.tar_key or "-"
                lines.append(f"{r.status:<9} {r.source} {r.digest or '-'} -> {where}")
        with self._lock:
            for line in lines:
                self.stdout.write(line + "\n")
            self.stdout.flush()

    def _table(self, report: RunReport) -> None:
        """One row per image, totals in the footer; errors below, where they have room.

        Bytes copied server-side are left to `--report`; what came down, went up and was
        already there are the numbers people look for.
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
        for title, name in (
            ("DOWN", "bytes_downloaded"),
            ("UP", "bytes_uploaded"),
            ("STORED", "bytes_already_stored"),
        ):
            table.add_column(
                title, justify="right", no_wrap=True, footer=format_size(int(totals[name]))
            )
        table.add_column("TIME", justify="right", no_wrap=True, footer=f"{report.seconds:.1f}s")
        style = {"failed": "red", "archived": "green", "planned": "cyan", "interrupted": "yellow"}
        for r in report.results:
            table.add_row(
                escape(r.source),
                f"[{style.get(r.status, 'default')}]{r.status}[/]",
                _short(r.digest),
                format_size(r.bytes_downloaded),
                format_size(r.bytes_uploaded),
                format_size(r.bytes_already_stored),
                f"{r.seconds:.1f}s",
            )
        console = Console(file=self.stdout, highlight=False)
        console.print(table)
        for r in report.failures:
            console.print(f"[red]failed[/] {escape(self.scrub(r.failure_line))}")
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
        line = json_line(event, self.secrets, **fields)
        with self._lock:
            self.stderr.write(line + "\n")
            self.stderr.flush()

    def summary(self, report: RunReport) -> None:
        """The result on stdout as one `result` object per image (what the text lines say)."""
        lines = [
            json_line(
                "result",
                self.secrets,
                status=r.status,
                image=r.source,
                digest=r.digest,
                destination=r.tar_key,
                error=r.error,
            )
            for r in report.results
        ]
        with self._lock:
            for line in lines:
                self.stdout.write(line + "\n")
            self.stdout.flush()

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


_BAR_WIDTH = 28


class _BarOrPhase(ProgressColumn):
    """The bar while bytes move; the phase in words before them (reading manifests) and after
    (writing manifests, composing the tar, the record), where a bar would sit at 0 or 100 %."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(width=_BAR_WIDTH, no_wrap=True))
        self._bar = BarColumn(bar_width=_BAR_WIDTH)

    def render(self, task: Task) -> RenderableType:
        phase = task.fields.get("phase")
        if phase:
            return Text(phase, style="cyan", overflow="ellipsis", no_wrap=True)
        return self._bar.render(task)


class _BytesColumn(ProgressColumn):
    """`12.0 MiB / 40.0 MiB` in `format_size`'s units, as --limit-rate counts them."""

    def __init__(self) -> None:
        # Never wrapped inside the cell: on a narrow terminal the image name gives way instead.
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> RenderableType:
        done = format_size(int(task.completed))
        if task.total is None:
            return Text(done if task.completed else "", style="progress.download")
        return Text(f"{done} / {format_size(int(task.total))}", style="progress.download")


class _RateColumn(ProgressColumn):
    """`3.2 MiB/s`: the same powers of 1024 as the sizes and as `--limit-rate 3M`."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> RenderableType:
        speed = task.finished_speed or task.speed
        if not speed or task.fields.get("phase"):
            return Text("")
        return Text(f"{format_size(int(speed))}/s", style="progress.data.speed")


class _RemainingColumn(TimeRemainingColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("phase"):
            return Text("")
        return super().render(task)


class _GuardedProgress(Progress):
    """A `Progress` whose drawing cannot raise: an error goes to `on_error` and the bars go
    blank. Drawing happens in rich's refresh thread too, where an exception would kill the
    thread and come back out of `stop()` in the run's own thread."""

    def __init__(
        self, *columns: ProgressColumn, on_error: Callable[[BaseException], None], **kwargs: Any
    ) -> None:
        self._on_error = on_error
        self.failed = False
        super().__init__(*columns, **kwargs)
        refresh = self.live.refresh

        def guarded_refresh() -> None:
            if self.failed:
                return
            try:
                refresh()
            except Exception as exc:  # any drawing error ends the bars only
                self.failed = True
                on_error(exc)

        self.live.refresh = guarded_refresh  # type: ignore[method-assign]

    def get_renderables(self) -> Iterable[RenderableType]:
        if self.failed:
            return
        try:
            table = self.make_tasks_table(self.tasks)
        except Exception as exc:
            self.failed = True
            self._on_error(exc)
            return
        yield table


@dataclass
class _Image:
    """One image on the screen: its bar and what its bytes add to the overall one."""

    task: TaskID
    size: int | None = None
    moved: int = 0
    skipped: int = 0
    phase: str | None = None
    runs: int = 1
    """Images listed twice in a run share one bar."""

    @property
    def remaining(self) -> int:
        return max(0, (self.size or 0) - self.moved - self.skipped)


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Run a `RichProgress` event; on any error, and after one, the plain `TextLog` line."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: RichProgress, *args: Any, **kwargs: Any) -> None:
        if not self.progress.failed:
            try:
                method(self, *args, **kwargs)
                return
            except Exception as exc:  # the display must not abort the run
                self.progress.failed = True
                self._error(exc)
        self.close()
        getattr(TextLog, name)(self, *args, **kwargs)

    return wrapper


class RichProgress(TextLog):
    """Live bars on a terminal: per image in flight, and the whole run; lines as images end.

    The display cannot abort a run: an error while drawing is logged once, the bars stop, and
    the run goes on with `TextLog`'s plain lines.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.console = Console(file=self.stderr, highlight=False)
        self.progress = _GuardedProgress(
            *self._columns(),
            console=self.console,
            transient=True,
            # Result lines on stdout go above the bars when stdout is this terminal; a piped
            # stdout keeps them (rich would send them to its console, on stderr).
            redirect_stdout=self.stdout.isatty(),
            on_error=self._error,
        )
        self._images: dict[str, _Image] = {}
        self._sizes: dict[str, int] = {}
        """Sizes of images not started yet."""
        self._overall: TaskID | None = None
        self._total: int | None = None
        self._moved = 0
        self._count = 0
        self._done = 0
        self._started = False
        self._failure: BaseException | None = None
        self._rerouted: list[logging.StreamHandler[Any]] = []
        self._failure_logged = False

    @staticmethod
    def _columns() -> list[ProgressColumn]:
        return [
            TextColumn(
                "{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")
            ),
            _BarOrPhase(),
            _BytesColumn(),
            _RateColumn(),
            _RemainingColumn(),
        ]

    def __enter__(self) -> RichProgress:
        try:
            self.progress.start()
            self._started = True
            self._route_logs()
        except Exception as exc:
            self.progress.failed = True
            self._error(exc)
        return self

    def _route_logs(self) -> None:
        """Log lines (a retry, a warning) go above the bars, not through them: while the bars
        are live, rich's proxy for stderr stands in for it in logging's handlers too."""
        proxy = sys.stderr  # rich's, while live on this terminal
        if proxy is self.stderr:
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stderr:
                handler.setStream(proxy)
                self._rerouted.append(handler)

    def _error(self, exc: BaseException) -> None:
        """Remember the first drawing error; it is logged once the bars are gone (a line
        written under live bars would be drawn over)."""
        if self._failure is None:
            self._failure = exc

    def close(self) -> None:
        if self._started:
            self._started = False
            try:
                self.progress.stop()
            except Exception as exc:
                self.progress.failed = True
                self._error(exc)
        while self._rerouted:
            self._rerouted.pop().setStream(self.stderr)
        if self._failure is not None and not self._failure_logged:
            self._failure_logged = True
            log.warning(
                "progress display failed (%s: %s); going on without progress bars",
                type(self._failure).__name__,
                self._failure,
                exc_info=self._failure if log.isEnabledFor(logging.DEBUG) else None,
            )

    def _overall_text(self) -> str:
        return f"[bold]all images[/] {self._done}/{self._count}"

    def _show_overall(self) -> None:
        if self._overall is None:
            self._overall = self.progress.add_task(self._overall_text(), total=None)
        self.progress.update(
            self._overall,
            description=self._overall_text(),
            total=self._total,
            completed=self._moved,
        )

    @_guarded
    def on_run_start(self, images: int, *, what: str = "", dry_run: bool = False) -> None:
        with self._lock:
            self._count = images
            self._show_overall()

    @staticmethod
    def _label(source: str) -> str:
        return source if len(source) <= 48 else "…" + source[-47:]

    def _show(self, image: _Image) -> None:
        """The image's bar: bytes still to move, or its phase in words."""
        total = None if image.size is None else max(0, image.size - image.skipped)
        phase = image.phase
        if phase is None and image.size is not None and image.remaining == 0:
            phase = "finishing"
        self.progress.update(image.task, total=total, completed=image.moved, phase=phase)

    @_guarded
    def on_image_start(self, source: str) -> None:
        with self._lock:
            image = self._images.get(source)
            if image is not None:
                image.runs += 1
                return
            task = self.progress.add_task(
                escape(self._label(source)), total=None, phase="reading manifests"
            )
            image = _Image(task, phase="reading manifests")
            self._images[source] = image
            if source in self._sizes:  # already in the overall total
                image.size = self._sizes.pop(source)
                image.phase = None
                self._show(image)

    @_guarded
    def on_image_size(self, source: str, nbytes: int) -> None:
        with self._lock:
            image = self._images.get(source)
            if image is None:  # sized before it starts: counts in the overall total now
                if source not in self._sizes:
                    self._sizes[source] = nbytes
                    self._total = (self._total or 0) + nbytes
                    self._show_overall()
                return
            if image.size is not None:
                return
            image.size = nbytes
            image.phase = None
            self._total = (self._total or 0) + nbytes - image.skipped
            self._show(image)
            self._show_overall()

    @_guarded
    def on_image_phase(self, source: str, phase: str) -> None:
        with self._lock:
            image = self._images.get(source)
            if image is not None:
                image.phase = phase
                self._show(image)

    @_guarded
    def on_image_bytes(self, source: str, moved: int = 0, skipped: int = 0) -> None:
        """Moved bytes advance the bars; skipped ones shrink their totals, so rates and ETAs
        count only what really moves."""
        with self._lock:
            image = self._images.get(source)
            if image is None:
                return
            image.moved += moved
            image.skipped += skipped
            self._moved += moved
            if skipped and image.size is not None and self._total is not None:
                self._total -= skipped
            self._show(image)
            self._show_overall()

    @_guarded
    def on_image_done(self, result: ImageResult) -> None:
        with self._lock:
            image = self._images.get(result.source)
            if image is not None:
                image.runs -= 1
                if image.runs <= 0:
                    del self._images[result.source]
                    self.progress.remove_task(image.task)
                    # What the image will not move (skipped, failed) leaves the overall total.
                    if image.size is not None and self._total is not None:
                        self._total -= image.remaining
            self._done += 1
            self._show_overall()
        self.console.print(self._result_line(result), highlight=False)

    def _result_line(self, result: ImageResult) -> str:
        colours = {"failed": "red", "archived": "green", "planned": "cyan", "interrupted": "yellow"}
        colour = colours.get(result.status, "")
        if result.failed:
            text = escape(self.scrub(result.failure_line))
        else:
            text = escape(f"{result.source} {_short(result.digest)} {_bytes_text(result)}")
        word = f"[{colour}]{result.status:<8}[/]" if colour else f"{result.status:<8}"
        return f"{word} {text} [dim]{result.seconds:.1f}s[/]"

    @_guarded
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

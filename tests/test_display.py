"""Displays: which one a terminal gets, what each prints, and that secrets never show."""

from __future__ import annotations

import io
import json
import logging
import re
import threading

import pytest
from rich.progress import ProgressColumn, Task
from rich.text import Text

from pipeline.batch.report import ImageResult, RunReport
from pipeline.copy.events import ImageEvents
from pipeline.display import JsonLog, RichProgress, TextLog, open_display

SECRET = "hunter2-Sekret"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as rich and `open_display` check."""

    def isatty(self) -> bool:
        return True


def _report() -> RunReport:
    report = RunReport()
    report.add(
        ImageResult(
            "reg.example/team/app:1.0",
            "archived",
            digest="sha256:" + "a" * 64,
            bytes_downloaded=3 * 1024 * 1024,
            bytes_uploaded=3 * 1024 * 1024 + 4096,
            bytes_already_stored=1024,
            seconds=1.25,
            tar_key="images/reg.example/team/app/1.0.tar",
        )
    )
    report.add(
        ImageResult(
            "reg.example/team/app:2.0",
            "failed",
            error=f"reg.example: 401 unauthorized for user bob password {SECRET} [denied]",
            seconds=0.5,
        )
    )
    report.finish()
    return report


def _drive(display: ImageEvents, report: RunReport) -> None:
    """The events a run of `report`'s images sends, from several threads as a run does."""
    ok, bad = report.results
    display.on_image_start(ok.source)
    display.on_image_start(bad.source)
    display.on_image_size(ok.source, ok.bytes_downloaded + ok.bytes_already_stored)
    threads = [
        threading.Thread(target=display.on_image_bytes, args=(ok.source,), kwargs={"moved": 1024})
        for _ in range(3 * 1024)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    display.on_image_bytes(ok.source, skipped=ok.bytes_already_stored)
    display.on_bytes("reg.example/team/app@sha256:" + "b" * 64, 10)
    display.on_image_done(bad)
    display.on_image_done(ok)


def test_open_display_picks_by_format_terminal_and_quiet() -> None:
    tty, pipe = Terminal(), io.StringIO()
    assert isinstance(open_display("json", stderr=tty), JsonLog)
    assert isinstance(open_display("text", stderr=tty), RichProgress)
    assert type(open_display("text", stderr=pipe)) is TextLog
    quiet = open_display("text", quiet=True, stderr=tty)
    assert type(quiet) is TextLog and quiet.quiet
    assert isinstance(open_display(stderr=pipe), ImageEvents)


def test_text_log_one_line_per_start_and_end() -> None:
    out, err = io.StringIO(), io.StringIO()
    report = _report()
    with TextLog(out, err, [SECRET]) as display:
        display.on_run_start(2, what="spec.yaml")
        _drive(display, report)
        display.on_run_done(report)
    display.summary(report)
    lines = err.getvalue().splitlines()
    assert all(re.match(r"^\d\d:\d\d:\d\d \S+ +\S", line) for line in lines)
    words = [line.split()[1] for line in lines]
    assert words == ["run", "start", "start", "failed", "archived", "done"]
    archived = lines[4]
    assert "reg.example/team/app:1.0 sha256:aaaaaaaaaaaa" in archived
    assert "3.0 MiB down" in archived and "1.0 KiB already stored" in archived
    assert archived.endswith("1.25s")
    assert "1 archived, 1 failed" in lines[5]
    assert SECRET not in err.getvalue() + out.getvalue()
    # stdout: one result line per image, for scripts.
    assert out.getvalue().splitlines() == [
        "archived  reg.example/team/app:1.0 sha256:"
        + "a" * 64
        + " -> images/reg.example/team/app/1.0.tar",
        "failed    reg.example/team/app:2.0: reg.example: 401 unauthorized for user bob "
        "password *** [denied]",
    ]


def test_quiet_text_log_shows_failures_only() -> None:
    out, err = io.StringIO(), io.StringIO()
    report = _report()
    with TextLog(out, err, [SECRET], quiet=True) as display:
        display.on_run_start(2)
        _drive(display, report)
        display.on_run_done(report)
    display.summary(report)
    words = [line.split()[1] for line in err.getvalue().splitlines()]
    assert words == ["failed", "done"]
    assert out.getvalue() == ""


def test_json_log_objects_per_event_scrubbed() -> None:
    out, err = io.StringIO(), io.StringIO()
    report = _report()
    with JsonLog(out, err, [SECRET]) as display:
        display.on_run_start(2, what="spec.yaml", dry_run=False)
        _drive(display, report)
        display.on_run_done(report)
    events = [json.loads(line) for line in err.getvalue().splitlines()]
    assert [e["event"] for e in events] == [
        "run_start",
        "image_start",
        "image_start",
        "image_size",
        "image_done",
        "image_done",
        "run_done",
    ]
    assert all(e["time"].endswith("Z") for e in events)
    failed = events[4]
    assert failed["image"] == "reg.example/team/app:2.0" and failed["status"] == "failed"
    assert "***" in failed["error"] and SECRET not in err.getvalue()
    done = events[5]
    assert done["bytes_downloaded"] == 3 * 1024 * 1024 and done["digest"].startswith("sha256:")
    assert events[-1]["totals"]["images"] == 2 and events[-1]["exit_code"] == 1


def test_rich_progress_bars_and_summary_table() -> None:
    out, err = Terminal(), Terminal()
    report = _report()
    with RichProgress(out, err, [SECRET]) as display:
        display.on_run_start(2, what="spec.yaml")
        _drive(display, report)
        tasks = display.progress.tasks
        assert len(tasks) == 1  # finished images' bars are gone; the overall bar stays
        overall = tasks[0]
        assert overall.completed == 3 * 1024 * 1024
        assert overall.total == 3 * 1024 * 1024  # skipped bytes shrink the total
        display.on_run_done(report)
    display.summary(report)
    shown = err.getvalue()
    assert "reg.example/team/app:1.0" in shown and "[denied]" in shown
    table = out.getvalue()
    for text in ("IMAGE", "STATUS", "DOWN", "reg.example/team/app:1.0", "3.0 MiB", "***"):
        assert text in table, text
    assert "2 image(s)" in table and "1 archived, 1 failed" in table
    assert SECRET not in shown + table


def test_dry_run_wording() -> None:
    out, err = io.StringIO(), io.StringIO()
    report = RunReport()
    report.add(ImageResult("r.example/a:1", "planned", digest="sha256:" + "c" * 64,
                           bytes_downloaded=2048, bytes_already_stored=1024))  # fmt: skip
    report.finish()
    with TextLog(out, err) as display:
        display.on_run_start(1, dry_run=True)
        display.on_image_done(report.results[0])
        display.on_run_done(report)
    text = err.getvalue()
    assert "dry run: nothing is written" in text
    assert "would download 2.0 KiB, 1.0 KiB already stored" in text
    assert "1 planned; would download 2.0 KiB" in text


def _screen(display: RichProgress) -> str:
    """What the bars look like now, drawn as rich draws them."""
    from rich.console import Console

    out = Terminal()
    Console(file=out, width=140, color_system=None).print(
        display.progress.make_tasks_table(display.progress.tasks)
    )
    return out.getvalue()


def _row(screen: str, text: str) -> str:
    return next(line for line in screen.splitlines() if text in line)


def test_rich_progress_phases_in_words_and_binary_units() -> None:
    """Before its size is known an image reads manifests; after its bytes it names the step
    (the tar, the record) or says "finishing", instead of a bar sitting at 100 %."""
    mib = 1024 * 1024
    with RichProgress(Terminal(), Terminal()) as display:
        display.on_run_start(2)
        display.on_image_start("r.example/a:1")
        assert "reading manifests" in _row(_screen(display), "r.example/a:1")
        display.on_image_size("r.example/a:1", 3 * mib)
        display.on_image_bytes("r.example/a:1", moved=mib)
        row = _row(_screen(display), "r.example/a:1")
        assert "1.0 MiB / 3.0 MiB" in row and "reading manifests" not in row
        display.on_image_bytes("r.example/a:1", moved=mib, skipped=mib)
        assert "finishing" in _row(_screen(display), "r.example/a:1")
        display.on_image_phase("r.example/a:1", "composing the tar")
        row = _row(_screen(display), "r.example/a:1")
        assert "composing the tar" in row and "2.0 MiB / 2.0 MiB" in row
        screen = _screen(display)
        assert "MB" not in screen.replace("MiB", "") and "kB" not in screen


def test_rich_progress_overall_total_counts_images_not_started() -> None:
    """Sizes may come before an image starts: the overall bar counts them at once; what an
    image will not move (skipped, failed) leaves the total when it ends."""
    with RichProgress(Terminal(), Terminal()) as display:
        display.on_run_start(3)
        for name, size in (
            ("r.example/a:1", 4096),
            ("r.example/b:1", 2048),
            ("r.example/c:1", 1024),
        ):
            display.on_image_size(name, size)
        overall = display.progress.tasks[0]
        assert overall.total == 7168
        display.on_image_start("r.example/a:1")
        display.on_image_size("r.example/a:1", 4096)  # sized again once started: counted once
        display.on_image_bytes("r.example/a:1", moved=4096)
        display.on_image_done(ImageResult("r.example/a:1", "archived", bytes_downloaded=4096))
        display.on_image_start("r.example/b:1")
        display.on_image_done(ImageResult("r.example/b:1", "skipped", tar_key="images/b/1.tar"))
        display.on_image_start("r.example/c:1")
        display.on_image_bytes("r.example/c:1", moved=100)
        display.on_image_done(ImageResult("r.example/c:1", "failed", error="boom"))
        overall = display.progress.tasks[0]
        assert (overall.completed, overall.total) == (4196, 4196)
    assert "already archived" in display.stderr.getvalue()


class _Broken(Exception):
    pass


class _FailingColumn(ProgressColumn):
    """A column that fails on its third drawing, as a rendering bug would, mid-run."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render(self, task: Task) -> Text:
        self.calls += 1
        if self.calls >= 3:
            raise _Broken("cannot draw")
        return Text("ok")


def test_rich_progress_rendering_error_cannot_abort_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A drawing error, in rich's refresh thread or in an event, is logged once; the run's
    events go on and end in plain lines and the summary, nothing raises."""
    column = _FailingColumn()

    class Fragile(RichProgress):
        @staticmethod
        def _columns() -> list[ProgressColumn]:
            return [column]

    out, err = Terminal(), Terminal()
    report = _report()
    with caplog.at_level(logging.WARNING, logger="bale.display"):
        with Fragile(out, err, [SECRET]) as display:
            display.on_run_start(2)
            display.on_image_start("reg.example/team/app:0.9")
            display.progress.refresh()
            display.progress.refresh()  # draws three cells by now: the third fails
            assert display.progress.failed
            display.progress.refresh()  # after the error: draws nothing, raises nothing
            _drive(display, report)
            display.on_run_done(report)
        display.summary(report)
    warnings = [r for r in caplog.records if "progress display failed" in r.getMessage()]
    assert len(warnings) == 1 and "cannot draw" in warnings[0].getMessage()
    assert column.calls >= 3
    lines = err.getvalue()
    assert "reg.example/team/app:1.0" in lines and "1 archived, 1 failed" in lines
    assert "IMAGE" in out.getvalue() and SECRET not in lines + out.getvalue()


def test_rich_progress_log_lines_go_above_the_bars() -> None:
    """A warning logged while bars are live is printed as its own line through rich (not
    written under the bars, where the next refresh would draw over it)."""
    out, err = Terminal(), Terminal()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with RichProgress(out, err) as display:
            display.on_run_start(1)
            assert handler.stream is not err  # rich's proxy while live
            logging.getLogger("bale.retry").warning("retrying r.example after 503")
            display.on_run_done(_report())
        assert handler.stream is err
    finally:
        root.removeHandler(handler)
    assert "retrying r.example after 503" in err.getvalue()

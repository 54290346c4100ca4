"""Displays: which one a terminal gets, what each prints, and that secrets never show."""

from __future__ import annotations

import io
import json
import re
import threading

from pipeline.batch.report import ImageResult, RunReport
from pipeline.display import JsonLog, RichProgress, TextLog, open_display
from pipeline.ops.events import ImageEvents

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

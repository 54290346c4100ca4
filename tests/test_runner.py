"""The one batch loop (`pipeline/batch/runner.py`): order, fail-fast, phases, listing failures
and Ctrl-C/SIGTERM, the rules archive, run, restore and sync share."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from pipeline.batch.report import ImageResult
from pipeline.batch.runner import run_batch
from pipeline.transfer.cancel import RUN


@pytest.fixture(autouse=True)
def _token() -> Iterator[None]:
    RUN.clear()
    yield
    RUN.clear()


def _ok(item: str) -> ImageResult:
    return ImageResult(item, "archived")


def test_results_keep_item_order_whatever_finishes_first() -> None:
    first_may_finish = threading.Event()

    def one(item: str) -> ImageResult:
        if item == "a":
            assert first_may_finish.wait(10)
        else:
            first_may_finish.set()
        return _ok(item)

    report = run_batch(["a", "b", "c"], one, jobs=3, name=str)
    assert [r.source for r in report.results] == ["a", "b", "c"]
    assert report.finished is not None and report.exit_code() == 0


def test_fail_fast_starts_nothing_after_a_failure() -> None:
    started: list[str] = []

    def one(item: str) -> ImageResult:
        started.append(item)
        return ImageResult(item, "failed", error="boom") if item == "b" else _ok(item)

    report = run_batch(["a", "b", "c", "d"], one, jobs=1, name=str, fail_fast=True)
    assert started == ["a", "b"]
    assert [r.status for r in report.results] == ["archived", "failed"]
    assert report.exit_code() == 1

    started.clear()
    report = run_batch(["a", "b", "c", "d"], one, jobs=1, name=str)
    assert started == ["a", "b", "c", "d"] and len(report.failures) == 1


def test_later_items_start_after_the_others_and_not_after_a_failure() -> None:
    started: list[str] = []

    def one(item: str) -> ImageResult:
        started.append(item)
        return _ok(item)

    sig = lambda item: item.endswith(".sig")  # noqa: E731
    report = run_batch(["a.sig", "a", "b"], one, jobs=1, name=str, later=sig)
    assert started == ["a", "b", "a.sig"]
    assert [r.source for r in report.results] == ["a", "b", "a.sig"]

    started.clear()
    failing = lambda item: ImageResult(item, "failed", error="x")  # noqa: E731
    report = run_batch(["a.sig", "a"], failing, jobs=1, name=str, later=sig, fail_fast=True)
    assert [r.source for r in report.results] == ["a"]


def test_a_failed_listing_leads_and_with_fail_fast_stops_the_run() -> None:
    listed = [ImageResult("host/repo", "failed", error="cannot list")]
    report = run_batch(["a"], _ok, jobs=2, name=str, listed=listed, fail_fast=True)
    assert [r.source for r in report.results] == ["host/repo"]
    report = run_batch(["a"], _ok, jobs=2, name=str, listed=listed)
    assert [(r.source, r.status) for r in report.results] == [
        ("host/repo", "failed"),
        ("a", "archived"),
    ]


def test_a_signal_interrupts_the_running_image_and_starts_no_other() -> None:
    calls: list[str] = []

    def one(item: str) -> ImageResult:
        calls.append(item)
        RUN.cancel(signal.SIGTERM)
        return ImageResult(item, "failed", error="connection reset")

    seen: list[str] = []
    report = run_batch(
        ["a", "b", "c"], one, jobs=1, name=str, on_result=lambda item, _r: seen.append(item)
    )
    assert calls == ["a"] and seen == ["a"]
    assert [r.status for r in report.results] == ["interrupted"] * 3
    assert report.results[1].error == "interrupted by SIGTERM before it started"
    assert report.exit_code() == 143

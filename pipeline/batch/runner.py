"""The one loop over many images, for `archive`, `run`, `restore` and `sync`.

Images run a few at a time (their blob transfers are bounded by the session on top); results
are kept in item order in a `RunReport`, which only records them. What stops the loop lives here
once:

- a failure with `fail_fast` (or a failed listing before any image): images not yet started are
  not attempted (and not reported);
- Ctrl-C, SIGTERM or `--command-timeout` (`transfer/cancel.py`): no further image starts;
  each is reported `interrupted` under its name, as is every image the signal or timeout cut.

    report = run_batch(targets, restorer.restore, jobs=4, name=lambda t: str(t.source))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from pipeline.batch.report import ImageResult, RunReport
from pipeline.transfer import cancel

T = TypeVar("T")


def run_batch(
    items: Sequence[T],
    one: Callable[[T], ImageResult],
    *,
    jobs: int,
    name: Callable[[T], str],
    fail_fast: bool = False,
    on_result: Callable[[T, ImageResult], None] | None = None,
    later: Callable[[T], bool] | None = None,
    listed: Sequence[ImageResult] = (),
    started: datetime | None = None,
) -> RunReport:
    """Run `one` on every item, at most `jobs` at once, into a report in item order.

    `listed` are failures found while listing the images (a repository whose tags could not be
    read): they lead the report, and with `fail_fast` one of them stops the run before any image.
    Items for which `later` holds (referrer tags, pushed after their subjects) start only once
    every other item is done. `on_result` sees each result as it comes, one at a time.
    """
    report = RunReport(started=started or datetime.now(UTC), results=list(listed))
    # A listing cut by a signal is `interrupted`, not failed: its images are then reported
    # `interrupted` too (none starts).
    if fail_fast and any(f.failed for f in listed):
        report.finish()
        return report
    stop = threading.Event()
    lock = threading.Lock()

    def run(item: T) -> ImageResult | None:
        if cancel.RUN.cancelled:
            return ImageResult(
                name(item), "interrupted", error=f"{cancel.RUN.error()} before it started"
            )
        if stop.is_set():
            return None
        result = one(item)
        if result.failed and fail_fast:
            stop.set()
        if on_result is not None:
            with lock:
                on_result(item, result)
        return result.after_signal()

    phases = (
        [items]
        if later is None
        else [
            [i for i in items if not later(i)],
            [i for i in items if later(i)],
        ]
    )
    with cancel.RUN.awaited():  # the images end on the token; the report is written after
        for phase in phases:
            if phase and not stop.is_set():
                with ThreadPoolExecutor(
                    max(1, min(len(phase), jobs)), thread_name_prefix="bale-image"
                ) as pool:
                    for future in [pool.submit(run, item) for item in phase]:
                        result = future.result()
                        if result is not None:
                            report.add(result)
    report.finish()
    return report

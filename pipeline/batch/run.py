"""`bale run`: the images a spec selects (batch/plan.py), archived in parallel.

plan = expand_spec(spec, session, defaults, shard=(0, 2))   # batch/plan.py: tag lists
report = run_plan(plan, Archiver(bucket, session), options)  # or dryrun.Planner
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from pipeline.batch.plan import RunPlan
from pipeline.batch.report import ImageResult, RunReport
from pipeline.batch.runner import run_batch
from pipeline.errors import UsageError
from pipeline.ops.archive import ArchiveOptions, ImageWorker
from pipeline.refs import Reference


def run_plan(
    plan: RunPlan,
    worker: ImageWorker,
    options: ArchiveOptions | None = None,
    *,
    fail_fast: bool = False,
    on_result: Callable[[ImageResult], None] | None = None,
    overrides: Mapping[Reference, ArchiveOptions] | None = None,
) -> RunReport:
    """Archive (or plan) the images in parallel; listing failures lead the report.
    `overrides`: the options of images a spec entry says more for (its storage class).

    With `fail_fast`, a listing failure stops the run before any image starts.
    """
    stopped = fail_fast and any(f.failed for f in plan.failures)  # not an `interrupted` listing
    with worker.sizes_ahead([] if stopped else list(plan.images), options):
        return run_batch(
            plan.images,
            lambda image: worker.archive(
                *image, _options_of(plan, image[0], (overrides or {}).get(image[0], options))
            ),
            jobs=worker.session.transfer.jobs,
            name=lambda image: str(image[0]),
            fail_fast=fail_fast,
            on_result=None if on_result is None else lambda _image, result: on_result(result),
            listed=plan.failures,
            started=plan.started,
        )


def _options_of(
    plan: RunPlan, ref: Reference, options: ArchiveOptions | None
) -> ArchiveOptions | None:
    """The run's options, immutable for an image whose spec entry says so."""
    if ref not in plan.immutable:
        return options
    return replace(options or ArchiveOptions(), immutable=True)


def check_output_paths(paths: Iterable[str | None]) -> None:
    """Report files must be writable where they are asked for: checked before any transfer,
    so a typo in `--report` cannot waste a night's run."""
    for path in paths:
        if not path:
            continue
        target = Path(path)
        if target.is_dir():
            raise UsageError(f"report path {path!r} is a directory")
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"report path {path!r}: directory {str(parent)!r} does not exist")

"""What a command opens before its work: the archive, the transfer session, the display."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pipeline.archive.bucket import ArchiveBucket
    from pipeline.cli.options import TransferFlags
    from pipeline.copy.session import Session
    from pipeline.display import Display


@contextlib.contextmanager
def open_session(transfer: TransferFlags) -> Iterator[Session]:
    """The command's session. While it is open, Ctrl-C and SIGTERM stop the work cleanly (the
    first signal cancels, see `pipeline/transfer/cancel.py`; the second exits at once)."""
    from pipeline.copy.session import Session, TransferOptions
    from pipeline.registry.client import READ_TIMEOUT
    from pipeline.transfer.cancel import on_signals
    from pipeline.transfer.retry import RetryPolicy

    options = TransferOptions(
        jobs=transfer.jobs,
        retry=RetryPolicy(retries=transfer.retries),
        limit_rate=transfer.limit_rate,
        read_timeout=transfer.read_timeout or READ_TIMEOUT,
    )
    with on_signals(), Session(options) as session:
        yield session


def open_bucket(
    url: str,
    endpoint_url: str | None,
    retries: int = 5,
    *,
    existing: bool = True,
    write: bool = False,
) -> ArchiveBucket:
    """The archive at `url`, checked once for reading (or `write`) before any image; with
    `existing`, a local directory that is not there is bad input (a typo must not read as an
    empty, clean archive)."""
    from pathlib import Path

    from pipeline.archive.bucket import ArchiveBucket
    from pipeline.errors import UsageError
    from pipeline.store.url import open_store
    from pipeline.transfer.retry import RetryPolicy

    retry = RetryPolicy(retries=retries)
    store = open_store(
        url, endpoint_url=endpoint_url, retry=retry, check="write" if write else "read"
    )
    root = getattr(store, "root", None)
    if existing and root is not None and not Path(root).is_dir():
        raise UsageError(f"no archive at {url}: {root} is not a directory")
    return ArchiveBucket(store)


def open_display(secrets: list[str]) -> Display:
    """Progress bars, log lines or JSON events, from `main`'s --log-format / -q."""
    from pipeline.display import open_display

    root = click.get_current_context().find_root().params
    return open_display(
        root.get("log_format") or "text", quiet=bool(root.get("quiet")), secrets=secrets
    )

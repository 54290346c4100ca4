"""What a command opens before its work: the archive, the transfer session, the display."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import click

from pipeline.cli.options import StoreFlags, store_flags
from pipeline.errors import UsageError

if TYPE_CHECKING:
    from pipeline.archive.bucket import ArchiveBucket
    from pipeline.cli.options import TransferFlags
    from pipeline.copy.session import Session, TransferOptions
    from pipeline.display import Display
    from pipeline.store.base import ObjectStore
    from pipeline.store.encryption import Encryption
    from pipeline.store.protection import Lock, LockMode


@contextlib.contextmanager
def open_session(transfer: TransferFlags) -> Iterator[Session]:
    """The command's session. While it is open, Ctrl-C and SIGTERM stop the work cleanly (the
    first signal cancels, see `pipeline/transfer/cancel.py`; the second exits at once)."""
    from pipeline.copy.session import Session
    from pipeline.transfer.cancel import on_signals

    with on_signals(), Session(session_options(transfer)) as session:
        yield session


def session_options(transfer: TransferFlags) -> TransferOptions:
    """What the transfer flags say a session does (`bale serve` opens its own session: uvicorn
    owns the signals there)."""
    from pipeline.copy.session import TransferOptions
    from pipeline.registry.client import READ_TIMEOUT
    from pipeline.transfer.retry import RetryPolicy

    return TransferOptions(
        jobs=transfer.jobs,
        retry=RetryPolicy(retries=transfer.retries),
        limit_rate=transfer.limit_rate,
        read_timeout=transfer.read_timeout or READ_TIMEOUT,
    )


def open_bucket(
    url: str,
    endpoint_url: str | None,
    retries: int = 5,
    *,
    existing: bool = True,
    write: bool = False,
    encryption: Encryption | None = None,
    written_to: bool | None = None,
) -> ArchiveBucket:
    """The archive at `url`, checked once for reading (or `write`) before any image; with
    `existing`, a local directory that is not there is bad input (a typo must not read as an
    empty, clean archive). The store flags (`options.StoreFlags`) apply: the encryption to
    every request (unless `encryption` is given), the Object Lock to every object written
    to the store a command writes (`written_to`, default `write`: also a dry run's, so that
    a lock the bucket cannot keep is said then too); the bucket's protection is asked here,
    once."""
    from pathlib import Path

    from pipeline.archive.bucket import ArchiveBucket
    from pipeline.store.url import open_store
    from pipeline.transfer.retry import RetryPolicy

    retry = RetryPolicy(retries=retries)
    flags = store_flags()
    if encryption is None:
        encryption = store_encryption(url)
    store = open_store(url, endpoint_url=endpoint_url, retry=retry, encryption=encryption)
    locking = flags.retain is not None or flags.legal_hold
    if locking and (write if written_to is None else written_to):
        store = store.with_lock(_lock(flags))  # refused, exit 2, before the write check
    store.check(write=write)
    root = getattr(store, "root", None)
    if existing and root is not None and not Path(root).is_dir():
        raise UsageError(f"no archive at {url}: {root} is not a directory")
    store.protection()  # asked once, now: kept for every write, ls and the report
    if encryption.customer:
        _prove_key(store)
    return ArchiveBucket(store)


def _prove_key(store: ObjectStore) -> None:
    """A wrong SSE-C key would fail every image, one by one: the HEAD of the first object
    under the prefix (records first: what every reader opens) says it once,
    WrongEncryptionKey, exit 2, before any. Two requests, with a key only; none on an
    empty store."""
    from pipeline.archive import layout

    for prefix in (layout.IMAGES_PREFIX, ""):
        for info in store.list(prefix):
            store.head(info.key)
            return


def store_encryption(url: str) -> Encryption:
    """The encryption --sse, --sse-kms-key-id, --sse-c-key-file ask for `url`'s store: exit 2
    for a combination that store cannot do, before anything is sent."""
    from pipeline.store.encryption import from_options
    from pipeline.store.url import parse_store_url

    flags = store_flags()
    return from_options(
        parse_store_url(url).scheme,
        flags.sse,
        kms_key_id=flags.sse_kms_key_id,
        key_file=flags.sse_c_key_file,
    )


def read_encryption(url: str, written: Encryption) -> Encryption:
    """What reading `url` needs when `written` is asked for another store (archive's --from,
    a tar source): SSE-C's key (the same key), nothing else; nothing for a local file."""
    from pipeline.store.encryption import NONE
    from pipeline.store.url import parse_store_url

    return written if written.customer and parse_store_url(url).scheme != "file" else NONE


def locations_encryption(locations: list[str]) -> Encryption:
    """For `copy`: the encryption asked for, checked for the bucket among `locations` (tars'
    s3:// or oss:// LOCs); with none, for a local file (so a --sse there is refused)."""
    from pipeline.store.encryption import NONE
    from pipeline.store.url import parse_store_url

    remote = [loc for loc in locations if parse_store_url(loc).scheme != "file"]
    if remote:
        return store_encryption(remote[0])
    return store_encryption("file:///") if store_flags()[:3] != (None,) * 3 else NONE


def _lock(flags: StoreFlags) -> Lock:
    from datetime import timedelta

    from pipeline.store.protection import Lock, retain_for

    if flags.retain is None:
        return Lock(legal_hold=flags.legal_hold)
    if flags.retain <= 0:
        raise UsageError(f"--retain must be more than 0 (got {flags.retain:g}s)")
    mode = cast("LockMode", flags.lock_mode.upper())
    return retain_for(mode, timedelta(seconds=flags.retain), legal_hold=flags.legal_hold)


def open_display(secrets: list[str]) -> Display:
    """Progress bars, log lines or JSON events, from `main`'s --log-format / -q."""
    from pipeline.display import open_display

    root = click.get_current_context().find_root().params
    return open_display(
        root.get("log_format") or "text", quiet=bool(root.get("quiet")), secrets=secrets
    )

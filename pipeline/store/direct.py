"""A large stream into a local file: filled buffers written on a thread of their own, past the
page cache.

Through the page cache a write is one more copy of every byte, and the fsync before the rename
then waits for all of it to reach the disk. For `bale copy` of a 1 GiB layer to a local tar
that copy was the largest cost after SHA-256 (a fifth of the process's CPU time, measured with
perf), on the same thread that reads the socket. Here the reading thread fills page-aligned
buffers (`readinto`: a verifying reader hashes each buffer as it fills it) and hands them to a
writer thread, which writes them with `O_DIRECT`: the disk takes the bytes from the buffer,
the writer only waits, and the final fsync has little left to do. Every write but the last is
a whole buffer at an offset that is a multiple of it, as `O_DIRECT` requires; the last (any
length), and every write on a filesystem that refuses `O_DIRECT` (tmpfs, some FUSE), go through
the page cache as before.

When `write_stream` returns, every byte is written; on any failure (the stream ends early or
fails its digest, the disk is full) it raises once the writer has stopped, and the caller
removes the file.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading
from typing import Protocol

from pipeline.errors import TransferError

BLOCK = 4 * 1024 * 1024
"""Bytes per buffer, per hash update and per write with `O_DIRECT`. Fewer, larger calls cost
less CPU: bale copy of a 1 GiB layer used 1.20-1.26 s of CPU with 4 MiB against 1.36-1.48 s
with 1 MiB (same wall time or better; 8 MiB no better, 256 KiB pieces hashed as they arrive
worse)."""

BUFFERS = 4
"""Buffers in rotation: one being filled, the rest queued for or in the disk."""

CACHED_BLOCK = 1024 * 1024
"""The same through the page cache, where 4 MiB writes are the slow ones: the kernel's copy into
the cache (copy_folio_from_iter_atomic) took 52% of the process's CPU, bale copy of 1 GiB 2.78 s
of CPU against 1.47 s with 1 MiB writes (and 1.68 s before any of this)."""

CACHED_BUFFERS = 8

MIN_SIZE = 8 * 1024 * 1024
"""Smaller objects are written the plain way: a few synchronous writes would not pay for the
thread and the buffers."""

DIRECT_FILESYSTEMS = frozenset({"ext4", "xfs", "btrfs"})
"""Where `O_DIRECT` is used: local disk filesystems that do direct I/O natively. Elsewhere (NFS,
FUSE, tmpfs, anything unknown) a direct write can be a synchronous round trip or a plain copy,
so those keep the page cache (still written from the writer thread)."""

_ALIGN = 4096
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class ReadableInto(Protocol):
    def readinto(self, buffer: bytearray | memoryview, /) -> int: ...


def write_stream(
    fd: int,
    stream: ReadableInto,
    size: int,
    *,
    what: str,
    block: int | None = None,
    buffers: int | None = None,
) -> None:
    """Write exactly `size` bytes of `stream` to `fd` (a new, empty file) from its position.

    `block` and `buffers` default to `BLOCK` and `BUFFERS` with `O_DIRECT`, else to
    `CACHED_BLOCK` and `CACHED_BUFFERS`."""
    direct = filesystem_of(fd) in DIRECT_FILESYSTEMS and _set_direct(fd, True)
    if block is None:
        block = BLOCK if direct else CACHED_BLOCK
    if buffers is None:
        buffers = BUFFERS if direct else CACHED_BUFFERS
    if direct and block % _ALIGN:
        direct = _set_direct(fd, False)
    writer = _Writer(fd, block, buffers, direct)
    try:
        offset = 0
        while offset < size:
            buf = writer.take()
            want = min(block, size - offset)
            view = memoryview(buf)[:want]
            got = 0
            while got < want:
                n = stream.readinto(view[got:])
                if not n:
                    raise TransferError(f"{what}: stream ended at {offset + got} of {size} bytes")
                got += n
            writer.put(buf, want)
            offset += want
        writer.finish()
    finally:
        writer.stop()


class _Writer:
    """The thread that writes filled buffers in order and hands them back."""

    def __init__(self, fd: int, block: int, count: int, direct: bool) -> None:
        self.fd = fd
        self.direct = direct
        """Whether `O_DIRECT` is on for `fd` (the caller set it; turned off for the tail)."""
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for _ in range(max(2, count)):
            self._free.put(mmap.mmap(-1, block))  # anonymous: page-aligned, as O_DIRECT wants
        self._todo: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="bale-write", daemon=True)
        self._thread.start()

    def take(self) -> mmap.mmap:
        """A free buffer (waiting for the disk if all are queued); a write error raises here."""
        buf = self._free.get()
        if self._error is not None:
            raise self._error
        return buf

    def put(self, buf: mmap.mmap, n: int) -> None:
        self._todo.put((buf, n))

    def finish(self) -> None:
        """Wait for every queued write; raise the first write error."""
        self._todo.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """After a failure: skip the writes still queued and wait for the thread to end."""
        if self._thread.is_alive():
            self._cancelled = True
            self._todo.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, n = item
            if self._error is None and not self._cancelled:
                try:
                    self._write(memoryview(buf)[:n])
                except BaseException as exc:
                    self._error = exc
            self._free.put(buf)

    def _write(self, view: memoryview) -> None:
        while view:
            if self.direct and len(view) % _ALIGN:
                self.direct = _set_direct(self.fd, False)
            try:
                n = os.write(self.fd, view)
            except OSError as exc:
                if self.direct and exc.errno == errno.EINVAL:  # the filesystem wants more
                    self.direct = _set_direct(self.fd, False)
                    continue
                raise
            if n <= 0:
                raise OSError(errno.EIO, "write() wrote nothing")
            view = view[n:]
            if self.direct and n % _ALIGN:  # a short write: the offset is unaligned from here
                self.direct = _set_direct(self.fd, False)


def filesystem_of(fd: int) -> str | None:
    """The type of the filesystem `fd` is on (`ext4`, `nfs4`, `fuse.sshfs`), from the mount
    table; None when no mount matches its device (a btrfs subvolume, no /proc)."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and fields[2] == device and "-" in fields:
                    at = fields.index("-")
                    if at + 1 < len(fields):
                        return fields[at + 1]
    except OSError:
        return None
    return None


def _set_direct(fd: int, on: bool) -> bool:
    """Turn `O_DIRECT` on or off for `fd`; whether it is on now."""
    if not _O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))
    except OSError:
        if on:  # this filesystem does not do direct I/O
            return False
        raise
    return on

"""A local directory as an object store (`file:///dir` or a plain path).

Objects are files at `<root>/<key>`. Every write goes to a temporary file under the reserved
`<root>/.bale-tmp/` first (same filesystem, so the final step is atomic) and becomes visible in
one step: `os.replace`, or for create-if-absent `os.link`, which fails if the key exists.
Objects are read-only files (no write bit): an accidental in-place write fails, while bale's
own replace (a rename) and delete (an unlink) need only the directory writable. A
crashed write leaves only a file under `.bale-tmp/`, which `list` never shows and
`list_uploads` reports (like a stale multipart upload) so that gc can remove it.

One difference from S3/OSS that a filesystem imposes: a key cannot also be a "directory" of
other keys (`a` and `a/b`). bale's layout never does that.

Storage classes: a directory has one. `with_storage_class` takes `STANDARD` (or `Standard`) and
refuses every other class as unknown (exit 2) rather than record a class nothing enforces;
`head` reports no class, and `restore` has nothing to do (NOT_NEEDED).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote

from pipeline.errors import StoreError, StoreNotFound, StoreUnusable, UsageError
from pipeline.store import direct, keys
from pipeline.store.base import (
    CopyRange,
    Inline,
    MultipartUpload,
    ObjectInfo,
    Piece,
    Readable,
    WriteResult,
)
from pipeline.store.classes import Thaw, check_storage_class, check_tier
from pipeline.store.compose import DeferredComposition
from pipeline.store.encryption import NONE, Encryption
from pipeline.store.protection import UNPROTECTED, Lock, Protection
from pipeline.store.source import READ_CHUNK, expect_end, read_exactly, read_up_to
from pipeline.transfer import cancel

TMP_DIR = ".bale-tmp"
"""Reserved top-level directory for writes in progress; never a key."""

_TMP_SUFFIX = ".tmp"
_MAX_STEM = 200


def _tmp_stem(key: str) -> str:
    """The key, %-encoded into one file name so that the temporary area stays flat (no
    directories to create and prune under concurrent writers) and gc can tell what a leftover
    was. Very long keys are cut and tagged with a hash: their reported key is then a best effort.
    """
    stem = quote(key, safe="")
    if len(stem) > _MAX_STEM:
        stem = stem[:160] + "~" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return stem


_ATTEMPTS = 10
"""Tries at creating a directory chain that concurrent writers' clean-up may be pruning."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _FileRange:
    """A byte range of an open file as a `Readable`."""

    def __init__(self, f: BinaryIO, length: int | None) -> None:
        self._f = f
        self._left = length

    def read(self, n: int = -1, /) -> bytes:
        if self._left is None:
            return self._f.read(n)
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(want) if want else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _FileRange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalStore:
    """A directory of files (see ObjectStore for the contract)."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.fsync = fsync
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- paths -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        keys.check_key(key)
        if key == TMP_DIR or key.startswith(TMP_DIR + "/"):
            raise StoreError(f"invalid object key {key!r}: {TMP_DIR}/ is reserved")
        return self.root / key

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def _error(self, exc: OSError, key: str) -> StoreError:
        what = self.describe(key)
        if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
            return StoreNotFound(f"{what}: not found")
        if isinstance(exc, PermissionError):
            return StoreError(f"{what}: permission denied")
        if exc.errno == errno.ENOSPC:
            return StoreError(f"{what}: no space left on device")
        return StoreError(f"{what}: {exc.strerror or exc}")

    # -- the up-front check ----------------------------------------------------------------

    def check(self, *, write: bool = False) -> None:
        """Read the directory (a missing one is an empty store); with `write`, create and remove
        a temporary file in it the way every write does, which also creates the directory."""
        try:
            if self.root.exists() and not self.root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            if self.root.is_dir():
                with os.scandir(self.root) as entries:
                    next(entries, None)
        except OSError as exc:
            raise StoreUnusable(f"cannot read {self.root}: {self._reason(exc)}") from exc
        if not write:
            return
        probe = self.root / TMP_DIR / f"check.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}"
        try:
            self._create(probe).close()
        except OSError as exc:
            raise StoreUnusable(f"cannot write to {self.root}: {self._reason(exc)}") from exc
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
            self._prune(probe.parent, self.root)

    @staticmethod
    def _reason(exc: OSError) -> str:
        if isinstance(exc, NotADirectoryError | FileExistsError):
            return "a file is in the way"
        if isinstance(exc, PermissionError):
            return "permission denied"
        return (exc.strerror or str(exc)).lower()

    # -- storage classes -------------------------------------------------------------------

    storage_class: str | None = None

    def with_storage_class(self, storage_class: str | None) -> LocalStore:
        if storage_class:
            check_storage_class("file", storage_class)
        return self

    # -- protection --------------------------------------------------------------------------

    encryption: Encryption = NONE
    """A directory is not encrypted by bale (open_store refuses asking it to be)."""

    def protection(self) -> Protection:
        return UNPROTECTED

    def with_lock(self, lock: Lock) -> LocalStore:
        """Nothing to ask of a directory but no lock: a retention is refused (exit 2) rather
        than promised and not kept."""
        if lock.any:
            raise UsageError(
                f"{self.url}: a local directory has no Object Lock; retention and legal hold "
                "need an S3 bucket with Object Lock"
            )
        return self

    def restore(self, key: str, *, days: int = 1, tier: str = "Standard") -> Thaw:
        check_tier(tier)
        if self.head(key) is None:
            raise StoreNotFound(f"{self.describe(key)}: not found")
        return Thaw.NOT_NEEDED

    # -- reading ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._error(exc, key) from exc
        if not path.is_file():
            return None
        return ObjectInfo(
            key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC)
        )

    def _open_range(self, key: str, start: int, length: int | None) -> _FileRange:
        path = self._path(key)
        if start < 0 or (length is not None and length < 0):
            raise StoreError(f"invalid range {start}+{length}")
        try:
            f = path.open("rb")
        except OSError as exc:
            raise self._error(exc, key) from exc
        try:
            size = os.fstat(f.fileno()).st_size
            if start > 0 and start >= size and length != 0:
                raise StoreError(f"{self.describe(key)}: range not satisfiable")
            f.seek(start)
        except BaseException:
            f.close()
            raise
        return _FileRange(f, length)

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        with self._open_range(key, start, length) as f:
            return f.read()

    def open(self, key: str, start: int = 0, length: int | None = None) -> Readable:
        return self._open_range(key, start, length)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        head, _, _ = prefix.rpartition("/")
        top = self.root / head if head else self.root
        found: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            for name in filenames:
                path = here / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    found.append((key, path.stat()))
                except FileNotFoundError:  # deleted while we walked
                    continue
        for key, st in sorted(found, key=lambda item: item[0]):
            yield ObjectInfo(
                key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC)
            )

    # -- writing ---------------------------------------------------------------------------

    def _write(self, key: str, fill: Callable[[BinaryIO], None], *, if_absent: bool) -> bool:
        """Write through a temporary file, then publish it at `key` in one atomic step."""
        final = self._path(key)
        tmp = self.root / TMP_DIR / f"{_tmp_stem(key)}.{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}"
        cancel.scratch_file(tmp)  # a second Ctrl-C exits at once: it removes the file then
        try:
            with self._create(tmp) as f:
                fill(f)
                f.flush()
                # Read-only once written (chmod a-w), so that nothing overwrites an archived
                # object in place by accident; our own replace below is a rename, which a
                # read-only target allows (the directory, not the file, must be writable).
                os.fchmod(f.fileno(), stat.S_IMODE(os.fstat(f.fileno()).st_mode) & ~0o222)
                if self.fsync:
                    os.fsync(f.fileno())
            if final.is_dir():
                raise StoreError(f"{self.describe(key)}: a directory of other keys is there")
            for attempt in range(_ATTEMPTS):
                try:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    if if_absent:
                        os.link(tmp, final)
                    else:
                        os.replace(tmp, final)
                    break
                except FileExistsError:
                    if os.path.lexists(final):
                        return False  # create-if-absent: the key is taken
                    if os.path.lexists(final.parent) and not final.parent.is_dir():
                        raise StoreError(
                            f"{self.describe(key)}: an object is in the way of its directory"
                        ) from None
                    if attempt == _ATTEMPTS - 1:  # mkdir met a directory a delete then pruned
                        raise
                except FileNotFoundError:
                    if attempt == _ATTEMPTS - 1:  # a concurrent delete keeps pruning our parent
                        raise
                except NotADirectoryError:
                    raise StoreError(
                        f"{self.describe(key)}: an object is in the way of its directory"
                    ) from None
            if self.fsync:
                _fsync_dir(final.parent)
            return True
        except NotADirectoryError as exc:  # the store's root (or a parent of it) is a file
            raise StoreError(
                f"{self.describe(key)}: cannot write: a file is in the way of the store's "
                "directories"
            ) from exc
        except OSError as exc:
            raise self._error(exc, key) from exc
        finally:
            # Never let the clean-up replace the error above with a raw OSError (a root under
            # a file makes even this unlink fail with NotADirectoryError).
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            cancel.scratch_done(tmp)
            self._prune(tmp.parent, self.root)

    @staticmethod
    def _create(path: Path) -> BinaryIO:
        """Create a new file and its directories, again if a concurrent writer's clean-up pruned
        a directory between our mkdir and our open (or inside mkdir's own parent chain)."""
        for attempt in range(_ATTEMPTS):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                return path.open("xb")
            except (FileNotFoundError, FileExistsError):
                # mkdir's "exists" can be a directory pruned right after; open's "not found"
                # one pruned right before. Both mean: try again.
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> WriteResult:
        def fill(f: BinaryIO) -> None:
            f.write(data)

        written = self._write(key, fill, if_absent=if_absent)
        return WriteResult(key=key, size=len(data), written=written, sent=len(data))

    def put_stream(
        self, key: str, stream: Readable, size: int | None = None, *, if_absent: bool = False
    ) -> WriteResult:
        what = self.describe(key)
        total = 0

        def fill(f: BinaryIO) -> None:
            nonlocal total
            if size is not None and size >= direct.MIN_SIZE and hasattr(stream, "readinto"):
                # Large, of known size, and able to fill our buffers: past the page cache.
                direct.write_stream(f.fileno(), stream, size, what=what)  # type: ignore[arg-type]
                total = size
                expect_end(stream, what=what, size=total)
                return
            while size is None or total < size:
                if size is None:
                    chunk = read_up_to(stream, READ_CHUNK)
                    if not chunk:
                        return
                else:
                    want = min(READ_CHUNK, size - total)
                    chunk = read_exactly(stream, want, what=what, offset=total, size=size)
                f.write(chunk)
                total += len(chunk)
            expect_end(stream, what=what, size=total)

        written = self._write(key, fill, if_absent=if_absent)
        return WriteResult(key=key, size=total, written=written, sent=total)

    def compose(self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False) -> WriteResult:
        sent = copied = 0

        def fill(f: BinaryIO) -> None:
            nonlocal sent, copied
            for piece in pieces:
                if isinstance(piece, Inline):
                    f.write(piece.data)
                    sent += piece.size
                else:
                    self._copy_range(piece, f)
                    copied += piece.size

        written = self._write(key, fill, if_absent=if_absent)
        return WriteResult(key=key, size=sent + copied, written=written, sent=sent, copied=copied)

    def start_compose(
        self, key: str, pieces: Sequence[Piece], *, if_absent: bool = False
    ) -> DeferredComposition:
        return DeferredComposition(self, key, pieces, if_absent=if_absent)

    def _copy_range(self, piece: CopyRange, out: BinaryIO) -> None:
        """Copy in the kernel where it can (copy_file_range), else through a buffer."""
        path = self._path(piece.key)
        if piece.start < 0 or piece.length < 0:
            raise StoreError(f"invalid range {piece}")
        try:
            src = path.open("rb")
        except OSError as exc:
            raise self._error(exc, piece.key) from exc
        with src:
            if piece.start + piece.length > os.fstat(src.fileno()).st_size:
                raise StoreError(
                    f"{self.describe(piece.key)}: range {piece.start}+{piece.length} "
                    "is past the end of the object"
                )
            out.flush()
            offset, left = piece.start, piece.length
            copy_file_range = getattr(os, "copy_file_range", None)
            while left and copy_file_range is not None:
                try:
                    n = copy_file_range(src.fileno(), out.fileno(), left, offset)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    copy_file_range = None
                    break
                if n == 0:
                    break
                offset += n
                left -= n
            out.seek(0, os.SEEK_END)
            if left:
                src.seek(offset)
                shutil.copyfileobj(_FileRange(src, left), out, READ_CHUNK)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        except OSError as exc:
            raise self._error(exc, key) from exc
        self._prune(path.parent, self.root)

    def _prune(self, directory: Path, stop: Path) -> None:
        """Remove directories left empty, up to (not including) `stop`."""
        while directory != stop and stop in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # -- stale writes ----------------------------------------------------------------------

    def list_uploads(
        self, prefix: str = "", *, older_than: timedelta | None = None
    ) -> Iterator[MultipartUpload]:
        """Temporary files of writes in progress or crashed, oldest activity as `initiated`
        (their modification time: a slow write that is still going looks young)."""
        tmp_root = self.root / TMP_DIR
        cutoff = datetime.now(UTC) - older_than if older_than is not None else None
        found = []
        try:
            names = sorted(os.listdir(tmp_root))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            path = tmp_root / name
            key = unquote(name.rsplit(".", 2)[0]) if name.endswith(_TMP_SUFFIX) else name
            if not key.startswith(prefix):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            modified = datetime.fromtimestamp(st.st_mtime, UTC)
            if cutoff is not None and modified > cutoff:
                continue
            found.append(MultipartUpload(key=key, upload_id=name, initiated=modified))
        yield from sorted(found, key=lambda u: (u.key, u.upload_id))

    def abort_upload(self, upload: MultipartUpload) -> None:
        if "/" in upload.upload_id or upload.upload_id in ("", ".", ".."):
            raise StoreError(f"invalid upload id {upload.upload_id!r}")
        path = self.root / TMP_DIR / upload.upload_id
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error(exc, upload.key) from exc
        self._prune(path.parent, self.root)

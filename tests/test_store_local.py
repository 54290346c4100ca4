"""Local-directory store specifics: temporary files, atomic publication, filesystem corners."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import StoreError
from pipeline.store.base import CopyRange, Inline
from pipeline.store.local import TMP_DIR, LocalStore

MiB = 1024 * 1024


class Watching(io.BytesIO):
    """A source that runs `check` once it has handed out `at` bytes."""

    def __init__(self, data: bytes, at: int, check) -> None:  # type: ignore[no-untyped-def]
        super().__init__(data)
        self._at = at
        self._check = check
        self.checked = False

    def read(self, n: int | None = -1, /) -> bytes:
        if not self.checked and self.tell() >= self._at:
            self.checked = True
            self._check()
        return super().read(n if n is None or n < 0 else min(n, 64 * 1024))


def test_nothing_visible_until_complete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    seen = {}

    def check() -> None:
        seen["head"] = store.head("images/app.tar")
        seen["listed"] = [o.key for o in store.list()]
        seen["uploads"] = [u.key for u in store.list_uploads()]

    source = Watching(b"x" * (3 * MiB), 2 * MiB, check)
    store.put_stream("images/app.tar", source, 3 * MiB)
    assert source.checked
    assert seen == {"head": None, "listed": [], "uploads": ["images/app.tar"]}
    assert store.read("images/app.tar") == b"x" * (3 * MiB)
    assert not (tmp_path / TMP_DIR).exists()  # cleaned up after itself


def test_reserved_directory_is_not_a_key(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in (TMP_DIR, f"{TMP_DIR}/x"):
        with pytest.raises(StoreError, match="reserved"):
            store.put(key, b"x")


def test_concurrent_create_if_absent_has_one_winner(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    results: dict[int, bool] = {}
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        barrier.wait()
        data = bytes([i]) * (MiB + i)
        results[i] = store.put_stream("blob", io.BytesIO(data), len(data), if_absent=True).written

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, written in results.items() if written]
    assert len(winners) == 1
    assert store.read("blob") == bytes([winners[0]]) * (MiB + winners[0])
    assert list(store.list_uploads()) == []


def test_key_under_an_object_is_an_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"file")
    with pytest.raises(StoreError):
        store.put("a/b", b"x")
    store.put("c/d", b"x")
    with pytest.raises(StoreError, match="directory"):
        store.put("c", b"x")
    assert store.head("c") is None


def test_delete_prunes_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b/c/d", b"x")
    store.put("a/keep", b"y")
    store.delete("a/b/c/d")
    assert not (tmp_path / "a" / "b").exists()
    assert (tmp_path / "a" / "keep").exists()


def test_compose_without_copy_file_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filesystems that cannot copy in the kernel still compose byte-exact, through a buffer."""

    def refuse(*_: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    store = LocalStore(tmp_path)
    data = os.urandom(3 * MiB + 7)
    store.put("src", data)
    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    result = store.compose("out", [Inline(b"<"), CopyRange("src", 5, 3 * MiB), Inline(b">")])
    assert store.read("out") == b"<" + data[5 : 5 + 3 * MiB] + b">"
    assert (result.sent, result.copied) == (2, 3 * MiB)


def test_compose_range_past_the_end_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("src", b"0123456789")
    with pytest.raises(StoreError, match="past the end"):
        store.compose("out", [CopyRange("src", 5, 10)])
    assert store.head("out") is None
    assert list(store.list_uploads()) == []


def test_concurrent_writers_in_sibling_directories(tmp_path: Path) -> None:
    """Writers' clean-up must not pull directories from under each other (a real race once:
    one writer pruned the temporary tree while another was creating its part of it)."""
    store = LocalStore(tmp_path, fsync=False)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        for i in range(150):
            h = f"{t:02x}{i:062x}"
            try:
                store.put(f"blobs/sha256/{h[:2]}/{h}/data", b"x", if_absent=True)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(store.list("blobs/"))) == 8 * 150
    assert not (tmp_path / TMP_DIR).exists()


def _writes_in_place(path: Path, root: Path) -> bool:
    """Whether an ordinary program (not bale) can overwrite `path` in place: as ourselves, or,
    as root (whom mode bits do not stop), as an unprivileged user owning the store."""
    if os.geteuid() != 0:
        try:
            with path.open("r+b") as f:
                f.write(b"!")
        except PermissionError:
            return False
        return True
    nobody = 65534
    for parent in [path, *path.parents]:
        os.chown(parent, nobody, -1)
        if parent == root:
            break
    proc = subprocess.run(
        ["sh", "-c", 'printf ! 1<> "$1"', "sh", str(path)], user=nobody, capture_output=True
    )
    return proc.returncode == 0


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is the owner's alone)."""
    path = Path(tempfile.mkdtemp(prefix="bale-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.parametrize("write", ["put", "put_stream", "compose"])
def test_objects_are_read_only_but_bale_replaces_them(open_dir: Path, write: str) -> None:
    root = open_dir / "store"
    store = LocalStore(root)
    store.put("blobs/src", b"source bytes")
    key = "images/repo/app.tar"

    def put(data: bytes) -> None:
        if write == "put":
            store.put(key, data)
        elif write == "put_stream":
            store.put_stream(key, io.BytesIO(data), len(data))
        else:
            store.compose(key, [Inline(data[:3]), CopyRange("blobs/src", 0, 6), Inline(data[3:])])

    put(b"first")
    path = root / key
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    before = path.read_bytes()
    assert not _writes_in_place(path, root)
    assert path.read_bytes() == before
    put(b"second")  # our own replace: a rename over the read-only file
    assert store.read(key) == (b"second" if write != "compose" else b"secsourceond")
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    assert store.put(key, b"third", if_absent=True).written is False
    store.delete(key)
    assert store.head(key) is None

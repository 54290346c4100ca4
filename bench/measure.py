"""Running one contender once: wall time, peak RSS, temporary disk, all from outside the process.

Every contender is a separate process started the same way, so Python's start-up counts for
bale just as Go's does for skopeo. Peak RSS is the kernel's high-water mark of the child's own
memory (`VmHWM` in /proc, read every `poll` seconds until it exits), not `wait4`'s
ru_maxrss: Linux folds the forking parent's resident size into that at exec, so every child
showed at least the bench's own ~70 MiB (see BENCHMARKS.md). Temporary disk is watched while the process runs:
its TMPDIR (an empty directory of its own) is walked every `poll` seconds and the largest total
kept, so a file that is written and deleted before the end still shows.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class RunFailed(RuntimeError):
    """A contender exited non-zero; the message carries the tail of its stderr."""


@dataclass
class Sample:
    """One run of one contender (possibly several processes in sequence)."""

    seconds: float
    peak_rss: int
    """Bytes; the largest of the processes when a run is several in sequence."""
    tmp_peak: int = 0
    """Largest total size of files seen in the run's TMPDIR while it ran."""
    tmp_after: int = 0
    """Bytes left in TMPDIR after the run."""
    steps: list[float] = field(default_factory=list)
    """Seconds of each process, in order."""
    extra: dict[str, float] = field(default_factory=dict)

    def then(self, other: Sample) -> Sample:
        """This run followed by `other` (skopeo, then the upload)."""
        return Sample(
            seconds=self.seconds + other.seconds,
            peak_rss=max(self.peak_rss, other.peak_rss),
            tmp_peak=max(self.tmp_peak, other.tmp_peak),
            tmp_after=self.tmp_after + other.tmp_after,
            steps=[*self.steps, *other.steps],
            extra={
                **self.extra,
                **other.extra,
                "cpu_seconds": self.extra.get("cpu_seconds", 0.0)
                + other.extra.get("cpu_seconds", 0.0),
            },
        )


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # deleted between listing and stat
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class _DiskWatch:
    """Polls a directory's size on a thread until stopped; keeps the maximum."""

    def __init__(self, path: Path | None, poll: float) -> None:
        self.path = path
        self.poll = poll
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _DiskWatch:
        if self.path is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="disk-watch")
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.path is not None
        while not self._stop.is_set():
            self.peak = max(self.peak, dir_size(self.path))
            self._stop.wait(self.poll)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.path is not None:
            self.peak = max(self.peak, dir_size(self.path))


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    tmpdir: Path | None = None,
    poll: float = 0.05,
    timeout: float = 1800.0,
    stdout: Path | None = None,
    cwd: Path | None = None,
) -> Sample:
    """Run `cmd` to completion and measure it; raises RunFailed on a non-zero exit.

    With `tmpdir`, the process gets TMPDIR=tmpdir (created empty) and the directory is watched.
    """
    full_env = dict(env if env is not None else os.environ)
    if tmpdir is not None:
        tmpdir.mkdir(parents=True, exist_ok=True)
        for child in tmpdir.iterdir():
            raise RunFailed(f"{tmpdir} is not empty before the run ({child.name})")
        full_env["TMPDIR"] = str(tmpdir)
    out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
    try:
        with _DiskWatch(tmpdir, poll) as watch:
            started = time.perf_counter()
            proc = subprocess.Popen(
                list(cmd),
                env=full_env,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.PIPE,
            )
            err = _Drain(proc)
            deadline = started + timeout
            hwm = 0
            next_poll = 0.0
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                now = time.perf_counter()
                if now >= next_poll:
                    # The last reading, not the largest: a reading before exec shows the
                    # parent's mark; after exec the mark starts again and only grows.
                    hwm = _vm_hwm(proc.pid) or hwm
                    next_poll = now + poll
                if time.perf_counter() > deadline:
                    proc.kill()
                    os.wait4(proc.pid, 0)
                    raise RunFailed(f"{cmd[0]} timed out after {timeout:.0f}s")
                time.sleep(0.002)
            seconds = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            stderr = err.join()
    finally:
        if stdout is not None and not isinstance(out, int):
            out.close()
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RunFailed(f"{' '.join(cmd[:3])} exited {proc.returncode}: " + " | ".join(tail))
    return Sample(
        seconds=seconds,
        peak_rss=hwm or usage.ru_maxrss * 1024,  # KiB on Linux
        tmp_peak=watch.peak,
        tmp_after=dir_size(tmpdir) if tmpdir is not None else 0,
        steps=[seconds],
        # CPU seconds (user + system) of the process and the children it waited for: less
        # sensitive to a busy machine than wall time, so old and new compare even under load.
        extra={"cpu_seconds": usage.ru_utime + usage.ru_stime},
    )


def _vm_hwm(pid: int) -> int:
    """The process's resident high-water mark in bytes (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class _Drain:
    """Reads a child's stderr on a thread so a chatty child never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self._thread.start()

    def _run(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._chunks.append(line)
            if len(self._chunks) > 200:
                del self._chunks[:100]
        proc.stderr.close()

    def join(self) -> bytes:
        self._thread.join()
        return b"".join(self._chunks)

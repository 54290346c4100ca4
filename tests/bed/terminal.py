"""Run the real `bale` on a pseudo-terminal, as a person at a terminal does.

`subprocess` pipes make rich and `open_display` choose their plain, non-terminal output; a pty
as stdin, stdout and stderr gets the progress bars, the summary table and the terminal size.
The environment is the one tests/bed/cli.py builds (`isolated_env`), plus the terminal's own
variables; `env=None` means `isolated_env` of a throwaway directory.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.bed.cli import bale_argv, isolated_env

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]")


@dataclass
class TerminalRun:
    returncode: int
    raw: str
    """Everything written to the terminal, escape sequences included."""

    @property
    def text(self) -> str:
        """`raw` without escape sequences and carriage returns: what scrolled past."""
        return _ANSI.sub("", self.raw).replace("\r", "")


def run_on_terminal(
    *args: str,
    env: dict[str, str] | None = None,
    columns: int = 160,
    rows: int = 50,
    timeout: float = 300,
    ctrl_c_after: str | None = None,
) -> TerminalRun:
    """`python -m pipeline ARGS` with a pty of `columns` x `rows` as its terminal.

    With `ctrl_c_after`, the pty is bale's controlling terminal and Ctrl-C is typed once that
    text has appeared on it: the terminal sends SIGINT, as it does for a person."""
    with _environment(env) as environ:
        return _run_on_terminal(args, environ, columns, rows, timeout, ctrl_c_after)


def _run_on_terminal(
    args: tuple[str, ...],
    environ: dict[str, str],
    columns: int,
    rows: int,
    timeout: float,
    ctrl_c_after: str | None,
) -> TerminalRun:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    environ = dict(environ)
    environ.update(TERM="xterm-256color", COLUMNS=str(columns), LINES=str(rows))
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM_PROGRAM", "CI"):
        environ.pop(name, None)
    proc = subprocess.Popen(
        bale_argv(*args),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=environ,
        start_new_session=True,
        preexec_fn=(lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)) if ctrl_c_after else None,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"bale {' '.join(args)} ran over {timeout}s")
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
            if (
                ctrl_c_after
                and ctrl_c_after in TerminalRun(0, b"".join(chunks).decode("utf-8", "replace")).text
            ):
                os.write(master, b"\x03")
                ctrl_c_after = None
        returncode = proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return TerminalRun(returncode, b"".join(chunks).decode("utf-8", "replace"))


def stdout_on_terminal(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, bytes, str]:
    """`python -m pipeline ARGS` with only stdout on a pty (stderr piped, stdin inherited):
    exit code, what reached the terminal, stderr. For what bale refuses to write to a terminal."""
    master, slave = os.openpty()
    try:
        with _environment(env) as environ:
            proc = subprocess.run(
                bale_argv(*args),
                stdout=slave,
                stderr=subprocess.PIPE,
                text=True,
                env=environ,
                timeout=timeout,
            )
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not chunk:
                break
            seen += chunk
        return proc.returncode, seen, proc.stderr
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


@contextmanager
def _environment(env: dict[str, str] | None) -> Iterator[dict[str, str]]:
    """`env`, or an isolated one in a directory that lasts for the run."""
    if env is not None:
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="bale-env-") as scratch:
        yield isolated_env(Path(scratch))

"""Run the real `bale` on a pseudo-terminal, as a person at a terminal does.

`subprocess` pipes make rich and `open_display` choose their plain, non-terminal output; a pty
as stdin, stdout and stderr gets the progress bars, the summary table and the terminal size.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass

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
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    environ = dict(env if env is not None else os.environ)
    environ.update(TERM="xterm-256color", COLUMNS=str(columns), LINES=str(rows))
    for name in ("NO_COLOR", "FORCE_COLOR", "TERM_PROGRAM", "CI"):
        environ.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
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

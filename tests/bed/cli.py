"""Run the real `bale` command from a test, in an environment that owes nothing to the machine.

Every test that runs the CLI goes through here (tests/test_test_layout.py checks it), so that a
developer's `AWS_*` keys, `BALE_*` defaults, `OSS_*` endpoint, docker/podman logins, `certs.d`
directories or CA bundle can neither make a test pass nor make it fail.

API:

- `isolated_env(home_parent, **extra) -> dict[str, str]`: the environment for a run. Only the
  variables in `KEPT` / `KEPT_PREFIXES` come from `os.environ` (PATH, locale, TMPDIR, Python's
  own settings, coverage); everything else is dropped, `AWS_*`, `BALE_*`, `OSS_*`,
  `REGISTRY_AUTH_FILE`, `DOCKER_CONFIG`, `XDG_*`, `SSL_CERT_*` and the other CA bundles among it.
  `HOME` is a new `home_parent/cli-home` (so `~/.docker`, `~/.config/containers/auth.json` and
  `certs.d`, `~/.aws` are not there), `XDG_RUNTIME_DIR` points into it, and `REGISTRY_AUTH_FILE`
  and `DOCKER_CONFIG` name an empty auth file and config directory in it (so the answer is the
  same for a tool that looks elsewhere, and for an in-process `CliRunner` whose `env` only
  overlays the test process's environment). `extra` is added last:
  a test names every variable it needs (`**MOTO_KEYS` from tests/bed/moto.py for moto's fixed
  keys, `AWS_ENDPOINT_URL=...`, `SSL_CERT_FILE=...`, `BALE_JOBS="0"`).
- `run_bale(*args, env=None, input=None, stdin=None, timeout=300, check=False, cwd=None,
  text=True) -> CompletedProcess`: `python -m pipeline ARGS` with stdout and stderr captured.
  `env=None` runs it in `isolated_env` of a throwaway directory; `input` is piped to stdin (str,
  or bytes with `text=False`), `stdin` is an open file to read from instead (a redirect);
  `check=True` raises AssertionError (with `show`) on a non-zero exit.
- `start_bale(*args, env, **popen_kwargs) -> Popen[str]`: the same command left running, stdout
  and stderr piped as text (for kill and signal tests).
- `kill_when(proc, ready, timeout=60) -> None`: SIGKILL a started run as soon as `ready()`
  holds (polled every 20 ms), and check that the kill is what ended it (crash tests).
- `bale_argv(*args) -> list[str]`: the command line itself, for the rare run that needs its own
  `subprocess` call (tests/bed/terminal.py, the pty runs, uses it).
- `show(proc) -> str`: what a failed assertion prints about a run.
- `error_line(proc) -> str`: the single error line of a run that failed as a whole.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

KEPT = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "VIRTUAL_ENV",
    }
)
"""Variables a run inherits from the test process: finding programs, locale, temporary files."""

KEPT_PREFIXES = ("LC_", "PYTHON", "COV_CORE_", "COVERAGE_")
"""Inherited too: locale categories, the interpreter's own settings, coverage of subprocesses."""


def isolated_env(home_parent: Path, /, **extra: str) -> dict[str, str]:
    """The environment for a `bale` run; see the module docstring."""
    home = Path(home_parent) / "cli-home"
    (home / "docker").mkdir(parents=True, exist_ok=True)
    auth = home / "auth.json"
    auth.write_text('{"auths": {}}')
    env = {k: v for k, v in os.environ.items() if k in KEPT or k.startswith(KEPT_PREFIXES)}
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home),
        REGISTRY_AUTH_FILE=str(auth),
        DOCKER_CONFIG=str(home / "docker"),
    )
    env.update(extra)
    return env


def bale_argv(*args: str) -> list[str]:
    """`python -m pipeline ARGS` with this interpreter (the checkout's package, not a PATH one)."""
    return [sys.executable, "-m", "pipeline", *args]


def run_bale(
    *args: str,
    env: dict[str, str] | None = None,
    input: str | bytes | None = None,
    stdin: IO[Any] | None = None,
    timeout: float = 300,
    check: bool = False,
    cwd: Path | str | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run the real CLI to the end and capture its output; see the module docstring."""
    if env is None:
        with tempfile.TemporaryDirectory(prefix="bale-env-") as scratch:
            return run_bale(
                *args,
                env=isolated_env(Path(scratch)),
                input=input,
                stdin=stdin,
                timeout=timeout,
                check=check,
                cwd=cwd,
                text=text,
            )
    proc = subprocess.run(
        bale_argv(*args),
        capture_output=True,
        text=text,
        input=input,
        stdin=stdin,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"bale {' '.join(args)}: {show(proc)}")
    return proc


def start_bale(*args: str, env: dict[str, str], **popen_kwargs: Any) -> subprocess.Popen[str]:
    """The CLI started and left running, stdout and stderr piped as text."""
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(bale_argv(*args), text=True, env=env, **popen_kwargs)


def kill_when(
    proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 60.0
) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                raise AssertionError(f"bale ended before the kill point: {proc.returncode}\n{err}")
            if time.monotonic() > deadline:
                raise AssertionError("the kill point never came")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def show(proc: subprocess.CompletedProcess[Any]) -> str:
    """Everything a failed assertion should print about a run."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a run that failed as a whole (exit 2 or a store-wide error)."""
    assert "Traceback" not in proc.stderr, show(proc)
    lines = [
        line for line in proc.stderr.splitlines() if line.startswith(("bale: error:", "Error:"))
    ]
    assert len(lines) == 1, show(proc)
    if lines[0].startswith("bale: error:"):  # bale's own errors: that line and nothing else
        assert proc.stderr.strip() == lines[0], show(proc)
    return lines[0]

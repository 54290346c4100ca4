"""containerd and its `ctr` as an independent puller: a daemon of the test's own.

`Containerd(root)` starts `containerd` with its root, state and socket under `root` (the CRI
plugin off: nothing of Kubernetes is needed to pull), waits until `ctr version` answers, and
raises RuntimeError with the daemon's log when it cannot start (it needs root, for one).
`ctr(*args)` runs `ctr --address SOCKET ARGS` (a non-zero exit fails the test), `ctr_status`
returns the exit code only, `stop()` ends the daemon. The `containerd` fixture
(tests/bed/fixtures_registry.py) skips, saying why, where containerd is missing or cannot run.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.bed.moto import _die_with_parent, stop_process


class Containerd:
    """A containerd of the test's own (root, state and socket in a temporary directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "containerd.sock"
        config = root / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{root / "root"}"\n'
            f'state = "{root / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
        )
        self.log_path = root / "containerd.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["containerd", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 30
        while self.ctr_status("version") != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(self.log_path.read_text(errors="replace")[-2000:])
            time.sleep(0.2)

    def ctr_status(self, *args: str) -> int:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), *args], capture_output=True, timeout=60
        ).returncode

    def ctr(self, *args: str) -> str:
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def stop(self) -> None:
        stop_process(self.process)

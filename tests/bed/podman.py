"""podman as an independent puller, on a throwaway vfs store of its own.

`Podman(root)(*args)` runs `podman --storage-driver vfs --root ROOT --runroot RUNROOT ARGS` and
returns stdout (a non-zero exit fails the test with podman's stderr); `close()` removes its
images and runroot. The `podman` fixture (tests/bed/fixtures_registry.py) gives one per test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


class Podman:
    """podman on a throwaway vfs store (the runroot path must stay under 50 characters)."""

    def __init__(self, root: Path) -> None:
        self.runroot = tempfile.mkdtemp(prefix="bale-pm-")
        self.base = [
            "podman",
            "--storage-driver",
            "vfs",
            "--root",
            str(root),
            "--runroot",
            self.runroot,
        ]

    def __call__(self, *args: str) -> str:
        proc = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def close(self) -> None:
        subprocess.run([*self.base, "rmi", "-a", "-f"], capture_output=True, timeout=120)
        shutil.rmtree(self.runroot, ignore_errors=True)

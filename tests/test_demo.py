"""`make demo` in CI: twice (it must be idempotent), offline when the machine allows it.

Offline is enforced, not assumed: as root, the demo runs in a fresh network namespace whose
only interface is loopback (`unshare -n`), so any attempt to reach the internet fails. There,
port 5000 is always free, so the demo runs the checked-in manifests/demo.yaml unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bed.cli import run_bale

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SELECTED = ("demo/web:1.0", "demo/web:1.1", "demo/worker:1.0")


def _offline_prefix() -> list[str]:
    """`unshare -n` with loopback up, when this process may create network namespaces."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return []
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=10
    )
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if (
        probe.returncode == 0
    ) else []  # fmt: skip


def _make_demo(base: Path, prefix: list[str]) -> subprocess.CompletedProcess[str]:
    # -o: take the venv as built (a pyproject.toml newer than .venv/.installed would reinstall).
    cmd = [*prefix, "make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed"]
    cmd += [f"PY={sys.executable}", "demo"]
    env = dict(os.environ, DEMO_DIR=str(base))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _restore_available() -> bool:
    proc = run_bale("restore", "--help", timeout=60)
    return proc.returncode == 0


def test_make_demo_twice_offline(tmp_path: Path) -> None:
    prefix = _offline_prefix()
    started = time.monotonic()
    first = _make_demo(tmp_path, prefix)
    seconds = time.monotonic() - started
    second = _make_demo(tmp_path, prefix)
    outputs = [p.stdout + p.stderr for p in (first, second)]

    # Steps 1-4, whatever the state of `bale restore`.
    archive = tmp_path / "demo-archive"
    for name in SELECTED:
        repo, tag = name.split(":")
        assert (archive / "images" / "127.0.0.1-5000" / repo / f"{tag}.tar").is_file()
        assert f"archived 127.0.0.1:5000/{name} " in outputs[0], outputs[0]
        assert f"skipped  127.0.0.1:5000/{name} " in outputs[1], outputs[1]  # idempotent
    assert not list(archive.glob("images/**/latest.*"))  # semver ">= 1.0" leaves it out
    for output in outputs:
        assert "$ bale ls ./demo-archive" in output and "127.0.0.1:5000/demo/worker:1.0" in output
    report = json.loads((tmp_path / ".demo" / "report.json").read_text())
    assert report["totals"]["skipped"] == 3
    assert not (tmp_path / ".demo" / "registry").exists()  # the registry's data is gone
    assert str(tmp_path) not in _registry_processes()  # and the registry with it
    assert seconds < 60

    if not _restore_available():
        for proc, output in zip((first, second), outputs, strict=True):
            assert proc.returncode != 0 and "No such command 'restore'" in output
        pytest.xfail("bale restore is not built yet: the demo stops at its restore step")
    for proc, output in zip((first, second), outputs, strict=True):
        assert proc.returncode == 0, output
        assert "digests are equal" in output and "Where everything is" in output


def _registry_processes() -> str:
    proc = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10)
    return "\n".join(line for line in proc.stdout.splitlines() if "docker-registry" in line)

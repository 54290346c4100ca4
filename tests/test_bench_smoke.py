"""`make bench` in quick mode, end to end: every case runs and the report is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import Results

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs_every_case(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "BENCH_QUICK": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["quick"] and data["runs"] == 3
    cases = {r["case"] for r in data["results"]}
    assert {"e", "a", "a-shaped", "b", "d", "m", "r", "q", "s"} <= cases
    for row in data["results"]:
        runs = 1 if row["case"] in ("m", "q") or row["shape"] == "sha256" else 3
        runs = 10 if row["case"] == "s" else runs
        assert len(row["samples"]) == runs, row["case"]
    targets = Results(data).targets()
    assert all(t.measured is not None for t in targets)
    assert next(t for t in targets if t.name.startswith("temporary disk")).met
    table = (out / "results.md").read_text()
    assert "| target |" in table and "bale archive" in table
    assert (out / "bench.png").stat().st_size > 5000
    assert not (tmp_path / "work").exists(), "the work directory is removed"


def test_baseline_runs_beside_the_code_in_the_same_rounds(tmp_path: Path) -> None:
    """`--baseline REV`: a second bale, exported from REV, alternating with the measured one."""
    out = tmp_path / "results"
    env = {**os.environ, "BENCH_QUICK": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "--cases", "s", "--baseline", "HEAD~1",
            "--out", str(out), "--workdir", str(tmp_path / "work"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    old = data["baseline"]
    assert old and old != data["commit"]
    names = {r["contender"] for r in data["results"]}
    assert {
        "bale --version",
        f"bale --version @{old}",
        "bale --help",
        f"bale --help @{old}",
    } <= names
    assert all(len(r["samples"]) == 10 for r in data["results"])
    table = (out / "results.md").read_text()
    assert f"old @{old} median s" in table and "| s | start-up | bale --version |" in table

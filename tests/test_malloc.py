"""The allocator setting is applied on glibc and leaves an explicit environment setting alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline import malloc


def test_tune_sets_the_threshold_on_glibc() -> None:
    if os.confstr("CS_GNU_LIBC_VERSION") is None:  # pragma: no cover - not glibc
        pytest.skip("glibc only")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    code = "from pipeline.malloc import tune; print(tune())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True"


def test_an_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert malloc.tune() is False

"""`--limit-rate` as the network sees it: bytes counted by the proxy between bale and the
registry, over time, while `bale archive --jobs 8` pulls many layers at once.

The limiter paces what bale reads; what matters to a shared link is what crosses the wire, and
the two differ by whatever the kernel buffers (a receive buffer autotuned to many MiB once let
26 MiB through in the first second of a 4 MiB/s run, then nothing for seconds). So the rate is
measured on the proxy's side of the socket (its send buffer shrunk to 64 KiB), in sliding
windows that start after the first second and end by the last blob byte: over each window the
average must stay within the tolerance of the cap.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.bed.cli import isolated_env, run_bale, show
from tests.bed.images import ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS
from tests.bed.proxy import FaultProxy
from tests.bed.registry import RegistryServer
from tests.bed.store_view import check_local_blobs, record_of

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def window_rates(
    proxy: FaultProxy, start: float, end: float, width: float, step: float
) -> list[tuple[float, float]]:
    """(offset from `start`, bytes/s) for every window [t, t + width) inside [start, end]."""
    out = []
    t = start
    while t + width <= end + 1e-9:
        out.append((t - start, proxy.bytes_between(t, t + width) / width))
        t += step
    return out


def peak_concurrency(proxy: FaultProxy, path: str) -> int:
    """Most blob GETs in flight at one moment."""
    events = []
    for r in proxy.find("GET", path):
        if r.status == 200 and r.finished is not None:
            events += [(r.started, 1), (r.finished, -1)]
    peak = now = 0
    for _, delta in sorted(events):
        now += delta
        peak = max(peak, now)
    return peak


def run_capped(
    registry: RegistryServer,
    image_factory: ImageFactory,
    repo: str,
    tmp_path: Path,
    *,
    sizes: list[int],
    rate: int,
    width: float,
    step: float,
    tolerance: float,
) -> list[tuple[float, float]]:
    """Archive layers of these sizes with `--jobs 8 --limit-rate rate` through a metering
    proxy; check every window and return the window rates."""
    image = image_factory.image(
        layers=tuple(LayerSpec(size, "none", seed=7300 + i) for i, size in enumerate(sizes))
    )
    image_factory.push(image, f"{registry.host}/{repo}:1", registry)
    store = tmp_path / "store"
    env = isolated_env(tmp_path, **MOTO_KEYS)
    with FaultProxy(registry.host, sndbuf=64 * 1024, meter_piece=16 * 1024) as proxy:
        began = time.monotonic()
        proc = run_bale(
            "archive",
            f"docker://{proxy.host}/{repo}:1",
            "--to",
            str(store),
            "--src-tls-verify=false",
            "--jobs",
            "8",
            "--limit-rate",
            str(rate),
            env=env,
        )
        took = time.monotonic() - began
        assert proc.returncode == 0, show(proc)
        assert record_of(store, f"{proxy.host}/{repo}:1")["digest"] == image.digest
        assert check_local_blobs(store) == len(sizes) + 2  # layers, config, manifest
        times = [t for t, _ in proxy.meter]
        first = min(times)
        # The blob bytes end with the last blob GET; manifests read afterwards (for the tar)
        # come after a quiet spell that is not the limiter's doing.
        last = max(r.finished or 0.0 for r in proxy.find("GET", "/blobs/"))
        total = sum(n for _, n in proxy.meter)
        assert total >= sum(sizes)
        rates = window_rates(proxy, first + 1.0, last, width, step)
        assert peak_concurrency(proxy, "/blobs/") == 8
    overall = total / (last - first)
    print(
        f"\n{len(sizes)} layers, {sum(sizes) / MiB:.0f} MiB at cap {rate / MiB:.2f} MiB/s, --jobs 8: "
        f"{took:.1f}s, overall {overall / MiB:.3f} MiB/s; {width:g}s windows (MiB/s): "
        + " ".join(f"{r / MiB:.2f}" for _, r in rates)
    )
    assert rates, "the run was too short to measure"
    worst = max(rates, key=lambda w: abs(w[1] - rate))
    assert abs(worst[1] - rate) <= tolerance * rate, (
        f"window at +{worst[0] + 1:.1f}s averaged {worst[1] / MiB:.3f} MiB/s against a cap of "
        f"{rate / MiB:.3f} MiB/s: " + " ".join(f"{r / MiB:.2f}" for _, r in rates)
    )
    return rates


def test_limit_rate_holds_in_short_windows(
    registry: RegistryServer, image_factory: ImageFactory, unique_repo: str, tmp_path: Path
) -> None:
    """About 8 s: 16 layers of 1.5 and 2.5 MiB at 4 MiB/s; every 3-second window within 15%
    of the cap."""
    rates = run_capped(
        registry,
        image_factory,
        unique_repo,
        tmp_path,
        sizes=[(3 * MiB) // 2 if i % 2 else (5 * MiB) // 2 for i in range(16)],
        rate=4 * MiB,
        width=3.0,
        step=0.25,
        tolerance=0.15,
    )
    assert len(rates) >= 12


@pytest.mark.slow
def test_limit_rate_holds_in_every_10s_window(
    registry: RegistryServer, image_factory: ImageFactory, unique_repo: str, tmp_path: Path
) -> None:
    """About 22 s: 16 layers of 5 MiB at 4 MiB/s with --jobs 8 (so blobs start and end all the
    way through); every 10-second window after the first second within 10% of the cap."""
    rates = run_capped(
        registry,
        image_factory,
        unique_repo,
        tmp_path,
        sizes=[5 * MiB] * 16,
        rate=4 * MiB,
        width=10.0,
        step=0.5,
        tolerance=0.10,
    )
    assert len(rates) >= 15

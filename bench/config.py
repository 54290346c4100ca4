"""What is measured: image shapes and run counts, full or quick (`BENCH_QUICK=1`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tests.bed.images import LayerSpec

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Shape:
    key: str
    """Short name used in tables and image names."""
    label: str
    layers: tuple[LayerSpec, ...]

    @property
    def layer_bytes(self) -> int:
        return sum(spec.size for spec in self.layers)


def _layers(count: int, size: int, seed: int) -> tuple[LayerSpec, ...]:
    return tuple(LayerSpec(size, seed=seed + i) for i in range(count))


@dataclass(frozen=True)
class Config:
    quick: bool
    runs: int
    memory_runs: int
    big: Shape
    """One large layer (cases a, b, c, e)."""
    many: Shape
    """Many small layers (cases a, b, c, e)."""
    mem_big: Shape
    """The 4 GiB image for peak RSS and temporary disk."""
    mem_small: Shape
    """The same layer structure at 1/16 the size: RSS must not grow with the image."""
    shared_new: tuple[LayerSpec, ...]
    """The layer added to `mem_small` for case d (large layers)."""
    shared_new_small: tuple[LayerSpec, ...]
    """The layer added to `many` for case d (small layers)."""
    latency: float
    """One-way latency of the shaped link for the ranged-download comparison, seconds."""
    window: int
    """Bytes in flight per connection on that link."""
    jobs: int = 4


def load(quick: bool | None = None) -> Config:
    if quick is None:
        quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    runs = int(os.environ.get("BENCH_RUNS", "3" if quick else "5"))
    if quick:
        return Config(
            quick=True,
            runs=runs,
            memory_runs=1,
            big=Shape("1x64MiB", "1 layer of 64 MiB (quick)", _layers(1, 64 * MiB, 1)),
            many=Shape("10x1MiB", "10 layers of 1 MiB (quick)", _layers(10, MiB, 100)),
            mem_big=Shape("4x64MiB", "4 layers of 64 MiB (quick)", _layers(4, 64 * MiB, 1)),
            mem_small=Shape("4x8MiB", "4 layers of 8 MiB (quick)", _layers(4, 8 * MiB, 200)),
            shared_new=(LayerSpec(8 * MiB, seed=300),),
            shared_new_small=(LayerSpec(MiB, seed=301),),
            latency=0.02,
            window=1 * MiB,
        )
    return Config(
        quick=False,
        runs=runs,
        memory_runs=max(3, runs // 2 + 1),
        big=Shape("1x1GiB", "1 layer of 1 GiB", _layers(1, GiB, 1)),
        many=Shape("40x5MiB", "40 layers of 5 MiB", _layers(40, 5 * MiB, 100)),
        mem_big=Shape("4x1GiB", "4 layers of 1 GiB (4 GiB)", _layers(4, GiB, 1)),
        mem_small=Shape("4x64MiB", "4 layers of 64 MiB (256 MiB)", _layers(4, 64 * MiB, 200)),
        shared_new=(LayerSpec(64 * MiB, seed=300),),
        shared_new_small=(LayerSpec(5 * MiB, seed=301),),
        latency=0.04,
        window=2 * MiB,
    )

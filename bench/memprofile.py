"""What is resident at bale's peak: a memray capture read back (case mp, issue 19).

`memray run --aggregate` records every allocation (Python objects and C libraries' own
mallocs) with the Python stack that made it; at the end, the allocations alive at the heap's high-water mark are grouped by the
innermost frame of bale's own code on their stack (else the innermost frame at all), so each
row is a line of `pipeline/` and the MiB it held at the peak. Resident size over time comes
from memray's snapshots (RSS and heap every 10 ms), which shows whether what grows is the
heap bale allocates or something outside it (the allocator keeping freed pages, libraries'
own memory).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any


def _frame(frame: tuple[str, str, int]) -> str:
    function, filename, line = frame
    if "/pipeline/" in filename:
        return f"{filename.rsplit('/pipeline/', 1)[1]}:{line} {function}"
    return f"{'/'.join(filename.split('/')[-2:])}:{line} {function}"


def _caller(stack: list[tuple[str, str, int]]) -> str:
    """`caller -> callee` of bale's own two innermost lines on the stack, then `-> the library
    line` that allocated when that is not bale's."""
    ours = [f for f in stack if "/pipeline/" in f[1]][:2]
    if not stack:
        return "?"
    if not ours:
        return _frame(stack[0])
    site = " -> ".join(_frame(f) for f in reversed(ours))
    return site if ours[0] == stack[0] else f"{site} -> {_frame(stack[0])}"


def summarize(capture: Path, top: int = 12) -> dict[str, Any]:
    import memray

    reader = memray.FileReader(str(capture))
    sites: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        key = _caller(list(record.stack_trace()))
        sites[key] += record.size
        counts[key] += record.n_allocations
    meta = reader.metadata
    rss = [s.rss for s in reader.get_memory_snapshots()]
    heap = [s.heap for s in reader.get_memory_snapshots()]
    total = sum(sites.values())
    return {
        "peak_heap": meta.peak_memory,
        "at_peak_total": total,
        "peak_rss": max(rss, default=0),
        "heap_at_peak_rss": heap[rss.index(max(rss))] if rss else 0,
        "sites": [
            {"site": site, "bytes": size, "allocations": counts[site]}
            for site, size in sites.most_common(top)
        ],
    }

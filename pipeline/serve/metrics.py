"""Prometheus metrics of one `bale serve` process, in a registry of its own (not the global
one), so that two apps in one process (tests) do not collide.

Queue depth is read from the ledger at scrape time, so every replica reports the shared queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _Depth(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "bale_serve_queue_jobs", "Jobs in the queue by state.", labels=["state"]
        )
        try:
            counts = self.counts()
        except Exception:  # a scrape must not fail because the broker is away
            counts = {}
        for state, n in counts.items():
            family.add_metric([state], n)
        yield family


class Metrics:
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            "bale_serve_events_received", "Pushes received, by endpoint.", ["source"], registry=r
        )
        self.events_refused = Counter(
            "bale_serve_events_refused",
            "Requests or pushes refused, by endpoint and reason.",
            ["source", "reason"],
            registry=r,
        )
        self.jobs_done = Counter(
            "bale_serve_jobs_done",
            "Jobs done, by outcome (archived, skipped, covered).",
            ["outcome"],
            registry=r,
        )
        self.jobs_failed = Counter("bale_serve_jobs_failed", "Failed job attempts.", registry=r)
        self.jobs_parked = Counter(
            "bale_serve_jobs_parked", "Jobs parked after their last attempt.", registry=r
        )
        self.bytes_archived = Counter(
            "bale_serve_bytes_archived", "Bytes uploaded into the store by jobs.", registry=r
        )
        self.job_seconds = Histogram(
            "bale_serve_job_duration_seconds",
            "Time of one job attempt.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        r.register(_Depth(counts))

from __future__ import annotations

import io
import threading

from pipeline.transfer.progress import CountingReader, NullEvents, TransferEvents


class Recording:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, int]] = []

    def on_bytes(self, key: str, n: int) -> None:
        with self.lock:
            self.seen.append((key, n))


def test_counting_reader_reports_each_non_empty_read() -> None:
    counts: list[int] = []
    reader = CountingReader(io.BytesIO(b"x" * 2500), counts.append)
    assert reader.read(1000) == b"x" * 1000
    assert reader.read(-1) == b"x" * 1500
    assert reader.read(10) == b""
    assert counts == [1000, 1500]
    assert reader.count == 2500
    assert reader.readable()


def test_counting_reader_closes_its_source() -> None:
    source = io.BytesIO(b"abc")
    CountingReader(source, lambda n: None).close()
    assert source.closed


def test_events_protocol() -> None:
    events = Recording()
    assert isinstance(events, TransferEvents)
    assert isinstance(NullEvents(), TransferEvents)
    NullEvents().on_bytes("k", 5)
    reader = CountingReader(io.BytesIO(b"y" * 10), lambda n: events.on_bytes("sha256:ab", n))
    while reader.read(4):
        pass
    assert events.seen == [("sha256:ab", 4), ("sha256:ab", 4), ("sha256:ab", 2)]


def test_counting_reader_passes_readinto_through_only_when_the_source_has_it() -> None:
    counts: list[int] = []
    reader = CountingReader(io.BytesIO(b"y" * 3000), counts.append)
    buffer = bytearray(1024)
    got = [reader.readinto(buffer) for _ in range(4)]  # type: ignore[attr-defined]
    assert got == [1024, 1024, 952, 0]
    assert counts == [1024, 1024, 952] and reader.count == 3000

    class ReadOnly:
        def read(self, n: int = -1) -> bytes:
            return b""

    assert not hasattr(CountingReader(ReadOnly(), counts.append), "readinto")

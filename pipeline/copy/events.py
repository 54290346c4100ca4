"""Per-image progress events: operations say what happens to each image, a display shows it.

`TransferEvents.on_bytes` (pipeline/transfer/progress.py) names transfers by blob, which is
all a single copy needs. A run of many images wants progress per image and overall, so the
archive loop also reports, per image (named by `ImageResult.source`, the normalised reference):

    on_image_start(source)                 work on the image begins
    on_image_size(source, nbytes)          its blobs total `nbytes` (known once manifests are read;
                                           may come before `on_image_start`: a run reads the
                                           manifests of waiting images ahead, and sends it once)
    on_image_bytes(source, moved, skipped) `moved` bytes went through us; `skipped` bytes of its
                                           blobs need no transfer (already stored, or moved for
                                           another image of the run)
    on_image_phase(source, phase)          what it does when no bytes move, in words
                                           ("composing the tar", "writing the record")
    on_image_done(result)                  the image's `ImageResult`, whatever its status

For one image, `moved + skipped` reaches `nbytes` when it succeeds. Events come from worker
threads: implementations must be thread-safe and quick.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pipeline.copy.result import ImageResult
from pipeline.transfer.progress import NullEvents, TransferEvents


@runtime_checkable
class ImageEvents(TransferEvents, Protocol):
    def on_image_start(self, source: str) -> None: ...

    def on_image_size(self, source: str, nbytes: int) -> None: ...

    def on_image_bytes(self, source: str, moved: int = 0, skipped: int = 0) -> None: ...

    def on_image_phase(self, source: str, phase: str) -> None: ...

    def on_image_done(self, result: ImageResult) -> None: ...


class NullImageEvents(NullEvents):
    """Reports nowhere."""

    def on_image_start(self, source: str) -> None:
        pass

    def on_image_size(self, source: str, nbytes: int) -> None:
        pass

    def on_image_bytes(self, source: str, moved: int = 0, skipped: int = 0) -> None:
        pass

    def on_image_phase(self, source: str, phase: str) -> None:
        pass

    def on_image_done(self, result: ImageResult) -> None:
        pass


class _BytesOnly(NullImageEvents):
    """A plain `TransferEvents` given where image events are wanted: keeps its byte reports."""

    def __init__(self, events: TransferEvents) -> None:
        self._events = events

    def on_bytes(self, key: str, n: int) -> None:
        self._events.on_bytes(key, n)


def image_events(events: TransferEvents | None) -> ImageEvents:
    """`events` as `ImageEvents`: itself when it has the image methods, else adapted."""
    if events is None:
        return NullImageEvents()
    if isinstance(events, ImageEvents):
        return events
    return _BytesOnly(events)

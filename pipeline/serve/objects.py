"""One stored object as an HTTP answer: a redirect to the store, or its bytes streamed.

Blob pulls (`/v2/`) and tar downloads (the catalog) answer the same way. A store that can
presign (S3, OSS) gets the client redirected (307) to a short-lived URL, so the bytes go from
the bucket to the client and never through this process; the client repeats its `Range` there.
A store whose objects a URL alone cannot read (SSE-C: `presign` says None) is streamed.
Otherwise (a local store) the object is streamed as the client reads it, a single `bytes=`
range honoured (206), so an interrupted download resumes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from pipeline.errors import ObjectFrozen, StoreError, StoreNotFound
from pipeline.store.base import ObjectStore, Presigning, attachment

PRESIGN_SECONDS = 900
STREAM_CHUNK = 1024 * 1024

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(StoreError):
    """416: the range starts past the object's end."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`(start, length)` of a single `bytes=` range; None for the whole object (no header, or a
    form not served as a range, which HTTP allows answering with the whole object)."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # a suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {header} of {size} bytes")
        start = max(0, size - n)
        return start, size - start
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {header} of {size} bytes")
    return start, end - start + 1


def serve_object(
    store: ObjectStore,
    key: str,
    request: Request,
    headers: dict[str, str],
    *,
    filename: str | None = None,
    content_type: str = "application/octet-stream",
    presign_seconds: int = PRESIGN_SECONDS,
) -> Response:
    """GET or HEAD of `key` (see the module docstring). Raises StoreNotFound for no object,
    ObjectFrozen for one in an archive class, RangeNotSatisfiable (the caller answers 416)."""
    info = store.head(key)
    if info is None:
        raise StoreNotFound(f"{key}: not found")
    if info.frozen:  # said here: a redirect would end in the store's own refusal
        raise ObjectFrozen(f"{key}: in an archive storage class and not restored", key=key)
    if request.method == "GET" and isinstance(store, Presigning):
        url = store.presign(key, expires=presign_seconds, filename=filename)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers=headers)
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": content_type}
    if filename is not None:
        headers["Content-Disposition"] = attachment(filename)
    span = byte_range(request.headers.get("range"), info.size)
    status = 200
    start, length = 0, info.size
    if span is not None:
        start, length = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{info.size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD" or length == 0:
        return Response(status_code=status, headers=headers)
    stream = store.open(key, start, length)

    def chunks() -> Iterator[bytes]:
        try:
            while chunk := stream.read(STREAM_CHUNK):
                yield chunk
        finally:
            close = getattr(stream, "close", None)  # store bodies hold a connection; Readable
            if close is not None:  # promises only `read`
                close()

    return StreamingResponse(chunks(), status_code=status, headers=headers)

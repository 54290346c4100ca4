"""The only place bale looks inside a urllib3 response.

Everything else in the registry transport uses urllib3's public calls. Two things it does not
offer are worth having:

- `readinto`: urllib3's own `readinto` reads a new `bytes` and copies it over; a blob body read
  undecoded is the socket's bytes, so http.client's response can fill the caller's buffer
  itself. Copying a 1 GiB layer into a local tar took 2.26 s of process CPU per GiB that way
  against 1.18-1.33 s filling page-aligned buffers straight from the socket (fewer page faults,
  no allocation per read; see BENCHMARKS.md, case b).
- `unread`: how many body bytes are still on the connection, to know whether a response can give
  its connection back (`length_remaining`, not part of `BaseHTTPResponse`).

Each checks that the internals look as expected and falls back to the public path otherwise
(an urllib3 that changes them is slower, never wrong).
"""

from __future__ import annotations

import http.client

import urllib3
import urllib3.exceptions


def unread(resp: urllib3.BaseHTTPResponse) -> int | None:
    """Body bytes not yet read from the connection; None when urllib3 does not know."""
    remaining = getattr(resp, "length_remaining", None)
    return remaining if isinstance(remaining, int) else None


def direct(resp: urllib3.BaseHTTPResponse) -> http.client.HTTPResponse | None:
    """The http.client response under `resp` when reading from it directly is safe (an
    undecoded body, nothing buffered in urllib3, the byte counts where they are expected)."""
    fp = getattr(resp, "_fp", None)
    if (
        not isinstance(fp, http.client.HTTPResponse)
        or getattr(resp, "decode_content", True)
        or len(getattr(resp, "_decoded_buffer", b"x"))
        or not isinstance(getattr(resp, "_fp_bytes_read", None), int)
    ):
        return None
    return fp


def readinto(resp: urllib3.BaseHTTPResponse, view: memoryview) -> int:
    """`resp.read(len(view))` into `view`, with no `bytes` in between when urllib3 holds nothing
    back. urllib3's byte counts are kept (a fully read response gives its connection back) and
    failures are raised as urllib3 raises them (so resuming treats them alike)."""
    fp = direct(resp)
    if fp is None:
        data = resp.read(len(view))
        view[: len(data)] = data
        return len(data)
    try:
        got = fp.readinto(view)
    except TimeoutError as exc:
        pool = getattr(resp, "_pool", None)
        raise urllib3.exceptions.ReadTimeoutError(pool, None, "Read timed out.") from exc  # type: ignore[arg-type]
    except (http.client.HTTPException, OSError) as exc:
        raise urllib3.exceptions.ProtocolError(f"Connection broken: {exc!r}", exc) from exc
    resp._fp_bytes_read += got  # type: ignore[attr-defined]
    if resp.length_remaining is not None:
        resp.length_remaining -= got
    return got

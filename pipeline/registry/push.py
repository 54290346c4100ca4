"""Registry HTTP API v2, push side: blob existence, cross-repository mounts, streamed uploads,
manifests.

One blob push is HEAD → (mount or start an upload) → stream → commit, as
go-containerregistry's `remote.Write` does it:

- `HEAD /v2/<name>/blobs/<digest>`: a blob the repository has is never sent again.
- `POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>` when the same registry may hold the
  bytes in another repository: 201 means linked, nothing to send; 202 means the registry started
  an ordinary upload instead, and that upload is used (not left dangling).
- Otherwise `POST /v2/<name>/blobs/uploads/` → 202 and a `Location` (maybe relative, carrying
  state in its query). The bytes go up in one streamed `PUT <Location>&digest=` with
  `Content-Length` set from the descriptor (the OCI spec's POST-then-PUT, which every
  conformant registry accepts), or, with `chunk_size`, as `PATCH`es of at least the registry's
  `OCI-Chunk-Min-Length` whose returned `Range` is checked, then an empty `PUT`.

Memory stays bounded: the body is an iterator of 1 MiB reads from the source stream, so a 10 GiB
layer costs a few MiB. A failed upload (a dropped connection, a 5xx, a token that expired
mid-way) starts over from a fresh POST with a fresh stream from `open_stream`: a half-sent body
cannot be replayed, and the source streams verify themselves from their first byte. The failed
upload is cancelled (DELETE) on the way out, best effort.

Manifests are PUT as their exact bytes with their own media type as Content-Type; the digest
the registry reports back must be theirs.

Requests go through the client's `transport` (the one auth loop, retries, error mapping), as
the pull side's do; what the pushes learn about where blobs are lives on the client.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pipeline.errors import DigestMismatch, RegistryError, TransferError
from pipeline.image import BlobWrite
from pipeline.oci import Descriptor, RawManifest
from pipeline.refs import is_valid_digest
from pipeline.registry.auth import pull_scope
from pipeline.registry.client import RANGED_MIN_SIZE, RegistryClient
from pipeline.registry.transport import Body, discard
from pipeline.store.base import Readable
from pipeline.transfer.retry import Retryable

log = logging.getLogger("bale.registry")

READ_SIZE = 1024 * 1024
"""Bytes taken from the source per read while an upload body streams."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})

BlobOpener = Callable[[], Readable]


def push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def with_digest(location: str, digest: str) -> str:
    """`location` with `digest=` added to its query; the registry's own parameters (`_state`)
    stay exactly as they were."""
    parts = urllib.parse.urlsplit(location)
    extra = urllib.parse.urlencode({"digest": digest})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=query))


def parse_range_end(value: str | None) -> int | None:
    """The last byte an upload's `Range: 0-<end>` header says the registry holds (`bytes=`
    prefixed too); None when absent or malformed."""
    if not value:
        return None
    text = value.strip()
    if text.lower().startswith("bytes="):
        text = text[6:]
    start, sep, end = text.partition("-")
    if not sep or not start.strip().isdigit() or not end.strip().isdigit():
        return None
    return int(end)


@dataclass(frozen=True)
class _Upload:
    """An upload session the registry opened: where to send bytes, and its chunk floor."""

    location: str
    min_chunk: int = 0


def _check_stored(what: str, kind: str, reported: str | None, digest: str) -> None:
    """A registry reporting another digest than the bytes' own stored something else."""
    if reported and is_valid_digest(reported) and reported != digest:
        raise DigestMismatch(f"{what}: registry stored the {kind} as {reported}")


class RegistryPusher:
    """Pushes blobs and manifests to one registry through `client`.

    `chunk_size` switches from the single streamed PUT to PATCH chunks of that many bytes
    (raised to the registry's `OCI-Chunk-Min-Length`). In which repository of this registry
    each blob was seen or put is remembered on the client (`blob_repositories`), so a later push
    to another repository, by this pusher or another of the client's, can mount instead of
    upload. Thread-safe: one pusher may serve every transfer of a run.
    """

    def __init__(self, client: RegistryClient, *, chunk_size: int | None = None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.client = client
        self.transport = client.transport
        self.chunk_size = chunk_size

    # ---- blobs ---------------------------------------------------------------------------

    def blob_exists(self, repository: str, descriptor: Descriptor) -> bool:
        """HEAD the blob in `repository` (with push scope, so one token serves the push)."""
        what = self.transport.describe(repository, descriptor.digest)

        def attempt() -> bool:
            resp, _ = self.transport.request(
                "HEAD",
                f"/v2/{repository}/blobs/{descriptor.digest}",
                scopes=[push_scope(repository)],
            )
            if resp.status == 404:
                discard(resp)
                return False
            if resp.status in _REDIRECTS:  # the registry only redirects to bytes it has
                discard(resp)
                return True
            self.transport.check(resp, what)
            discard(resp)
            return True

        found = self.transport.call(what, attempt)
        if found:
            self._remember(descriptor.digest, repository)
        return found

    def mount_candidate(self, digest: str, repository: str) -> str | None:
        """Another repository of this registry where this run saw `digest`, if any."""
        return self.client.blob_repositories.other_than(digest, repository)

    def push_blob(
        self,
        repository: str,
        descriptor: Descriptor,
        open_stream: BlobOpener,
        *,
        mount_from: Sequence[str] = (),
        check_exists: bool = True,
        on_bytes: Callable[[int], None] | None = None,
    ) -> BlobWrite:
        """Make `descriptor` exist in `repository`: found, mounted, or streamed from
        `open_stream()` (called once per attempt, each call a fresh verified stream).

        Only the first of `mount_from` (or a repository this pusher saw the blob in) is tried:
        a refused mount still opens an upload, which is then used.
        """
        if check_exists and self.blob_exists(repository, descriptor):
            return BlobWrite("exists")
        source = next((r for r in mount_from if r != repository), None)
        source = source or self.mount_candidate(descriptor.digest, repository)
        what = self.transport.describe(repository, descriptor.digest)
        sent = 0

        def count(n: int) -> None:
            nonlocal sent
            sent += n
            if on_bytes is not None:
                on_bytes(n)

        def attempt() -> BlobWrite:
            # Without a mount to try, the bytes will be needed: the source is opened while the
            # upload is started (two round trips waited for at once, per blob). Not for a blob
            # a registry source reads in ranges: its first range is timed from the open to the
            # first read, to choose between one stream and parallel ranges, and a round trip
            # is nothing next to such a blob's transfer.
            early = source is None and 0 < descriptor.size < RANGED_MIN_SIZE
            opening = _Opening(open_stream) if early else None
            try:
                upload = self._start(repository, descriptor, source, what)
            except BaseException:
                if opening is not None:
                    opening.discard()
                raise
            if upload is None:
                return BlobWrite("mounted")
            opener = opening.take if opening is not None else open_stream
            try:
                self._send_blob(repository, descriptor, upload, opener, count, what)
            except BaseException:
                self._cancel(repository, upload)
                raise
            return BlobWrite("uploaded")

        result = self.transport.call(what, attempt)
        self._remember(descriptor.digest, repository)
        return BlobWrite(result.outcome, sent)

    def _remember(self, digest: str, repository: str) -> None:
        self.client.blob_repositories.add(digest, repository)

    def _start(
        self, repository: str, descriptor: Descriptor, mount_from: str | None, what: str
    ) -> _Upload | None:
        """POST an upload (a mount when `mount_from`); None when the mount linked the blob."""
        path = f"/v2/{repository}/blobs/uploads/"
        scopes = [push_scope(repository)]
        if mount_from:
            query = urllib.parse.urlencode({"mount": descriptor.digest, "from": mount_from})
            path = f"{path}?{query}"
            scopes.append(pull_scope(mount_from))
        resp, request = self.transport.request(
            "POST",
            path,
            scopes=scopes,
            expect=(201, 202) if mount_from else (202,),
            what=what,
            doing="starting an upload",
        )
        if resp.status == 201:
            discard(resp)
            log.debug("%s: mounted from %s", what, mount_from)
            return None
        location = resp.headers.get("Location")
        min_chunk = resp.headers.get("OCI-Chunk-Min-Length") or ""
        discard(resp)
        if not location:
            raise RegistryError(
                f"{what}: the registry started an upload without a Location",
                registry=self.transport.registry,
            )
        return _Upload(
            urllib.parse.urljoin(request.url, location),
            int(min_chunk) if min_chunk.strip().isdigit() else 0,
        )

    def _send_blob(
        self,
        repository: str,
        descriptor: Descriptor,
        upload: _Upload,
        open_stream: BlobOpener,
        count: Callable[[int], None],
        what: str,
    ) -> None:
        stream = open_stream() if descriptor.size > 0 else None
        try:
            location = upload.location
            size = descriptor.size
            scopes = [push_scope(repository)]
            if self.chunk_size is not None and size > 0:
                chunk = max(self.chunk_size, upload.min_chunk)
                offset = 0
                while offset < size:
                    n = min(chunk, size - offset)
                    assert stream is not None
                    headers = {
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(n),
                        "Content-Range": f"{offset}-{offset + n - 1}",
                    }
                    resp, request = self.transport.request(
                        "PATCH",
                        location,
                        scopes=scopes,
                        headers=headers,
                        body=_once(stream, n, count, what),
                    )
                    if resp.status != 202:
                        self.transport.check(resp, what)
                        discard(resp)
                        raise Retryable(f"PATCH answered HTTP {resp.status}")
                    end = parse_range_end(resp.headers.get("Range"))
                    next_location = resp.headers.get("Location")
                    discard(resp)
                    if end != offset + n - 1:
                        # The registry holds other bytes than we sent: start over, cleanly.
                        raise Retryable(
                            f"registry holds bytes 0-{end} after sending {offset}-{offset + n - 1}"
                        )
                    if next_location:
                        location = urllib.parse.urljoin(request.url, next_location)
                    offset += n
                body: Body = None
                headers = {"Content-Length": "0"}
            else:
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                }
                body = _once(stream, size, count, what) if stream is not None else None
            resp, _ = self.transport.request(
                "PUT",
                with_digest(location, descriptor.digest),
                scopes=scopes,
                headers=headers,
                body=body,
                expect=(201, 204),
                what=what,
                doing="committing the upload",
            )
            reported = resp.headers.get("Docker-Content-Digest")
            discard(resp)
            _check_stored(what, "blob", reported, descriptor.digest)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _cancel(self, repository: str, upload: _Upload) -> None:
        """DELETE an upload that failed, so the registry can drop its partial data."""
        try:
            resp, _ = self.transport.request(
                "DELETE", upload.location, scopes=[push_scope(repository)]
            )
            discard(resp)
        except Exception as exc:  # best effort: the registry purges stale uploads itself
            log.debug("cancelling upload failed: %s", exc)

    # ---- manifests -----------------------------------------------------------------------

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest `reference` (a tag or digest) names in `repository`, None when absent.

        One HEAD (see `RegistryClient.head_manifest`)."""
        described = self.client.head_manifest(repository, reference)
        return described.digest if described is not None else None

    def put_manifest(self, repository: str, reference: str, raw: RawManifest) -> None:
        """PUT the manifest's exact bytes under `reference` (a tag, or its own digest)."""
        what = self.transport.describe(repository, reference)

        def attempt() -> str | None:
            resp, _ = self.transport.request(
                "PUT",
                f"/v2/{repository}/manifests/{reference}",
                scopes=[push_scope(repository)],
                headers={"Content-Type": raw.media_type},
                body=raw.data,
                expect=(200, 201, 202),
                what=what,
                doing="manifest PUT",
            )
            reported = resp.headers.get("Docker-Content-Digest")
            discard(resp)
            return reported

        _check_stored(what, "manifest", self.transport.call(what, attempt), raw.digest)


class _Opening:
    """`open_stream()` called on a thread of its own; `take` waits for the stream (or raises
    what opening it raised), `discard` closes it unused."""

    def __init__(self, open_stream: BlobOpener) -> None:
        self._stream: Readable | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._open, args=(open_stream,), name="bale-open", daemon=True
        )
        self._thread.start()

    def _open(self, open_stream: BlobOpener) -> None:
        try:
            self._stream = open_stream()
        except BaseException as exc:  # handed to the pushing thread by take()
            self._error = exc

    def take(self) -> Readable:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._stream is not None
        return self._stream

    def discard(self) -> None:
        self._thread.join()
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def _once(
    stream: Readable | None, size: int, count: Callable[[int], None], what: str
) -> Callable[[], Iterator[bytes | memoryview]]:
    """A body of exactly `size` bytes from `stream`, to be sent once.

    A stream that has `readinto` fills one buffer over and over: each piece is sent (the
    connection's `sendall`) before the next is asked for, so no `bytes` is made per read and
    no fresh memory is faulted in for every MiB moved.
    """

    def body() -> Iterator[bytes | memoryview]:
        assert stream is not None
        into = getattr(stream, "readinto", None)
        if into is not None:
            yield from _filled(into, size, count, what)
            return
        left = size
        while left > 0:
            data = stream.read(min(READ_SIZE, left))
            if not data:
                raise TransferError(f"{what}: source ended {left} bytes short")
            if len(data) > left:
                raise TransferError(f"{what}: source is longer than its descriptor says")
            left -= len(data)
            count(len(data))
            yield data

    return body


def _filled(
    into: Callable[[memoryview], int], size: int, count: Callable[[int], None], what: str
) -> Iterator[memoryview]:
    buffer = memoryview(bytearray(min(READ_SIZE, size)))
    left = size
    while left > 0:
        n = into(buffer[: min(READ_SIZE, left)])
        if not n:
            raise TransferError(f"{what}: source ended {left} bytes short")
        left -= n
        count(n)
        yield buffer[:n]


def pusher_for(client: RegistryClient) -> RegistryPusher:
    """A pusher of `client` with the default upload (one streamed PUT per blob). Every pusher
    of a client shares what it learned about blobs: that lives on the client."""
    return RegistryPusher(client)


__all__ = [
    "BlobOpener",
    "RegistryPusher",
    "parse_range_end",
    "push_scope",
    "pusher_for",
    "with_digest",
]

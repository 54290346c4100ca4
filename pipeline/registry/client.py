"""Registry HTTP API v2, pull side: manifests, blobs, tags, referrers.

One client per registry, shared by every thread of a run. Requests, auth, retries and error
mapping belong to its `transport` (transport.py), which the push side (push.py) uses too; the
client adds what reading an image needs, and holds what a run learns about its registry
(`blob_repositories`, whether the referrers API exists).

Blob bodies are streamed raw (`Accept-Encoding: identity`, no decoding), stop at the
descriptor's size, resume with `Range` after a dropped connection, and are verified against the
digest while they stream (see `open_blob`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Mapping

import urllib3

from pipeline.errors import (
    DigestMismatch,
    ManifestError,
    NotFound,
    RegistryError,
    TransferError,
)
from pipeline.oci import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    RawManifest,
    parse_manifest,
    verify_digest,
)
from pipeline.refs import is_valid_digest, is_valid_tag
from pipeline.registry import wire
from pipeline.registry.auth import AuthRequest, pull_scope
from pipeline.registry.ranged import RANGE_CHUNK, RangeBudget, RangedBlobBody
from pipeline.registry.transport import (
    READ_TIMEOUT,
    ConnectionOptions,
    RegistryTransport,
    discard,
    read_capped,
    release,
    same_origin,
)
from pipeline.transfer import cancel
from pipeline.transfer.digest_stream import VerifyingReader
from pipeline.transfer.ratelimit import limited
from pipeline.transfer.retry import describe_error, is_stall, is_transient_error

log = logging.getLogger("bale.registry")

MAX_BLOB_INLINE = MAX_MANIFEST_BYTES
"""`get_blob` refuses blobs larger than this (skopeo's limit for configs); stream the rest."""

RANGED_MIN_SIZE = 4 * RANGE_CHUNK
"""Blobs from this size on are fetched as parallel ranges when `range_streams` > 1."""

MAX_TAGS_PAGE = 64 * 1024 * 1024
MAX_REDIRECTS = 10

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_LINK_RE = re.compile(r"<([^>]*)>\s*;\s*rel=\"?next\"?", re.IGNORECASE)

__all__ = ["READ_TIMEOUT", "BlobBody", "BlobRepositories", "RegistryClient"]


def _content_range_start(value: str | None) -> int | None:
    match = _CONTENT_RANGE_RE.match(value or "")
    return int(match.group(1)) if match else None


class BlobRepositories:
    """Where on one registry this run saw each blob (a repository), so that a push to another
    repository can mount the blob instead of sending it. Thread-safe; the first sighting wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, str] = {}

    def add(self, digest: str, repository: str) -> None:
        with self._lock:
            self._seen.setdefault(digest, repository)

    def other_than(self, digest: str, repository: str) -> str | None:
        """A repository other than `repository` known to hold `digest`, if any."""
        with self._lock:
            known = self._seen.get(digest)
        return known if known and known != repository else None


class RegistryClient:
    """A client for one registry (`Reference.registry`: `docker.io`, `127.0.0.1:5000`, …).

    How it connects, authenticates and retries is its `ConnectionOptions` (transport.py).
    """

    def __init__(self, registry: str, options: ConnectionOptions | None = None) -> None:
        self.transport = RegistryTransport(registry, options)
        self.options = self.transport.options
        self.registry = registry
        self.read_slice = self.transport.read_slice
        """Largest socket read of a blob body under a rate limit (None: no limit)."""
        self.range_streams = max(1, self.options.range_streams)
        self._range_budget = RangeBudget(self.range_streams)
        self.blob_repositories = BlobRepositories()
        """What pushes to this registry learned about where its blobs are (see push.py)."""
        self._no_referrers_api = False
        """Set by a 404 from the referrers API: the `sha256-<hex>` tag is asked directly."""

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, tls_verify={self.options.access.tls_verify})"

    # ---- manifests ---------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> RawManifest:
        """The manifest exactly as served (tag or digest); a digest reference is verified."""
        what = self.transport.describe(repository, reference)

        def attempt() -> tuple[bytes, str | None]:
            resp, _ = self.transport.request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                scopes=[pull_scope(repository)],
                headers={"Accept": MANIFEST_ACCEPT},
            )
            self.transport.check(resp, what)
            data = read_capped(resp, MAX_MANIFEST_BYTES)
            if data is None:
                raise ManifestError(f"{what}: manifest is over the {MAX_MANIFEST_BYTES} byte limit")
            return data, resp.headers.get("Content-Type")

        data, content_type = self.transport.call(what, attempt)
        try:
            raw = RawManifest.from_bytes(data, content_type)
        except ManifestError as exc:
            raise ManifestError(f"{what}: {exc}") from None
        if is_valid_digest(reference):
            verify_digest(data, reference, f"{what}: manifest")
        return raw

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """The manifest's descriptor without its body (a HEAD does not count as a Hub pull);
        None when the registry has no such manifest. One HEAD, and its 404 is the answer: a
        push looks for every manifest before writing it, and most are missing."""
        what = self.transport.describe(repository, reference)

        def attempt() -> tuple[bool, Descriptor | None]:
            resp, _ = self.transport.request(
                "HEAD",
                f"/v2/{repository}/manifests/{reference}",
                scopes=[pull_scope(repository)],
                headers={"Accept": MANIFEST_ACCEPT},
            )
            if resp.status == 404:
                discard(resp)
                return False, None
            self.transport.check(resp, what)
            headers = resp.headers
            discard(resp)
            digest = headers.get("Docker-Content-Digest")
            length = headers.get("Content-Length")
            media_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip()
            if digest and is_valid_digest(digest) and length and length.isdigit() and media_type:
                return True, Descriptor(media_type, digest, int(length))
            return True, None

        exists, found = self.transport.call(what, attempt)
        if not exists:
            return None
        if found is not None:
            if is_valid_digest(reference) and found.digest != reference:
                raise DigestMismatch(f"{what}: registry reports digest {found.digest}")
            return found
        try:  # no usable headers: the digest has to come from the bytes
            return self.get_manifest(repository, reference).descriptor()
        except NotFound:
            return None

    # ---- blobs -------------------------------------------------------------------------------

    def get_blob(self, repository: str, descriptor: Descriptor) -> bytes:
        """A small blob (a config), whole and verified."""
        if descriptor.size > MAX_BLOB_INLINE:
            raise ManifestError(
                f"{self.transport.describe(repository, descriptor.digest)}: blob of {descriptor.size} bytes is "
                f"over the {MAX_BLOB_INLINE} byte limit for configs"
            )
        reader = self.open_blob(repository, descriptor)
        try:
            return reader.read()
        finally:
            reader.close()

    def open_blob(self, repository: str, descriptor: Descriptor) -> VerifyingReader:
        """A verified, resuming, rate-limited stream of a blob's exact bytes.

        The first request is made here, so a missing blob or refused credentials raise at once.
        Reads stop at `descriptor.size`; the read that reaches it raises `DigestMismatch` when
        the bytes are wrong. A dropped connection resumes with `Range` from the byte reached.
        """
        what = self.transport.describe(repository, descriptor.digest)
        body: BlobBody | RangedBlobBody
        if self.range_streams > 1 and descriptor.size >= RANGED_MIN_SIZE:
            body = RangedBlobBody(
                self,
                repository,
                descriptor,
                what,
                streams=self.range_streams,
                budget=self._range_budget,
            )
        else:
            body = BlobBody(self, repository, descriptor, what)
        body.open()
        return VerifyingReader(
            limited(body, self.options.limiter), descriptor.digest, descriptor.size, what=what
        )

    def blob_response(
        self, repository: str, digest: str, headers: Mapping[str, str], what: str
    ) -> urllib3.BaseHTTPResponse:
        """GET a blob (retried), following redirects by hand: Authorization only goes back to
        the host that asked for it."""

        def attempt() -> urllib3.BaseHTTPResponse:
            resp, request = self.transport.request(
                "GET",
                f"/v2/{repository}/blobs/{digest}",
                scopes=[pull_scope(repository)],
                headers=headers,
            )
            hops = 0
            while resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                discard(resp)
                if not location or hops >= MAX_REDIRECTS:
                    raise RegistryError(
                        f"{what}: bad or too many redirects", registry=self.registry
                    )
                hops += 1
                target = urllib.parse.urljoin(request.url, location)
                if not same_origin(target, request.url):
                    kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                    request = AuthRequest("GET", target, kept)
                else:
                    request = AuthRequest("GET", target, dict(request.headers))
                resp = self.transport.open(request.url, request.headers)
            self.transport.check(resp, what)
            return resp

        return self.transport.call(what, attempt)

    # ---- tags, referrers ---------------------------------------------------------------------

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of the repository, following `Link` pages (relative or absolute)."""
        what = self.transport.describe(repository)
        path: str | None = f"/v2/{repository}/tags/list"
        tags: list[str] = []
        seen: set[str] = set()
        while path is not None and path not in seen:
            seen.add(path)
            current = path

            def attempt(current: str = current) -> tuple[bytes, str | None]:
                resp, _ = self.transport.request(
                    "GET",
                    current,
                    scopes=[pull_scope(repository)],
                    headers={"Accept": "application/json"},
                )
                self.transport.check(resp, what)
                data = read_capped(resp, MAX_TAGS_PAGE)
                if data is None:
                    raise RegistryError(f"{what}: tag list page too large", registry=self.registry)
                return data, resp.headers.get("Link")

            data, link = self.transport.call(what, attempt)
            try:
                page = json.loads(data)
            except ValueError:
                raise RegistryError(
                    f"{what}: tag list is not JSON", registry=self.registry
                ) from None
            listed = page.get("tags") if isinstance(page, dict) else None
            for tag in listed or []:
                if not isinstance(tag, str) or not tag or is_valid_digest(tag):
                    continue  # nulls (Nexus) and digests (Artifactory) are not tags: skopeo skips them
                if not is_valid_tag(tag):
                    raise RegistryError(
                        f"{what}: registry returned invalid tag {tag!r}", registry=self.registry
                    )
                tags.append(tag)
            path = _next_link(link)
        return tags

    def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose `subject` is `digest`: the referrers API, else the `sha256-<hex>` tag."""
        what = self.transport.describe(repository, digest)
        if self._no_referrers_api:
            return self._referrers_by_tag(repository, digest, artifact_type)
        query = (
            f"?artifactType={urllib.parse.quote(artifact_type, safe='')}" if artifact_type else ""
        )
        path: str | None = f"/v2/{repository}/referrers/{digest}{query}"
        found: list[Descriptor] = []
        seen: set[str] = set()
        while path is not None and path not in seen:
            seen.add(path)
            current = path

            def attempt(current: str = current) -> tuple[int, bytes, str | None, str | None]:
                resp, _ = self.transport.request(
                    "GET", current, scopes=[pull_scope(repository)], headers={"Accept": OCI_INDEX}
                )
                if resp.status in (404, 400, 405, 501):
                    discard(resp)
                    return resp.status, b"", None, None
                self.transport.check(resp, what)
                data = read_capped(resp, MAX_MANIFEST_BYTES) or b""
                return 200, data, resp.headers.get("Link"), resp.headers.get("OCI-Filters-Applied")

            status, data, link, filters = self.transport.call(what, attempt)
            if status != 200:
                if found:
                    break
                if status == 404:
                    # The distribution spec forbids a 404 from a registry with the API: this one
                    # has none, so later subjects go straight to the tag (a request each saved).
                    self._no_referrers_api = True
                return self._referrers_by_tag(repository, digest, artifact_type)
            try:
                index = parse_manifest(data, OCI_INDEX)
            except ManifestError as exc:
                raise RegistryError(
                    f"{what}: bad referrers response: {exc}", registry=self.registry
                ) from None
            entries = getattr(index, "manifests", ())
            if artifact_type and "artifactType" not in (filters or ""):
                entries = tuple(d for d in entries if d.artifact_type == artifact_type)
            found.extend(entries)
            path = _next_link(link)
        return found

    def _referrers_by_tag(
        self, repository: str, digest: str, artifact_type: str | None
    ) -> list[Descriptor]:
        algorithm, _, hexpart = digest.partition(":")
        try:
            raw = self.get_manifest(repository, f"{algorithm}-{hexpart}")
        except NotFound:
            return []
        if raw.media_type not in INDEX_TYPES:
            return []
        index = parse_manifest(raw.data, raw.media_type)
        entries = getattr(index, "manifests", ())
        if artifact_type:
            entries = tuple(d for d in entries if d.artifact_type == artifact_type)
        return list(entries)

    def blob_body(
        self,
        repository: str,
        descriptor: Descriptor,
        what: str,
        *,
        start: int = 0,
        end: int | None = None,
    ) -> BlobBody:
        """One resuming stream of a blob's bytes from `start` to `end` (how `RangedBlobBody`
        fetches its ranges: the client passes itself as their `BlobStreams`)."""
        return BlobBody(self, repository, descriptor, what, start=start, end=end)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobBody:
    """The raw bytes of one blob, reconnecting with `Range` when the connection drops.

    It counts the bytes it has handed out; after a failure it asks for `bytes=<reached>-` and
    carries on, so the hash in the `VerifyingReader` above it simply continues. A server that
    ignores `Range` (200 instead of 206) is read from the start and the bytes already delivered
    are skipped. Consecutive failures without progress are bounded by the retry policy.
    """

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        descriptor: Descriptor,
        what: str,
        *,
        start: int = 0,
        end: int | None = None,
    ) -> None:
        self._client = client
        self._repository = repository
        self.descriptor = descriptor
        self.what = what
        self.position = start
        self.end = descriptor.size if end is None else min(end, descriptor.size)
        """Where this body stops (exclusive): the blob's end, or the end of one range."""
        self._whole = start == 0 and self.end == descriptor.size
        self.ranged = False
        """True once the registry answered a Range request with 206."""
        self.resumes = 0
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._skip = 0
        self._failures = 0
        self._stalls = 0
        self._closed = False

    def open(self) -> None:
        headers = {"Accept-Encoding": "identity"}
        if self.position or not self._whole:
            last = "" if self.end == self.descriptor.size else str(self.end - 1)
            headers["Range"] = f"bytes={self.position}-{last}"
        resp = self._client.blob_response(
            self._repository, self.descriptor.digest, headers, self.what
        )
        self._skip = 0
        if "Range" in headers:
            if resp.status == 206:
                self.ranged = True
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != self.position:
                    release(resp)
                    raise TransferError(
                        f"{self.what}: asked to resume at byte {self.position}, "
                        f"the registry sent a range starting at {start}"
                    )
            else:
                log.info("%s: registry ignored Range; re-reading from the start", self.what)
                self._skip = self.position
        self._resp = resp

    def read(self, n: int = -1, /) -> bytes:
        want = self._want(n)
        if not want:
            return b""
        while True:
            try:
                data = self._connected().read(want)
                if not data:
                    raise _BodyEnded()
            except Exception as exc:
                self._lost(exc)
                continue
            self._advance(len(data))
            return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        """`read` into the caller's buffer: the bytes go from the socket straight there."""
        view = memoryview(buffer).cast("B")
        want = self._want(len(view))
        if not want:
            return 0
        while True:
            try:
                got = wire.readinto(self._connected(), view[:want])
                if not got:
                    raise _BodyEnded()
            except Exception as exc:
                self._lost(exc)
                continue
            self._advance(got)
            return got

    def _want(self, n: int | None) -> int:
        """How much the next read may take (0 at the end, which releases the connection)."""
        if self._closed:
            raise ValueError("read from a closed blob stream")
        cancel.check()  # a signal stops parallel range fetches too, which no limiter holds
        remaining = self.end - self.position
        if remaining <= 0:
            self._finish()
            return 0
        want = remaining if n is None or n < 0 else min(n, remaining)
        if want and self._client.read_slice is not None:
            # Rate-limited: small reads, each paid for before the next leaves the socket, so
            # the wire follows the limiter (the verifying reader above fills its reads).
            want = min(want, self._client.read_slice)
        return want

    def _connected(self) -> urllib3.BaseHTTPResponse:
        """The response to read from: (re)opened, past the bytes a resume must skip."""
        if self._resp is None:
            self.open()
        assert self._resp is not None
        while self._skip:
            dropped = self._resp.read(min(self._skip, 1 << 20))
            if not dropped:
                raise _BodyEnded()
            self._skip -= len(dropped)
        return self._resp

    def _advance(self, n: int) -> None:
        self._failures = self._stalls = 0
        self.position += n
        if self.position >= self.end:
            self._finish()

    def _lost(self, exc: Exception) -> None:
        """The connection broke: count it, wait, and let the next read resume. Anything but a
        network failure (or an early end) is raised as it is."""
        if not (isinstance(exc, _BodyEnded) or is_transient_error(exc)):
            raise exc
        resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()
            resp.release_conn()
        self._failures += 1
        stalled = is_stall(exc)
        self._stalls += stalled
        policy = self._client.options.retry
        reason = "connection closed early" if isinstance(exc, _BodyEnded) else describe_error(exc)
        if policy.exhausted(self._failures, self._stalls):
            hint = "; --read-timeout" if stalled else ""
            raise TransferError(
                f"{self.what}: {reason} at byte {self.position} of {self.descriptor.size} "
                f"(gave up after {self._failures} attempts{hint})"
            ) from exc
        wait = policy.wait_for(self._failures, None)
        log.warning(
            "%s: %s at byte %d of %d; resuming in %.1fs",
            self.what,
            reason,
            self.position,
            self.descriptor.size,
            wait,
        )
        self.resumes += 1
        if wait > 0:
            policy.sleep(wait)

    def _finish(self) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            release(resp)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            resp, self._resp = self._resp, None
            if resp is not None:
                release(resp)


class _BodyEnded(Exception):
    """The body ended before the descriptor's size."""


def _next_link(link: str | None) -> str | None:
    """The path and query of a `Link: <…>; rel="next"` (the host is always ours, as in skopeo)."""
    if not link:
        return None
    match = _LINK_RE.search(link)
    if not match:
        return None
    parts = urllib.parse.urlsplit(match.group(1))
    if not parts.path:
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")

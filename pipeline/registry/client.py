"""Registry HTTP API v2, pull side: manifests, blobs, tags, referrers.

One client per registry, shared by every thread of a run: one urllib3 pool (measured here at
~1.6 GiB/s on loopback, about four times httpx), one `RegistryAuth` holding the tokens. Every
request goes through the auth flow; every operation goes through `call_with_retry` (408/429/5xx
with `Retry-After`, transient network errors); every error is one line that names the registry
and the thing asked for, and never carries a credential or token.

Blob bodies are streamed raw (`Accept-Encoding: identity`, no decoding), stop at the
descriptor's size, resume with `Range` after a dropped connection, and are verified against the
digest while they stream (see `open_blob`).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import urllib3
import urllib3.exceptions

from pipeline.errors import (
    AuthError,
    BaleError,
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
from pipeline.refs import DOCKER_HUB, DOCKER_HUB_API, is_valid_digest, is_valid_tag
from pipeline.registry.auth import (
    MAX_TOKEN_RESPONSE,
    AuthRequest,
    AuthResponse,
    RegistryAuth,
    parse_www_authenticate,
    pull_scope,
)
from pipeline.registry.credentials import CredentialFlags, Credentials, find_credentials
from pipeline.registry.ranged import RANGE_CHUNK, RangeBudget, RangedBlobBody
from pipeline.registry.tls import describe_tls_error, tls_context
from pipeline.transfer import cancel
from pipeline.transfer.ratelimit import RateLimiter, limited
from pipeline.transfer.retry import (
    RETRYABLE_STATUS,
    Retryable,
    RetryPolicy,
    call_with_retry,
    describe_error,
    is_stall,
    is_transient_error,
    parse_retry_after,
)
from pipeline.transfer.verify import VerifyingReader

T = TypeVar("T")

log = logging.getLogger("bale.registry")

MAX_BLOB_INLINE = MAX_MANIFEST_BYTES
"""`get_blob` refuses blobs larger than this (skopeo's limit for configs); stream the rest."""

RANGED_MIN_SIZE = 4 * RANGE_CHUNK
"""Blobs from this size on are fetched as parallel ranges when `range_streams` > 1."""

MAX_ERROR_BODY = 64 * 1024
MAX_TAGS_PAGE = 64 * 1024 * 1024
MAX_REDIRECTS = 10
CONNECT_TIMEOUT = 30.0
"""Longest wait for a TCP connection (and for the socket to take more of a request body);
never more than the read timeout."""
PROBE_TIMEOUT = 10.0
"""How long the https-or-http probe of an insecure registry waits for each scheme."""
READ_TIMEOUT = 15.0
"""`--read-timeout`'s default: seconds without a byte from the registry before a request is
called stalled. A live registry answers a manifest or tag page, or sends the next bytes of a
blob, within a few seconds; TCP itself resends a lost segment within ~13 s of backoff, so 15 s
does not mistake a lossy link for a dead one. A false alarm is cheap (a blob resumes with
`Range` from the byte it reached) and a stall is retried once only (`RetryPolicy.stall_retries`),
so a registry that accepts and then says nothing fails a request in about 30 s (it took six
full timeouts of 30 s to 120 s before). Registries that think longer before answering (huge tag lists) are
given more with `--read-timeout`."""

RECEIVE_WINDOW_SECONDS = 0.02
"""Under `--limit-rate`, each connection's receive buffer holds about this much of the rate.

The limiter paces what bale *reads*; the kernel's receive buffer (autotuned up to tens of MiB)
would otherwise take the bytes off the wire at line speed long before they are read, so the
network saw bursts of many MiB followed by silence while the average was right. Linux doubles
the value asked for, so with `--jobs 8` at most about 0.3 s of the rate sits in buffers (a few
percent of a 10-second window), and one connection can still carry the whole rate up to a
40 ms round trip (eight of them, the rate at 300 ms)."""
MIN_RECEIVE_WINDOW = 16 * 1024
MAX_RECEIVE_WINDOW = 8 * 1024 * 1024


def receive_window(rate: float) -> int:
    """The socket receive buffer (and largest read) for downloads capped at `rate` bytes/s."""
    return int(min(MAX_RECEIVE_WINDOW, max(MIN_RECEIVE_WINDOW, rate * RECEIVE_WINDOW_SECONDS)))


_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_LINK_RE = re.compile(r"<([^>]*)>\s*;\s*rel=\"?next\"?", re.IGNORECASE)


class _QuietHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    """An HTTPS pool that does not warn about unverified TLS on every connection.

    Used only when the user asked for `--tls-verify=false`; silencing urllib3's warning through
    the `warnings` module would silence it for every other HTTP client in the process too.
    """

    def _validate_conn(self, conn: urllib3.connection.HTTPConnection) -> None:  # type: ignore[override]
        if conn.is_closed:
            conn.connect()


def api_host(registry: str) -> str:
    """Where the HTTP API of `registry` (as `Reference.registry` spells it) lives."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def _error_message(body: bytes, status: int, reason: str | None) -> str:
    """The registry's own words from `{"errors":[{"code","message"}]}`, on one line."""
    message = ""
    try:
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            message = str(first.get("message") or first.get("code") or "")
        elif isinstance(data.get("message"), str):
            message = data["message"]
        elif isinstance(data.get("details"), str):
            message = data["details"]
    if not message:
        message = (reason or "").strip() or f"HTTP {status}"
        message = message.lower()
    message = " ".join(message.split())
    return message[:200]


def _content_range_start(value: str | None) -> int | None:
    match = _CONTENT_RANGE_RE.match(value or "")
    return int(match.group(1)) if match else None


def _release(resp: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back when the body is fully read, else close it (never reuse a
    connection with unread bytes on it)."""
    remaining = getattr(resp, "length_remaining", None)
    if remaining == 0:
        resp.release_conn()
    else:
        resp.close()
        resp.release_conn()


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Throw away an intermediate response (a 401, a redirect), keeping the connection if cheap."""
    remaining = getattr(resp, "length_remaining", None)
    if remaining is not None and remaining <= MAX_ERROR_BODY:
        try:
            resp.drain_conn()
        except Exception:  # pragma: no cover - drain_conn already swallows network errors
            resp.close()
        resp.release_conn()
    else:
        _release(resp)


def _read_capped(resp: urllib3.BaseHTTPResponse, cap: int) -> bytes | None:
    """The whole body, or None when it is longer than `cap`."""
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > cap:
        resp.close()
        return None
    data = resp.read(cap + 1, decode_content=True)
    if len(data) > cap:
        resp.close()
        return None
    rest = resp.read(decode_content=True)  # normally b"": reaches EOF so the connection is freed
    data += rest
    if len(data) > cap:
        return None
    _release(resp)
    return data


class RegistryClient:
    """A client for one registry (`Reference.registry`: `docker.io`, `127.0.0.1:5000`, …).

    `credentials` wins over any file; without them each repository's credentials are looked up
    the way skopeo does (`authfile`, then the standard locations). `tls_verify=False` accepts
    any certificate and allows plain HTTP (https is tried first, as skopeo does).
    """

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        authfile: str | None = None,
        tls_verify: bool = True,
        flags: CredentialFlags | None = None,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        pool_size: int = 16,
        range_streams: int = 1,
        cert_dir: str | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.registry = registry
        self.cert_dir = cert_dir
        """The registry's certificate directory (None: the certs.d defaults); see tls.py."""
        self.read_timeout = read_timeout
        self.timeout = urllib3.Timeout(
            connect=min(CONNECT_TIMEOUT, read_timeout), read=read_timeout
        )
        self.range_streams = max(1, range_streams)
        """Parallel `Range` GETs for a large blob (1: one stream per blob); see ranged.py."""
        self._range_budget = RangeBudget(self.range_streams)
        self.host = api_host(registry)
        self.tls_verify = tls_verify
        self.retry = retry or RetryPolicy()
        self.limiter = limiter
        self._credentials = credentials
        self._authfile = authfile
        self.flags = flags or CredentialFlags()
        """The command's options for this registry's credentials, named by refusals."""
        self._found: dict[str | None, Credentials | None] = {}
        self._lock = threading.Lock()
        self._scheme: str | None = "https" if tls_verify else None
        self.auth = RegistryAuth(registry, self._credentials_for)
        self.read_slice: int | None = None
        """Largest socket read of a blob body under a rate limit (None: no limit)."""
        self._no_referrers_api = False
        """Set by a 404 from the referrers API: the `sha256-<hex>` tag is asked directly."""
        connection_options: dict[str, object] = {}
        if limiter is not None:
            self.read_slice = receive_window(limiter.rate)
            connection_options["socket_options"] = [
                *urllib3.connection.HTTPConnection.default_socket_options,
                (socket.SOL_SOCKET, socket.SO_RCVBUF, self.read_slice),
            ]
        cert_reqs = ssl.CERT_REQUIRED if tls_verify else ssl.CERT_NONE
        self._pool = urllib3.PoolManager(
            num_pools=8,
            maxsize=max(1, pool_size),
            cert_reqs=cert_reqs,
            ssl_context=tls_context(registry, verify=tls_verify, cert_dir=cert_dir),
            timeout=self.timeout,
            retries=False,
            **connection_options,
        )
        if not tls_verify:
            self._pool.pool_classes_by_scheme = {
                "http": urllib3.HTTPConnectionPool,
                "https": _QuietHTTPSConnectionPool,
            }

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, tls_verify={self.tls_verify})"

    # ---- credentials, scheme -----------------------------------------------------------------

    def _credentials_for(self, repository: str | None) -> Credentials | None:
        if self._credentials is not None:
            return self._credentials
        with self._lock:
            if repository not in self._found:
                self._found[repository] = find_credentials(
                    self.registry, repository, authfile=self._authfile
                )
            return self._found[repository]

    def _base(self) -> str:
        """`scheme://host`, probing https then http once when TLS checks are off."""
        if self._scheme is None:
            with self._lock:
                if self._scheme is None:
                    self._scheme = self._probe_scheme()
        return f"{self._scheme}://{self.host}"

    def _probe_scheme(self) -> str:
        """skopeo's order for an insecure registry: https if it answers, else http if that
        answers, else https again (so the real request reports the https failure). A host that
        stalls both ways is reported at once: the real request would only stall again."""
        wait = min(PROBE_TIMEOUT, self.read_timeout)
        timeout = urllib3.Timeout(connect=wait, read=wait)
        stalls = 0
        for scheme in ("https", "http"):
            try:
                resp = self._pool.request(
                    "GET",
                    f"{scheme}://{self.host}/v2/",
                    preload_content=False,
                    redirect=False,
                    retries=False,
                    timeout=timeout,
                )
            except urllib3.exceptions.NameResolutionError:
                return "https"
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.debug("%s: %s probe failed: %s", self.host, scheme, describe_error(exc))
                stalls += is_stall(exc)
                continue
            _discard(resp)
            return scheme
        if stalls == 2:
            raise TransferError(f"no data from {self.host} for {wait:g} s, over https or http")
        return "https"

    # ---- the request machinery ---------------------------------------------------------------

    def _urlopen(self, req: AuthRequest, *, preload: bool) -> urllib3.BaseHTTPResponse:
        log.debug("%s %s", req.method, _redact(req.url))
        return self._pool.request(
            req.method,
            req.url,
            headers=dict(req.headers),
            body=req.body,
            preload_content=preload,
            decode_content=False,
            redirect=False,
            retries=False,
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        scopes: Iterable[str],
        headers: Mapping[str, str] | None = None,
    ) -> tuple[urllib3.BaseHTTPResponse, AuthRequest]:
        """Send a request through the auth flow; the final response (status unchecked) and the
        request that produced it (with its Authorization, for same-host redirects)."""
        url = path if path.startswith(("http://", "https://")) else self._base() + path
        flow = self.auth.flow(AuthRequest(method, url, dict(headers or {})), scopes)
        request = next(flow)
        while True:
            if request.token_request:
                answer = self._token_exchange(request)
                try:
                    request = flow.send(answer)
                except AuthError as exc:
                    if exc.status in (401, 403):  # the token service refused us
                        raise self._refused(401, str(exc)) from None
                    raise
                except StopIteration:  # pragma: no cover - flows end on a registry response
                    raise RegistryError(
                        f"{self.registry}: authentication flow ended early"
                    ) from None
                continue
            resp = self._urlopen(request, preload=False)
            # dict(HTTPHeaderDict) joins repeated headers (two WWW-Authenticate lines) with ", ".
            answer = AuthResponse(resp.status, dict(resp.headers))
            try:
                next_request = flow.send(answer)
            except StopIteration:
                return resp, request
            except BaseException:
                _discard(resp)
                raise
            _discard(resp)
            request = next_request

    def _token_exchange(self, request: AuthRequest) -> AuthResponse:
        resp = self._urlopen(request, preload=False)
        body = _read_capped(resp, MAX_TOKEN_RESPONSE) or b""
        return AuthResponse(resp.status, dict(resp.headers), body)

    def _check(self, resp: urllib3.BaseHTTPResponse, what: str) -> None:
        """Raise the error a non-2xx response stands for (after reading its small body)."""
        status = resp.status
        if 200 <= status < 300:
            return
        try:
            body = resp.read(MAX_ERROR_BODY, decode_content=True) if resp.status != 204 else b""
        except (urllib3.exceptions.HTTPError, OSError):
            body = b""
        _release(resp)
        if status in RETRYABLE_STATUS:
            raise Retryable(f"HTTP {status}", parse_retry_after(resp.headers.get("Retry-After")))
        message = f"{_error_message(body, status, resp.reason)} ({status})"
        if status in (401, 403):
            challenges = parse_www_authenticate(resp.headers.get("WWW-Authenticate"))
            short = [c for c in challenges if c.error == "insufficient_scope"]
            if short:  # a token was issued, without this scope: the user, not the password
                scopes = " ".join(short[0].scopes) or "the scope asked for"
                status, message = 403, f"{scopes} not granted: {message}"
            raise self._refused(status, message)
        cls = NotFound if status == 404 else RegistryError
        raise cls(f"{what}: {message}", registry=self.registry, status=status)

    def _sent_credentials(self) -> Credentials | None:
        """The credentials this client authenticates with (given, or found in a login file)."""
        with self._lock:
            if self._credentials is not None:
                return self._credentials
            return next((c for c in self._found.values() if c is not None), None)

    def _refused(self, status: int | None, detail: str) -> AuthError:
        """A 401/403 as the user can act on it: no credentials at all (name the option that
        gives them), credentials the registry rejects, or a user without access (403, or a
        token short of the scope; `detail` says which). Not a blob digest: the image is named
        by whoever reports the failure."""
        creds = self._sent_credentials()
        host = self.registry
        if creds is None:
            message = (
                f"{host} requires credentials: give {self.flags.creds} USER:PASS or log in with "
                f"`podman login {host}` or `docker login {host}` ({self.flags.authfile} FILE "
                "for another auth file)"
            )
        elif status == 403:
            message = f"{host} denied user {creds.username} access: {detail}"
        else:
            origin = "" if self._credentials is not None else " from a saved login"
            message = (
                f"the registry refused these credentials for {host} (HTTP {status}, user "
                f"{creds.username}{origin}): check the user and password"
            )
        return AuthError(message, registry=host, status=status)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn` under the retry policy, network failures turned into one-line errors."""
        try:
            return call_with_retry(self.retry, fn, describe=what)
        except TransferError as exc:
            text = str(exc)
            if exc.__cause__ is not None and is_stall(exc.__cause__) and text.endswith(")"):
                raise TransferError(f"{text[:-1]}; --read-timeout)") from exc.__cause__
            raise
        except BaleError:
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RegistryError(
                f"{what}: {self._network_reason(exc)}", registry=self.registry
            ) from exc

    def _network_reason(self, exc: BaseException) -> str:
        if isinstance(exc, urllib3.exceptions.NameResolutionError):
            return f"cannot resolve registry host {self.host}"
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            return f"cannot connect to registry {self.host}: {_errno_text(exc)}"
        if isinstance(exc, urllib3.exceptions.SSLError):
            return describe_tls_error(
                exc,
                self.host,
                self.registry,
                verify=self.tls_verify,
                prefix=self.flags.prefix,
                cert_dir=self.cert_dir,
            )
        return describe_error(exc)

    def _what(self, repository: str, reference: str | None = None) -> str:
        base = f"{self.registry}/{repository}"
        if reference is None:
            return base
        return f"{base}@{reference}" if is_valid_digest(reference) else f"{base}:{reference}"

    # ---- manifests ---------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> RawManifest:
        """The manifest exactly as served (tag or digest); a digest reference is verified."""
        what = self._what(repository, reference)

        def attempt() -> tuple[bytes, str | None]:
            resp, _ = self._request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                scopes=[pull_scope(repository)],
                headers={"Accept": MANIFEST_ACCEPT},
            )
            self._check(resp, what)
            data = _read_capped(resp, MAX_MANIFEST_BYTES)
            if data is None:
                raise ManifestError(f"{what}: manifest is over the {MAX_MANIFEST_BYTES} byte limit")
            return data, resp.headers.get("Content-Type")

        data, content_type = self._call(what, attempt)
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
        what = self._what(repository, reference)

        def attempt() -> tuple[bool, Descriptor | None]:
            resp, _ = self._request(
                "HEAD",
                f"/v2/{repository}/manifests/{reference}",
                scopes=[pull_scope(repository)],
                headers={"Accept": MANIFEST_ACCEPT},
            )
            if resp.status == 404:
                _discard(resp)
                return False, None
            self._check(resp, what)
            headers = resp.headers
            _discard(resp)
            digest = headers.get("Docker-Content-Digest")
            length = headers.get("Content-Length")
            media_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip()
            if digest and is_valid_digest(digest) and length and length.isdigit() and media_type:
                return True, Descriptor(media_type, digest, int(length))
            return True, None

        exists, found = self._call(what, attempt)
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
                f"{self._what(repository, descriptor.digest)}: blob of {descriptor.size} bytes is "
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
        what = self._what(repository, descriptor.digest)
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
            limited(body, self.limiter), descriptor.digest, descriptor.size, what=what
        )

    def _blob_response(
        self, repository: str, digest: str, headers: Mapping[str, str], what: str
    ) -> urllib3.BaseHTTPResponse:
        """GET a blob (retried), following redirects by hand: Authorization only goes back to
        the host that asked for it."""

        def attempt() -> urllib3.BaseHTTPResponse:
            resp, request = self._request(
                "GET",
                f"/v2/{repository}/blobs/{digest}",
                scopes=[pull_scope(repository)],
                headers=headers,
            )
            hops = 0
            while resp.status in _REDIRECTS:
                location = resp.headers.get("Location")
                _discard(resp)
                if not location or hops >= MAX_REDIRECTS:
                    raise RegistryError(
                        f"{what}: bad or too many redirects", registry=self.registry
                    )
                hops += 1
                target = urllib.parse.urljoin(request.url, location)
                same = _origin(target) == _origin(request.url)
                if not same:
                    kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                    request = AuthRequest("GET", target, kept)
                else:
                    request = AuthRequest("GET", target, dict(request.headers))
                resp = self._urlopen(request, preload=False)
            self._check(resp, what)
            return resp

        return self._call(what, attempt)

    # ---- tags, referrers ---------------------------------------------------------------------

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of the repository, following `Link` pages (relative or absolute)."""
        what = self._what(repository)
        path: str | None = f"/v2/{repository}/tags/list"
        tags: list[str] = []
        seen: set[str] = set()
        while path is not None and path not in seen:
            seen.add(path)
            current = path

            def attempt(current: str = current) -> tuple[bytes, str | None]:
                resp, _ = self._request(
                    "GET",
                    current,
                    scopes=[pull_scope(repository)],
                    headers={"Accept": "application/json"},
                )
                self._check(resp, what)
                data = _read_capped(resp, MAX_TAGS_PAGE)
                if data is None:
                    raise RegistryError(f"{what}: tag list page too large", registry=self.registry)
                return data, resp.headers.get("Link")

            data, link = self._call(what, attempt)
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
        what = self._what(repository, digest)
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
                resp, _ = self._request(
                    "GET", current, scopes=[pull_scope(repository)], headers={"Accept": OCI_INDEX}
                )
                if resp.status in (404, 400, 405, 501):
                    _discard(resp)
                    return resp.status, b"", None, None
                self._check(resp, what)
                data = _read_capped(resp, MAX_MANIFEST_BYTES) or b""
                return 200, data, resp.headers.get("Link"), resp.headers.get("OCI-Filters-Applied")

            status, data, link, filters = self._call(what, attempt)
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

    def close(self) -> None:
        self._pool.clear()

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
        resp = self._client._blob_response(
            self._repository, self.descriptor.digest, headers, self.what
        )
        self._skip = 0
        if "Range" in headers:
            if resp.status == 206:
                self.ranged = True
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start != self.position:
                    _release(resp)
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
                got = _readinto(self._connected(), view[:want])
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
        policy = self._client.retry
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
            _release(resp)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            resp, self._resp = self._resp, None
            if resp is not None:
                _release(resp)


class _BodyEnded(Exception):
    """The body ended before the descriptor's size."""


def _readinto(resp: urllib3.BaseHTTPResponse, view: memoryview) -> int:
    """`resp.read(len(view))` into `view`, with no `bytes` in between when urllib3 holds nothing
    back (its own `readinto` reads a new `bytes` and copies it): a body read undecoded is the
    socket's bytes, so http.client's response fills the buffer itself. urllib3's byte counts
    are kept (a fully read response gives its connection back) and failures are raised as
    urllib3 raises them (so resuming treats them alike)."""
    fp = getattr(resp, "_fp", None)
    if (
        not isinstance(fp, http.client.HTTPResponse)
        or getattr(resp, "decode_content", True)
        or len(getattr(resp, "_decoded_buffer", b"x"))
        or not isinstance(getattr(resp, "_fp_bytes_read", None), int)
    ):
        data = resp.read(len(view))
        view[: len(data)] = data
        return len(data)
    try:
        got = fp.readinto(view)
    except TimeoutError as exc:
        pool = getattr(resp, "_pool", None)
        raise urllib3.exceptions.ReadTimeoutError(pool, None, "Read timed out.") from exc
    except (http.client.HTTPException, OSError) as exc:
        raise urllib3.exceptions.ProtocolError(f"Connection broken: {exc!r}", exc) from exc
    resp._fp_bytes_read += got  # type: ignore[attr-defined]
    if resp.length_remaining is not None:  # type: ignore[attr-defined]
        resp.length_remaining -= got  # type: ignore[attr-defined]
    return got


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


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


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(query="…" if parts.query else ""))


def _errno_text(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text or "refused" in text.lower():
        return "connection refused"
    if "timed out" in text.lower():
        return "connection timed out"
    return text.split(":")[-1].strip() or type(exc).__name__

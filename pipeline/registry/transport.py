"""The registry's HTTP transport: one object owns connections, auth, retries and error mapping.

One transport per registry, shared by every thread of a run and by both sides of the client
(`client.RegistryClient` pulls, `push.RegistryPusher` pushes): one urllib3 pool (measured here at
~1.6 GiB/s on loopback, about four times httpx), one `RegistryAuth` holding the tokens. Every
request goes through `request`, which runs the one auth loop and can carry a body (bytes, or a
stream sent once with its `Content-Length`); every operation goes through `call`
(`call_with_retry`: 408/429/5xx with `Retry-After`, transient network errors); every error is one
line that names the registry and the thing asked for, and never carries a credential or token.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

import urllib3
import urllib3.exceptions

from pipeline.errors import AuthError, BaleError, NotFound, RegistryError, TransferError
from pipeline.refs import DOCKER_HUB, DOCKER_HUB_API, is_valid_digest
from pipeline.registry import wire
from pipeline.registry.auth import (
    MAX_TOKEN_RESPONSE,
    AuthRequest,
    AuthResponse,
    RegistryAuth,
    parse_www_authenticate,
)
from pipeline.registry.credentials import CredentialFlags, Credentials, find_credentials
from pipeline.registry.tls import describe_tls_error, tls_context
from pipeline.transfer.ratelimit import RateLimiter
from pipeline.transfer.retry import (
    RETRYABLE_STATUS,
    Retryable,
    RetryPolicy,
    call_with_retry,
    describe_error,
    is_stall,
    parse_retry_after,
)

T = TypeVar("T")

log = logging.getLogger("bale.registry")

MAX_ERROR_BODY = 64 * 1024
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
COMMIT_READ_TIMEOUT = 600.0
"""For requests that carry data (PUT, PATCH): after the last byte the registry may take long to
answer (a storage backend moving a multi-GiB blob into place) while saying nothing. Sending still
fails fast on a stalled connection: urllib3 sends under the connect timeout."""

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

Body = bytes | Callable[[], Iterable[bytes | memoryview]] | None
"""A request body: bytes (sent again on an auth retry), or a callable giving the pieces of a
stream, which can be sent once (the caller sets `Content-Length`)."""


def receive_window(rate: float) -> int:
    """The socket receive buffer (and largest read) for downloads capped at `rate` bytes/s."""
    return int(min(MAX_RECEIVE_WINDOW, max(MIN_RECEIVE_WINDOW, rate * RECEIVE_WINDOW_SECONDS)))


def api_host(registry: str) -> str:
    """Where the HTTP API of `registry` (as `Reference.registry` spells it) lives."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


class Sent(NamedTuple):
    """A final response (status unchecked unless `expect` was given) and the request that
    produced it: its URL resolves a relative `Location`, its Authorization may follow a
    same-host redirect."""

    response: urllib3.BaseHTTPResponse
    request: AuthRequest


class _QuietHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    """An HTTPS pool that does not warn about unverified TLS on every connection.

    Used only when the user asked for `--tls-verify=false`; silencing urllib3's warning through
    the `warnings` module would silence it for every other HTTP client in the process too.
    """

    def _validate_conn(self, conn: urllib3.connection.HTTPConnection) -> None:  # type: ignore[override]
        if conn.is_closed:
            conn.connect()


class _BodyUsed(Exception):
    """A streamed body was asked for twice in one request (a 401 after the bytes were sent)."""


def release(resp: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back when the body is fully read, else close it (never reuse a
    connection with unread bytes on it)."""
    if wire.unread(resp) == 0:
        resp.release_conn()
    else:
        resp.close()
        resp.release_conn()


def discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Throw away an intermediate response (a 401, a redirect), keeping the connection if cheap."""
    remaining = wire.unread(resp)
    if remaining is not None and remaining <= MAX_ERROR_BODY:
        try:
            resp.drain_conn()
        except Exception:  # pragma: no cover - drain_conn already swallows network errors
            resp.close()
        resp.release_conn()
    else:
        release(resp)


def read_capped(resp: urllib3.BaseHTTPResponse, cap: int) -> bytes | None:
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
    release(resp)
    return data


def same_origin(url: str, other: str) -> bool:
    """Whether two URLs name the same scheme and host (credentials go only there)."""
    return _origin(url) == _origin(other)


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach one registry: credentials and TLS, as skopeo's flags spell them."""

    credentials: Credentials | None = None
    authfile: str | None = None
    tls_verify: bool = True
    cert_dir: str | None = None
    """`*.crt` CAs and a `*.cert`/`*.key` client certificate; None: the certs.d defaults."""
    flags: CredentialFlags = field(default_factory=CredentialFlags)
    """How the command spells these options (`--src-creds`, `--src-cert-dir`, ...): hints name them."""


@dataclass(frozen=True)
class ConnectionOptions:
    """How bale talks to one registry: how it is reached (`access`, the command's options for
    that registry), how long a request may wait, how often it is retried, how fast it reads.
    The transport and the client take this one object, so a new option is a field here or in
    `RegistryOptions` (and a line where the command fills it in), not a parameter threaded
    through every constructor."""

    access: RegistryOptions = field(default_factory=RegistryOptions)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    read_timeout: float = READ_TIMEOUT
    limiter: RateLimiter | None = None
    """The process's `--limit-rate` (None: no cap); sizes each connection's receive window."""
    pool_size: int = 16
    """Connections kept per host: the run's blob jobs times their range streams."""
    range_streams: int = 1
    """Parallel `Range` GETs for a large blob (1: one stream per blob); see ranged.py."""


class RegistryTransport:
    """Requests to one registry (`Reference.registry`: `docker.io`, `127.0.0.1:5000`, …).

    How it connects, authenticates and retries is its `ConnectionOptions`.
    """

    def __init__(self, registry: str, options: ConnectionOptions | None = None) -> None:
        self.registry = registry
        self.host = api_host(registry)
        self.options = options = options or ConnectionOptions()
        self.access = options.access
        self.timeout = urllib3.Timeout(
            connect=min(CONNECT_TIMEOUT, options.read_timeout), read=options.read_timeout
        )
        self._found: dict[str | None, Credentials | None] = {}
        self._lock = threading.Lock()
        self._scheme: str | None = "https" if options.access.tls_verify else None
        self.auth = RegistryAuth(registry, self._credentials_for)
        self.read_slice: int | None = None
        """Largest socket read of a blob body under a rate limit (None: no limit)."""
        connection_options: dict[str, Any] = {}
        if options.limiter is not None:
            self.read_slice = receive_window(options.limiter.rate)
            connection_options["socket_options"] = [
                *urllib3.connection.HTTPConnection.default_socket_options,
                (socket.SOL_SOCKET, socket.SO_RCVBUF, self.read_slice),
            ]
        cert_reqs = ssl.CERT_REQUIRED if options.access.tls_verify else ssl.CERT_NONE
        self.pool = urllib3.PoolManager(
            num_pools=8,
            maxsize=max(1, options.pool_size),
            cert_reqs=cert_reqs,
            ssl_context=tls_context(
                registry, verify=options.access.tls_verify, cert_dir=options.access.cert_dir
            ),
            timeout=self.timeout,
            retries=False,
            **connection_options,
        )
        """The connections (tests look at how many were made)."""
        if not options.access.tls_verify:
            self.pool.pool_classes_by_scheme = {
                "http": urllib3.HTTPConnectionPool,
                "https": _QuietHTTPSConnectionPool,
            }

    def close(self) -> None:
        self.pool.clear()

    # ---- credentials, scheme -----------------------------------------------------------------

    def _credentials_for(self, repository: str | None) -> Credentials | None:
        if self.access.credentials is not None:
            return self.access.credentials
        with self._lock:
            if repository not in self._found:
                self._found[repository] = find_credentials(
                    self.registry, repository, authfile=self.access.authfile
                )
            return self._found[repository]

    def base(self) -> str:
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
        wait = min(PROBE_TIMEOUT, self.options.read_timeout)
        timeout = urllib3.Timeout(connect=wait, read=wait)
        stalls = 0
        for scheme in ("https", "http"):
            try:
                resp = self.pool.request(
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
            discard(resp)
            return scheme
        if stalls == 2:
            raise TransferError(f"no data from {self.host} for {wait:g} s, over https or http")
        return "https"

    # ---- requests ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        scopes: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        expect: Collection[int] | None = None,
        what: str = "",
        doing: str = "",
    ) -> Sent:
        """Send one request through the auth flow (401 → token → again, as often as the flow
        says); `url` is a path on this registry or a whole URL.

        A URL on another host (an upload location some registries hand to a storage service)
        gets no Authorization. A streamed body is sent once: should the registry answer 401
        after it (a token that expired mid-upload), `Retryable` asks the caller's `call` to
        start the operation over. With `expect`, any other status raises: the error its status
        stands for (`check`), else one naming `what` and what was being `doing`.
        """
        absolute = url.startswith(("http://", "https://"))
        target = url if absolute else self.base() + url
        first = AuthRequest(method, target, dict(headers or {}))
        used = [False]
        if absolute and not same_origin(target, self.base()):
            sent = Sent(self._send(first, body, used), first)
        else:
            sent = self._authorized(first, scopes, body, used)
        if expect is not None and sent.response.status not in expect:
            self._unexpected(sent.response, expect, what, doing or method)
        return sent

    def _authorized(
        self, first: AuthRequest, scopes: Iterable[str], body: Body, used: list[bool]
    ) -> Sent:
        flow = self.auth.flow(first, scopes)
        request = next(flow)
        while True:
            if request.token_request:
                answer = self._token_exchange(request)
                try:
                    request = flow.send(answer)
                except AuthError as exc:
                    if exc.status in (401, 403):  # the token service refused us
                        raise self.refused(401, str(exc)) from None
                    raise
                except StopIteration:  # pragma: no cover - flows end on a registry response
                    raise RegistryError(
                        f"{self.registry}: authentication flow ended early",
                        registry=self.registry,
                    ) from None
                continue
            try:
                resp = self._send(request, body, used)
            except _BodyUsed:
                flow.close()
                raise Retryable("authorization expired during an upload") from None
            # dict(HTTPHeaderDict) joins repeated headers (two WWW-Authenticate lines) with ", ".
            answer = AuthResponse(resp.status, dict(resp.headers))
            try:
                next_request = flow.send(answer)
            except StopIteration:
                return Sent(resp, request)
            except BaseException:
                discard(resp)
                raise
            discard(resp)
            request = next_request

    def _send(self, request: AuthRequest, body: Body, used: list[bool]) -> urllib3.BaseHTTPResponse:
        payload: bytes | Iterable[bytes | memoryview] | None
        if callable(body):
            if used[0]:
                raise _BodyUsed()
            used[0] = True
            payload = body()
        else:
            payload = body
        log.debug("%s %s", request.method, _redact(request.url))
        extra: dict[str, Any] = {}
        if request.method in ("PUT", "PATCH"):
            read = max(COMMIT_READ_TIMEOUT, self.options.read_timeout)
            extra["timeout"] = urllib3.Timeout(connect=self.timeout.connect_timeout, read=read)
        return self.pool.request(
            request.method,
            request.url,
            headers=dict(request.headers),
            body=cast(Iterable[bytes], payload),  # memoryviews too: http.client sends them
            preload_content=False,
            decode_content=False,
            redirect=False,
            retries=False,
            **extra,
        )

    def _token_exchange(self, request: AuthRequest) -> AuthResponse:
        resp = self._send(request, request.body, [False])  # OAuth2 posts a form
        body = read_capped(resp, MAX_TOKEN_RESPONSE) or b""
        return AuthResponse(resp.status, dict(resp.headers), body)

    def open(self, url: str, headers: Mapping[str, str]) -> urllib3.BaseHTTPResponse:
        """A GET outside the auth flow, as given (a redirect target: the caller decides whether
        the Authorization goes along)."""
        return self._send(AuthRequest("GET", url, dict(headers)), None, [False])

    # ---- errors ------------------------------------------------------------------------------

    def check(self, resp: urllib3.BaseHTTPResponse, what: str) -> None:
        """Raise the error a non-2xx response stands for (after reading its small body)."""
        status = resp.status
        if 200 <= status < 300:
            return
        try:
            body = resp.read(MAX_ERROR_BODY, decode_content=True) if resp.status != 204 else b""
        except (urllib3.exceptions.HTTPError, OSError):
            body = b""
        release(resp)
        if status in RETRYABLE_STATUS:
            raise Retryable(f"HTTP {status}", parse_retry_after(resp.headers.get("Retry-After")))
        message = f"{_error_message(body, status, resp.reason)} ({status})"
        if status in (401, 403):
            challenges = parse_www_authenticate(resp.headers.get("WWW-Authenticate"))
            short = [c for c in challenges if c.error == "insufficient_scope"]
            if short:  # a token was issued, without this scope: the user, not the password
                scopes = " ".join(map(_sorted_actions, short[0].scopes)) or "the scope asked for"
                status, message = 403, f"{scopes} not granted: {message}"
            raise self.refused(status, message)
        cls = NotFound if status == 404 else RegistryError
        raise cls(f"{what}: {message}", registry=self.registry, status=status)

    def _unexpected(
        self, resp: urllib3.BaseHTTPResponse, expect: Collection[int], what: str, doing: str
    ) -> None:
        """An answer outside `expect` is drained and raises the error for its status (auth, not
        found, throttling), or else one naming what was being done."""
        self.check(resp, what)
        discard(resp)
        wanted = " or ".join(str(s) for s in sorted(expect))
        raise RegistryError(
            f"{what}: {doing} answered HTTP {resp.status}, expected {wanted}",
            registry=self.registry,
            status=resp.status,
        )

    def _sent_credentials(self) -> Credentials | None:
        """The credentials this registry is authenticated with (given, or found in a login file)."""
        with self._lock:
            if self.access.credentials is not None:
                return self.access.credentials
            return next((c for c in self._found.values() if c is not None), None)

    def refused(self, status: int | None, detail: str) -> AuthError:
        """A 401/403 as the user can act on it: no credentials at all (name the option that
        gives them), credentials the registry rejects, or a user without access (403, or a
        token short of the scope; `detail` says which). Not a blob digest: the image is named
        by whoever reports the failure."""
        creds = self._sent_credentials()
        host = self.registry
        if creds is None:
            message = (
                f"{host} requires credentials: give {self.access.flags.creds} USER:PASS or log in with "
                f"`podman login {host}` or `docker login {host}` ({self.access.flags.authfile} FILE "
                "for another auth file)"
            )
        elif status == 403:
            message = f"{host} denied user {creds.username} access: {detail}"
        else:
            origin = "" if self.access.credentials is not None else " from a saved login"
            message = (
                f"the registry refused these credentials for {host} (HTTP {status}, user "
                f"{creds.username}{origin}): check the user and password"
            )
        return AuthError(message, registry=host, status=status)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn` under the retry policy, network failures turned into one-line errors."""
        try:
            return call_with_retry(self.options.retry, fn, describe=what)
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
                verify=self.access.tls_verify,
                prefix=self.access.flags.prefix,
                cert_dir=self.access.cert_dir,
            )
        return describe_error(exc)

    def describe(self, repository: str, reference: str | None = None) -> str:
        """`registry/repository:tag` or `…@digest`: how errors name what was asked for."""
        base = f"{self.registry}/{repository}"
        if reference is None:
            return base
        return f"{base}@{reference}" if is_valid_digest(reference) else f"{base}:{reference}"


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


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


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


def _sorted_actions(scope: str) -> str:
    """`repository:r:push,pull` as `repository:r:pull,push`: distribution lists a challenge's
    actions in map order, which changes from one answer to the next."""
    head, _, actions = scope.rpartition(":")
    return f"{head}:{','.join(sorted(actions.split(',')))}" if head else scope

"""The one retry policy for registry and store calls: what to retry, how long to wait, how to give up.

Only two kinds of failure are retried: a `Retryable` the caller raises on purpose (HTTP 429/5xx,
a digest mismatch it wants to re-fetch) and a transient network error (reset, timeout, a body
cut short). Everything else, including bale's own errors, propagates at once: retrying a 404 or
a bad credential only delays the message. Waits are exponential with full jitter so that many
workers hitting one registry spread out, and a server's `Retry-After` is honoured (within
reason). Giving up is a `TransferError` with one line that says what and why.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import logging
import random
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity
import urllib3.exceptions

from pipeline.errors import TransferError
from pipeline.transfer import cancel

T = TypeVar("T")

log = logging.getLogger("bale.retry")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth another try (the same set go-containerregistry retries)."""

MAX_RETRY_AFTER = 300.0
"""Longest a server's `Retry-After` may make us wait, in seconds."""


class Retryable(Exception):
    """Raised inside a retried call to ask for another attempt.

    `reason` ends up in log lines and in the final error, so it should be short and name the
    cause ("HTTP 503", "digest mismatch"); `retry_after` is a server-requested delay in seconds.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta seconds or an HTTP-date.

    None when absent or unparseable (the caller then falls back to its own backoff); a date in
    the past is 0. `now` is a Unix time, for tests.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; be lenient with ones that omit it
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; one object validated once and passed around.

    `retries` counts extra attempts after the first (`retries=0` is one try). `sleep` and
    `random` are injectable so tests run without waiting and with known jitter; the default
    sleep ends early, with `Interrupted`, when a signal cancels the run.
    """

    retries: int = 5
    initial: float = 0.5
    maximum: float = 30.0
    max_retry_after: float = MAX_RETRY_AFTER
    stall_retries: int = 1
    """Extra attempts after a stall (a read or connect timeout), within `retries`. A server
    that accepted and then said nothing for a whole timeout rarely answers the next time;
    five more timeouts only made the message minutes late."""
    sleep: Callable[[float], None] = field(default=cancel.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("retry waits must be >= 0")

    @property
    def attempts(self) -> int:
        """Total attempts, the first one included."""
        return self.retries + 1

    def exhausted(self, failures: int, stalls: int) -> bool:
        """True when `failures` in a row, `stalls` of them timeouts, are all the policy allows."""
        return failures > self.retries or stalls > min(self.retries, self.stall_retries)

    def backoff(self, attempt: int) -> float:
        """Wait after failed attempt number `attempt` (1-based): full jitter under a doubling cap."""
        ceiling = min(self.maximum, self.initial * 2.0 ** max(0, attempt - 1))
        return ceiling * self.random()

    def wait_for(self, attempt: int, exc: BaseException | None) -> float:
        """The backoff, stretched to a `Retry-After` the server asked for (capped)."""
        wait = self.backoff(attempt)
        retry_after = exc.retry_after if isinstance(exc, Retryable) else _asked_wait(exc)
        if retry_after is not None:
            wait = max(wait, min(float(retry_after), self.max_retry_after))
        return wait


def _asked_wait(exc: BaseException | None) -> float | None:
    """The `Retry-After` of a store SDK's error response (botocore keeps the headers in
    `response`, oss2 in `headers`): a throttled store asks for a wait as a registry does."""
    response = getattr(exc, "response", None)
    headers = getattr(exc, "headers", None)
    if isinstance(response, dict):
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders")
    if not isinstance(headers, Mapping):
        return None
    value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    return parse_retry_after(value if isinstance(value, str) else None)


def _unwrap(exc: BaseException) -> BaseException:
    """The network error inside the wrappers urllib3, requests and oss2 put around it."""
    for _ in range(4):
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            exc = exc.reason
            continue
        inner = getattr(exc, "exception", None)  # oss2.exceptions.RequestError
        if isinstance(inner, BaseException) and type(exc).__name__ == "RequestError":
            exc = inner
            continue
        if _is_requests_error(exc) and exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
            continue
        break
    return exc


def _is_requests_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith("requests.")


def _has_reset(exc: BaseException) -> bool:
    """True when a connection was reset/aborted somewhere in the chain (not refused, not DNS)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
            return True
        current = current.__cause__ or current.__context__
    return "reset by peer" in str(exc).lower()


_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    TimeoutError,
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    urllib3.exceptions.ConnectTimeoutError,
)


def _botocore_errors() -> tuple[type[BaseException], ...]:
    """botocore's network errors; none when botocore was never imported (nothing can have
    raised one then), which spares a registry-only command its ~25 ms import."""
    if "botocore" not in sys.modules:
        return ()
    try:
        from botocore import exceptions as b
    except ImportError:  # pragma: no cover - botocore is a dependency, but optional here
        return ()
    names = (
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
    )
    return tuple(getattr(b, name) for name in names if hasattr(b, name))


def _requests_errors() -> tuple[type[BaseException], ...]:
    if "requests" not in sys.modules:  # as for botocore: unimported, it raised nothing
        return ()
    try:
        from requests import exceptions as r
    except ImportError:  # pragma: no cover
        return ()
    return (r.ChunkedEncodingError, r.ReadTimeout, r.ConnectTimeout)


def is_transient_error(exc: BaseException) -> bool:
    """True for network failures that another attempt may well not meet.

    Connection refused and name resolution failures are not transient here: the server is not
    there, and waiting through every backoff only delays the message. (botocore's
    EndpointConnectionError is the exception, as S3 endpoints drop connections in that shape.)
    """
    if not isinstance(exc, Exception):
        return False
    exc = _unwrap(exc)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return _has_reset(exc)
    if isinstance(exc, _NETWORK_ERRORS):
        return True
    return isinstance(exc, _botocore_errors() + _requests_errors())


def is_stall(exc: BaseException) -> bool:
    """True for a timeout: the server said nothing for a whole read (or connect) timeout."""
    inner = _unwrap(exc)
    if isinstance(inner, urllib3.exceptions.NewConnectionError):  # a subclass, but refused/DNS
        return False
    return isinstance(
        inner,
        TimeoutError | urllib3.exceptions.ReadTimeoutError | urllib3.exceptions.ConnectTimeoutError,
    )


_SECONDS_RE = re.compile(r"timeout=([0-9.]+)")


def _stall_text(exc: BaseException) -> str | None:
    """A timeout in words, `no data from HOST for N s`: urllib3's own text names its classes
    (`_QuietHTTPSConnectionPool(host=…): Read timed out.`)."""
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return None
    source: object
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        source, what = exc.pool, "no data from"
    elif isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        source = exc.args[0] if exc.args else None
        what = "no answer from"
    else:
        return None
    host, port = getattr(source, "host", None), getattr(source, "port", None)
    where = f"{host}:{port}" if host and port else host or "the server"
    match = _SECONDS_RE.search(str(exc))
    # A timeout while reading a body does not say how long: the pool's own read timeout.
    value = (
        float(match.group(1))
        if match
        else getattr(getattr(source, "timeout", None), "read_timeout", None)
    )
    seconds = f" for {value:g} s" if isinstance(value, int | float) else ""
    return f"{what} {where}{seconds}"


_QUERY_RE = re.compile(r"\?[^\s'\")]*")


def describe_error(exc: BaseException) -> str:
    """One line for a network error, with URL query strings (signatures) cut out."""
    inner = _unwrap(exc)
    stalled = _stall_text(inner)
    if stalled is not None:
        return stalled
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    text = _QUERY_RE.sub("?…", text)
    if len(text) > 200:
        text = text[:199] + "…"
    name = type(inner).__name__
    return f"{name}: {text}" if text else name


def _reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, Retryable) else describe_error(exc)


def call_with_retry(
    policy: RetryPolicy,
    fn: Callable[[], T],
    *,
    describe: str,
    is_transient: Callable[[BaseException], bool] | None = None,
) -> T:
    """Call `fn` until it returns, retrying `Retryable` and transient network errors.

    `is_transient` replaces `is_transient_error` for network errors; `Retryable` is always
    retried. Other exceptions propagate unchanged on the attempt they happen. After the last
    attempt the failure becomes a `TransferError` chained to the last exception.
    """
    transient = is_transient or is_transient_error
    stalls = 0

    def retried(exc: BaseException) -> bool:
        return isinstance(exc, Retryable) or transient(exc)

    def should_retry(exc: BaseException) -> bool:
        return retried(exc) and not policy.exhausted(0, stalls)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return policy.wait_for(state.attempt_number, exc)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        seconds = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "retrying %s in %.1fs after %s (attempt %d/%d)",
            describe,
            seconds,
            _reason(exc) if exc is not None else "failure",
            state.attempt_number + 1,
            policy.attempts,
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(should_retry),
        sleep=policy.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    attempts = 0

    def attempt() -> T:
        nonlocal attempts, stalls
        attempts += 1
        try:
            return fn()
        except Exception as exc:
            if not isinstance(exc, Retryable) and is_stall(exc):
                stalls += 1
            raise

    try:
        return retrying(attempt)
    except Exception as exc:
        if not retried(exc):
            raise
        plural = "attempt" if attempts == 1 else "attempts"
        raise TransferError(
            f"{describe}: {_reason(exc)} (gave up after {attempts} {plural})"
        ) from exc

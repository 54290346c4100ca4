from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import botocore.exceptions
import pytest
import requests.exceptions
import urllib3
import urllib3.exceptions
from oss2.exceptions import RequestError as OssRequestError

from pipeline.errors import DigestMismatch, NotFound, TransferError
from pipeline.transfer.retry import (
    MAX_RETRY_AFTER,
    RETRYABLE_STATUS,
    Retryable,
    RetryPolicy,
    call_with_retry,
    describe_error,
    is_stall,
    is_transient_error,
    parse_retry_after,
)

NOW = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT


def test_retryable_status() -> None:
    assert frozenset({408, 429, 500, 502, 503, 504}) == RETRYABLE_STATUS
    assert 404 not in RETRYABLE_STATUS and 401 not in RETRYABLE_STATUS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # RFC 850 form
        ("Wed Oct 21 07:28:10 2015", 10.0),  # asctime form, no zone: GMT
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("-5", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    result = parse_retry_after(value, now=NOW)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_policy_validation_and_attempts() -> None:
    assert RetryPolicy().attempts == 6
    assert RetryPolicy(retries=0).attempts == 1
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(initial=-1)
    assert RetryPolicy(retries=2) == RetryPolicy(retries=2, sleep=print)  # sleep not compared


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    top = RetryPolicy(initial=0.5, maximum=3.0, random=lambda: 1.0)
    assert [top.backoff(i) for i in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    half = RetryPolicy(initial=0.5, maximum=3.0, random=lambda: 0.5)
    assert half.backoff(3) == 1.0
    real = RetryPolicy(initial=0.5, maximum=30.0)
    samples = [real.backoff(4) for _ in range(500)]
    assert 0 <= min(samples) < 0.5 and 3.5 < max(samples) <= 4.0


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def failing(errors: list[BaseException], result: str = "ok") -> tuple[Callable[[], str], list[int]]:
    """A function that raises the given errors in turn, then returns `result`."""
    calls = [0]

    def fn() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def policy(retries: int = 5, **kwargs: object) -> tuple[RetryPolicy, Recorder]:
    rec = Recorder()
    return RetryPolicy(retries=retries, sleep=rec, random=lambda: 1.0, **kwargs), rec  # type: ignore[arg-type]


def test_success_first_time_does_not_sleep() -> None:
    p, rec = policy()
    fn, calls = failing([])
    assert call_with_retry(p, fn, describe="GET x") == "ok"
    assert calls == [1] and rec.sleeps == []


def test_retries_retryable_then_succeeds_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    p, rec = policy(retries=5, initial=0.5, maximum=30.0)
    fn, calls = failing([Retryable("HTTP 503"), Retryable("HTTP 502")])
    with caplog.at_level(logging.WARNING, logger="bale.retry"):
        assert call_with_retry(p, fn, describe="GET blob sha256:ab") == "ok"
    assert calls == [3]
    assert rec.sleeps == [0.5, 1.0]
    records = [r for r in caplog.records if r.name == "bale.retry"]
    assert [r.levelno for r in records] == [logging.WARNING] * 2
    assert [r.getMessage() for r in records] == [
        "retrying GET blob sha256:ab in 0.5s after HTTP 503 (attempt 2/6)",
        "retrying GET blob sha256:ab in 1.0s after HTTP 502 (attempt 3/6)",
    ]


def test_gives_up_with_transfer_error() -> None:
    p, rec = policy(retries=3, initial=0.5, maximum=1.5)
    fn, calls = failing([Retryable(f"HTTP 50{i}") for i in range(10)])
    with pytest.raises(TransferError) as info:
        call_with_retry(p, fn, describe="GET manifest r:1")
    assert calls == [4]
    assert rec.sleeps == [0.5, 1.0, 1.5]
    assert str(info.value) == "GET manifest r:1: HTTP 503 (gave up after 4 attempts)"
    assert isinstance(info.value.__cause__, Retryable)


def test_zero_retries_is_one_try() -> None:
    p, rec = policy(retries=0)
    fn, calls = failing([Retryable("HTTP 429")])
    with pytest.raises(TransferError, match=r"^PUT k: HTTP 429 \(gave up after 1 attempt\)$"):
        call_with_retry(p, fn, describe="PUT k")
    assert calls == [1] and rec.sleeps == []


def test_retry_after_stretches_backoff_and_is_capped() -> None:
    p, rec = policy(retries=3, initial=0.5)
    fn, _ = failing(
        [
            Retryable("HTTP 429", retry_after=7),
            Retryable("HTTP 429", retry_after=0.1),
            Retryable("HTTP 429", retry_after=10_000),
        ]
    )
    assert call_with_retry(p, fn, describe="x") == "ok"
    assert rec.sleeps == [7.0, 1.0, MAX_RETRY_AFTER]


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        NotFound("no such blob", registry="r", status=404),
        DigestMismatch("blob: expected a, got b"),
        TransferError("inner retry already gave up"),
        ConnectionRefusedError(111, "Connection refused"),
        OSError(28, "No space left on device"),
    ],
)
def test_other_errors_propagate_unchanged_at_once(error: Exception) -> None:
    p, rec = policy()
    fn, calls = failing([error])
    with pytest.raises(type(error)) as info:
        call_with_retry(p, fn, describe="x")
    assert info.value is error
    assert calls == [1] and rec.sleeps == []


def test_keyboard_interrupt_is_never_retried() -> None:
    p, _ = policy()
    fn, calls = failing([KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        call_with_retry(p, fn, describe="x")
    assert calls == [1]


def test_network_errors_retried_then_one_line_transfer_error() -> None:
    p, _ = policy(retries=2)
    fn, calls = failing([ConnectionResetError(104, "Connection reset by peer")] * 5)
    with pytest.raises(TransferError) as info:
        call_with_retry(p, fn, describe="GET blob d")
    assert calls == [3]
    message = str(info.value)
    assert message == (
        "GET blob d: ConnectionResetError: [Errno 104] Connection reset by peer "
        "(gave up after 3 attempts)"
    )
    assert isinstance(info.value.__cause__, ConnectionResetError)


def test_custom_is_transient_replaces_the_default() -> None:
    p, _ = policy()
    fn, calls = failing([KeyError("a"), KeyError("b")])
    assert (
        call_with_retry(p, fn, describe="x", is_transient=lambda e: isinstance(e, KeyError)) == "ok"
    )
    assert calls == [3]
    fn, calls = failing([ConnectionResetError()])
    with pytest.raises(ConnectionResetError):
        call_with_retry(p, fn, describe="x", is_transient=lambda e: False)
    # Retryable is retried whatever the predicate says
    fn, calls = failing([Retryable("HTTP 500")])
    assert call_with_retry(p, fn, describe="x", is_transient=lambda e: False) == "ok"


def _reset_cause() -> urllib3.exceptions.NewConnectionError:
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError as inner:
            raise urllib3.exceptions.NewConnectionError(None, "Failed to establish") from inner  # type: ignore[arg-type]
    except urllib3.exceptions.NewConnectionError as exc:
        return exc


TRANSIENT = [
    ConnectionResetError(),
    ConnectionAbortedError(),
    BrokenPipeError(),
    TimeoutError(),
    TimeoutError("timed out"),
    http.client.IncompleteRead(b"abc", 10),
    http.client.RemoteDisconnected("closed"),
    urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError()),
    urllib3.exceptions.IncompleteRead(3, 10),
    urllib3.exceptions.ReadTimeoutError(None, "/v2/", "Read timed out."),  # type: ignore[arg-type]
    urllib3.exceptions.ConnectTimeoutError(None, "timed out"),
    _reset_cause(),
    urllib3.exceptions.MaxRetryError(
        None,  # type: ignore[arg-type]
        "/v2/",
        urllib3.exceptions.ReadTimeoutError(None, "/v2/", "timed out"),  # type: ignore[arg-type]
    ),
    botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"),
    botocore.exceptions.ConnectionClosedError(endpoint_url="http://s3"),
    botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"),
    botocore.exceptions.ConnectTimeoutError(endpoint_url="http://s3"),
    botocore.exceptions.ResponseStreamingError(error="reset"),
    botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2),
    requests.exceptions.ChunkedEncodingError("broken"),
    requests.exceptions.ReadTimeout("slow"),
    requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError())
    ),
    OssRequestError(requests.exceptions.ConnectionError(ConnectionResetError(104, "reset"))),
]

NOT_TRANSIENT = [
    ValueError("x"),
    OSError("disk"),
    ConnectionRefusedError(),
    KeyboardInterrupt(),
    urllib3.exceptions.NewConnectionError(None, "Connection refused"),  # type: ignore[arg-type]
    urllib3.exceptions.NameResolutionError("nohost", None, socket.gaierror()),  # type: ignore[arg-type]
    urllib3.exceptions.MaxRetryError(
        None,  # type: ignore[arg-type]
        "/v2/",
        urllib3.exceptions.NewConnectionError(None, "Connection refused"),  # type: ignore[arg-type]
    ),
    urllib3.exceptions.SSLError("certificate verify failed"),
    botocore.exceptions.NoCredentialsError(),
    requests.exceptions.ConnectionError("refused"),
    TransferError("gave up"),
    Retryable("HTTP 503"),  # retried by call_with_retry, but it is not a network error
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_is_transient(error: BaseException) -> None:
    assert is_transient_error(error)


@pytest.mark.parametrize("error", NOT_TRANSIENT, ids=lambda e: type(e).__name__)
def test_is_not_transient(error: BaseException) -> None:
    assert not is_transient_error(error)


def test_describe_error_is_one_line_without_query_strings() -> None:
    error = urllib3.exceptions.MaxRetryError(
        None,  # type: ignore[arg-type]
        "https://bucket.s3/blob?X-Amz-Signature=SECRET&X-Amz-Credential=KEY",
        urllib3.exceptions.ReadTimeoutError(
            None,
            "https://bucket.s3/blob?X-Amz-Signature=SECRET",
            "Read timed out.\nmore",  # type: ignore[arg-type]
        ),
    )
    text = describe_error(error)
    assert "SECRET" not in text and "KEY" not in text and "\n" not in text
    assert text == "no data from the server"
    assert len(describe_error(ValueError("x" * 1000))) < 230


def test_stalls_are_described_in_words() -> None:
    pool = urllib3.HTTPSConnectionPool("registry.example", 5000, timeout=urllib3.Timeout(read=15))
    body = urllib3.exceptions.ReadTimeoutError(pool, None, "Read timed out.")
    head = urllib3.exceptions.ReadTimeoutError(pool, "/v2/", "Read timed out. (read timeout=7)")
    assert describe_error(body) == "no data from registry.example:5000 for 15 s"
    assert describe_error(head) == "no data from registry.example:5000 for 7 s"
    assert is_stall(body) and is_stall(TimeoutError()) and not is_stall(ConnectionResetError())
    refused = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    assert not is_stall(refused)


def test_a_stall_is_retried_once_within_the_retries() -> None:
    stall = urllib3.exceptions.ReadTimeoutError(None, "/v2/", "Read timed out.")  # type: ignore[arg-type]
    p, _ = policy(retries=5, initial=0.0)
    fn, calls = failing([stall] * 6)
    with pytest.raises(TransferError, match="gave up after 2 attempts"):
        call_with_retry(p, fn, describe="GET x")
    assert calls == [2]
    # Other failures between stalls still get every retry; --retries 0 retries no stall.
    reset = ConnectionResetError()
    fn, calls = failing([stall, reset, reset, reset])
    assert call_with_retry(p, fn, describe="GET x") == "ok" and calls == [5]
    fn, calls = failing([stall])
    with pytest.raises(TransferError):
        call_with_retry(policy(retries=0)[0], fn, describe="GET x")


# --- against a real socket: urllib3 raises what it raises, and the retry loop copes ---


@contextlib.contextmanager
def flaky_server(behaviours: list[str]) -> Iterator[int]:
    """A loopback HTTP server whose n-th connection does behaviours[n]; the rest succeed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    stop = threading.Event()
    body = b"x" * 100

    def handle(conn: socket.socket, behaviour: str) -> None:
        with conn:
            conn.recv(65536)
            if behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif behaviour == "short":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body[:10])
            elif behaviour == "hang":
                stop.wait(1.0)
            else:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + body
                )

    def serve() -> None:
        index = 0
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            behaviour = behaviours[index] if index < len(behaviours) else "ok"
            index += 1
            threading.Thread(target=handle, args=(conn, behaviour), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(2)
        listener.close()


@pytest.mark.parametrize("behaviour", ["reset", "short", "hang"])
def test_real_urllib3_failures_are_retried(behaviour: str) -> None:
    with flaky_server([behaviour, behaviour]) as port:
        pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1, read=0.2))
        p, rec = policy(retries=3, initial=0.0, stall_retries=2)

        def fetch() -> bytes:
            response = pool.request("GET", f"http://127.0.0.1:{port}/blob")
            return response.data

        assert call_with_retry(p, fetch, describe="GET blob") == b"x" * 100
        assert len(rec.sleeps) == 2


def test_real_connection_refused_is_not_retried() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        pool = urllib3.PoolManager(retries=False, timeout=1)
        p, rec = policy(retries=3)
        with pytest.raises(urllib3.exceptions.NewConnectionError):
            call_with_retry(
                p, lambda: pool.request("GET", f"http://127.0.0.1:{port}/"), describe="x"
            )
        assert rec.sleeps == []


def test_transient_check_does_not_import_storage_sdks() -> None:
    """A registry-only command asks about its first 404 without loading botocore or requests
    (~25 ms): nothing of theirs can have been raised if they were never imported."""
    import subprocess
    import sys

    code = (
        "import sys; from pipeline.transfer.retry import is_transient_error; "
        "assert not is_transient_error(ValueError('x')); "
        "assert 'botocore' not in sys.modules and 'requests' not in sys.modules, sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""The registry push side against real registries: HEAD, mounts (201 and 202), streamed uploads
(one PUT, or PATCH chunks with their Range checked), retries from a fresh upload, exact manifest
bytes, token scopes, bounded memory."""

from __future__ import annotations

import hashlib
import io
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import DigestMismatch, RegistryError, TransferError
from pipeline.oci import DOCKER_MANIFEST, Descriptor, RawManifest, sha256_digest
from pipeline.registry.client import RANGED_MIN_SIZE, RegistryClient
from pipeline.registry.credentials import Credentials
from pipeline.registry.push import RegistryPusher, parse_range_end, with_digest
from pipeline.registry.transport import ConnectionOptions, RegistryOptions
from pipeline.transfer.digest_stream import VerifyingReader
from pipeline.transfer.retry import RetryPolicy
from tests.bed.proxy import FaultProxy, Hold, Respond
from tests.bed.registry import RegistryServer

FAST = RetryPolicy(retries=3, initial=0.01, maximum=0.05)
MiB = 1 << 20


# ---- pure helpers ------------------------------------------------------------------------------


def test_with_digest_keeps_the_registry_query() -> None:
    digest = "sha256:" + "ab" * 32
    out = with_digest("http://r:5000/v2/a/blobs/uploads/u?_state=x%2By&n=1", digest)
    assert out == f"http://r:5000/v2/a/blobs/uploads/u?_state=x%2By&n=1&digest=sha256%3A{'ab' * 32}"
    assert with_digest("/v2/a/blobs/uploads/u", digest).startswith("/v2/a/blobs/uploads/u?digest=")


def test_parse_range_end() -> None:
    assert parse_range_end("0-1023") == 1023
    assert parse_range_end("bytes=0-9") == 9
    assert parse_range_end(None) is None
    assert parse_range_end("garbage") is None


# ---- against registries ------------------------------------------------------------------------


def _blob(size: int, seed: int) -> tuple[bytes, Descriptor]:
    data = hashlib.shake_256(f"push-{seed}".encode()).digest(size)
    return data, Descriptor("application/octet-stream", sha256_digest(data), size)


def _client(
    server: RegistryServer | FaultProxy, owner: RegistryServer | None = None
) -> RegistryClient:
    owner = owner or server  # type: ignore[assignment]
    creds = None
    if isinstance(owner, RegistryServer) and owner.username:
        creds = Credentials(owner.username, owner.password or "")
    return RegistryClient(
        server.host,
        ConnectionOptions(RegistryOptions(credentials=creds, tls_verify=False), retry=FAST),
    )


class Opener:
    """`open_stream` for a blob in memory, counting how often it was opened."""

    def __init__(self, data: bytes, digest: str | None = None) -> None:
        self.data = data
        self.digest = digest or sha256_digest(data)
        self.opened = 0

    def __call__(self) -> VerifyingReader:
        self.opened += 1
        return VerifyingReader(io.BytesIO(self.data), self.digest, len(self.data), what="test")


@pytest.mark.integration
def test_upload_exists_and_mount(registry: RegistryServer, unique_repo: str) -> None:
    data, desc = _blob(3 * MiB + 7, 1)
    with _client(registry) as client:
        pusher = RegistryPusher(client)
        mark = registry.mark()
        first = pusher.push_blob(f"{unique_repo}/a", desc, Opener(data))
        assert (first.outcome, first.sent) == ("uploaded", desc.size)
        log = registry.requests(since=mark)
        assert [(e.method, e.status) for e in log if "/blobs/" in e.path] == [
            ("HEAD", 404),
            ("POST", 202),
            ("PUT", 201),
        ]
        assert "_state=" in log[-1].query and "digest=" in log[-1].query
        assert client.get_blob(f"{unique_repo}/a", desc) == data

        assert pusher.push_blob(f"{unique_repo}/a", desc, Opener(data)).outcome == "exists"

        # Another repository of the same registry: mounted (the pusher saw it in .../a).
        mark = registry.mark()
        assert pusher.push_blob(f"{unique_repo}/b", desc, Opener(data)).outcome == "mounted"
        posts = registry.requests("POST", since=mark)
        assert len(posts) == 1 and posts[0].status == 201
        assert f"from={unique_repo.replace('/', '%2F')}%2Fa" in posts[0].query
        assert registry.count("PUT", since=mark) == 0

        # A mount from a repository without the blob: 202, and that upload is the one used.
        small, sdesc = _blob(5000, 2)
        mark = registry.mark()
        opener = Opener(small)
        out = pusher.push_blob(f"{unique_repo}/c", sdesc, opener, mount_from=["nowhere/x"])
        assert out.outcome == "uploaded" and opener.opened == 1
        posts = registry.requests("POST", since=mark)
        assert [(("mount=" in e.query), e.status) for e in posts] == [(True, 202)]
        assert registry.count("DELETE", since=mark) == 0
        assert client.get_blob(f"{unique_repo}/c", sdesc) == small


@pytest.mark.integration
def test_chunked_upload_honours_min_length_and_checks_range(
    registry: RegistryServer, unique_repo: str
) -> None:
    data, desc = _blob(2 * MiB + 100, 3)
    with _client(registry) as client:
        pusher = RegistryPusher(client, chunk_size=MiB)
        mark = registry.mark()
        assert pusher.push_blob(unique_repo, desc, Opener(data)).outcome == "uploaded"
        patches = registry.requests("PATCH", since=mark)
        assert len(patches) == 3 and all(e.status == 202 for e in patches)
        puts = registry.requests("PUT", since=mark)
        assert len(puts) == 1 and puts[0].status == 201
        reader = client.open_blob(unique_repo, desc)
        assert reader.read() == data
        reader.close()


@pytest.mark.integration
def test_failed_upload_restarts_with_a_fresh_upload_and_stream(
    registry: RegistryServer, unique_repo: str
) -> None:
    data, desc = _blob(700_000, 4)
    with FaultProxy(registry.host) as proxy:
        proxy.add(Respond(method="PUT", path=r"/blobs/uploads/", status=503))
        with _client(proxy, registry) as client:
            opener = Opener(data)
            out = RegistryPusher(client).push_blob(unique_repo, desc, opener)
        assert out.outcome == "uploaded"
        assert opener.opened == 2  # the first stream was spent on the refused PUT
        assert out.sent == 2 * desc.size
        assert [r.status for r in proxy.find("POST")] == [202, 202]
        assert [r.status for r in proxy.find("PUT")] == [503, 201]
        assert len(proxy.find("DELETE")) == 1  # the failed upload was cancelled


@pytest.mark.integration
def test_bad_source_bytes_commit_nothing(registry: RegistryServer, unique_repo: str) -> None:
    data, desc = _blob(300_000, 5)
    corrupt = bytearray(data)
    corrupt[-1] ^= 1
    with _client(registry) as client:
        pusher = RegistryPusher(client)
        with pytest.raises(DigestMismatch):
            pusher.push_blob(unique_repo, desc, Opener(bytes(corrupt), desc.digest))
        assert not pusher.blob_exists(unique_repo, desc)


@pytest.mark.integration
def test_token_scopes_for_push_and_mount(
    token_registry: RegistryServer, token_issuer: Any, unique_repo: str
) -> None:
    data, desc = _blob(40_000, 6)
    with _client(token_registry) as client:
        pusher = RegistryPusher(client)
        pusher.push_blob(f"{unique_repo}/src", desc, Opener(data))
        token_issuer.reset()
        out = pusher.push_blob(
            f"{unique_repo}/dst", desc, Opener(data), mount_from=[f"{unique_repo}/src"]
        )
        assert out.outcome == "mounted"
    asked = {str(s) for r in token_issuer.issued for s in r.scopes}
    assert f"repository:{unique_repo}/dst:pull,push" in asked
    assert f"repository:{unique_repo}/src:pull" in asked


@pytest.mark.integration
def test_expired_token_during_an_upload_restarts_it(
    token_registry: RegistryServer, token_issuer: Any, unique_repo: str
) -> None:
    """A 401 answering the body (a token that died mid-upload) cannot resend the body: the
    upload starts over with a new token, a new POST and a new stream."""
    data, desc = _blob(200_000, 7)
    challenge = f'Bearer realm="{token_issuer.realm}",service="{token_issuer.service}"'
    with FaultProxy(token_registry.host) as proxy:
        proxy.add(
            Respond(
                method="PUT",
                path=r"/blobs/uploads/",
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        )
        with _client(proxy, token_registry) as client:
            opener = Opener(data)
            assert RegistryPusher(client).push_blob(unique_repo, desc, opener).outcome == "uploaded"
        assert opener.opened == 2
        assert [r.status for r in proxy.find("PUT")] == [401, 201]


@pytest.mark.integration
def test_manifest_exact_bytes_and_order(
    htpasswd_registry: RegistryServer, unique_repo: str
) -> None:
    config, cdesc = _blob(300, 8)
    layer, ldesc = _blob(1000, 9)
    config_json = _desc_json(cdesc, "application/vnd.docker.container.image.v1+json")
    layer_json = _desc_json(ldesc, "application/vnd.docker.image.rootfs.diff.tar.gzip")
    body = (  # docker's 3-space indent: any re-serialisation would change the digest
        f'{{\n   "schemaVersion": 2,\n   "mediaType": "{DOCKER_MANIFEST}",\n'
        f'   "config": {config_json},\n   "layers": [{layer_json}]\n}}'
    ).encode()
    raw = RawManifest.from_bytes(body)
    with _client(htpasswd_registry) as client:
        pusher = RegistryPusher(client)
        with pytest.raises(RegistryError):  # blobs first, or the registry refuses the manifest
            pusher.put_manifest(unique_repo, "v1", raw)
        for data, desc in ((config, cdesc), (layer, ldesc)):
            pusher.push_blob(unique_repo, desc, Opener(data))
        pusher.put_manifest(unique_repo, "v1", raw)
        got = client.get_manifest(unique_repo, "v1")
        assert (got.data, got.media_type, got.digest) == (body, DOCKER_MANIFEST, raw.digest)
        assert pusher.manifest_digest(unique_repo, "v1") == raw.digest
        assert pusher.manifest_digest(unique_repo, "nope") is None


@pytest.mark.integration
def test_manifest_digest_is_one_head(registry: RegistryServer, unique_repo: str) -> None:
    """A push looks for every manifest first, usually missing: one HEAD answers it, with no GET
    after a 404. Only a HEAD without the digest sends for the bytes."""
    config, cdesc = _blob(200, 20)
    config_json = _desc_json(cdesc, "application/vnd.docker.container.image.v1+json")
    body = (
        f'{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{config_json},"layers":[]}}'
    )
    raw = RawManifest.from_bytes(body.encode())
    with FaultProxy(registry.host) as proxy, _client(proxy, registry) as client:
        pusher = RegistryPusher(client)
        pusher.push_blob(unique_repo, cdesc, Opener(config))
        pusher.put_manifest(unique_repo, "v1", raw)
        start = len(proxy.requests)
        assert pusher.manifest_digest(unique_repo, "nope") is None
        assert pusher.manifest_digest(unique_repo, "v1") == raw.digest
        assert pusher.manifest_digest(unique_repo, raw.digest) == raw.digest
        assert [(r.method, r.status) for r in proxy.requests[start:]] == [
            ("HEAD", 404),
            ("HEAD", 200),
            ("HEAD", 200),
        ]
        proxy.add(Respond(method="HEAD", path="/manifests/v1", status=200))  # no digest header
        start = len(proxy.requests)
        assert pusher.manifest_digest(unique_repo, "v1") == raw.digest
        assert [(r.method, r.status) for r in proxy.requests[start:]] == [
            ("HEAD", 200),
            ("GET", 200),  # the digest comes from the bytes
        ]


class ClosingOpener(Opener):
    """An `Opener` that keeps each stream's source, to tell whether it was closed, and calls
    `on_open` whenever it opens one."""

    def __init__(self, data: bytes, on_open: Any = None) -> None:
        super().__init__(data)
        self.sources: list[io.BytesIO] = []
        self.on_open = on_open

    def __call__(self) -> VerifyingReader:
        if self.on_open is not None:
            self.on_open()
        self.opened += 1
        source = io.BytesIO(self.data)
        self.sources.append(source)
        return VerifyingReader(source, self.digest, len(self.data), what="test")


@pytest.mark.integration
def test_the_source_is_opened_while_the_upload_starts(
    registry: RegistryServer, unique_repo: str
) -> None:
    """The upload's POST and the source's GET are waited for together: here the POST is held
    until the source is opened, which a push opening the source only after the POST answered
    would wait out (30 s)."""
    data, desc = _blob(500_000, 21)
    with FaultProxy(registry.host) as proxy:
        hold = proxy.add(Hold(seconds=30, method="POST", path=r"/blobs/uploads/"))
        assert isinstance(hold, Hold)
        with _client(proxy, registry) as client:
            opener = ClosingOpener(data, on_open=hold.release)
            started = time.monotonic()
            out = RegistryPusher(client).push_blob(unique_repo, desc, opener)
            assert time.monotonic() - started < 15
        assert out.outcome == "uploaded" and opener.opened == 1


@pytest.mark.integration
def test_a_blob_read_in_ranges_is_opened_after_the_upload_starts(
    registry: RegistryServer, unique_repo: str
) -> None:
    """A registry source times a large blob's first range from its open to the first read (one
    stream or parallel ranges): such a blob is opened only once its upload is started."""
    data, desc = _blob(RANGED_MIN_SIZE, 24)
    opened_at: list[float] = []
    with FaultProxy(registry.host) as proxy:
        proxy.add(Hold(seconds=1.5, method="POST", path=r"/blobs/uploads/"))
        with _client(proxy, registry) as client:
            opener = ClosingOpener(data, on_open=lambda: opened_at.append(time.monotonic()))
            started = time.monotonic()
            out = RegistryPusher(client).push_blob(unique_repo, desc, opener)
        assert out.outcome == "uploaded" and opener.opened == 1
        assert opened_at[0] - started >= 1.4


@pytest.mark.integration
def test_a_refused_upload_start_closes_the_source_it_opened(
    registry: RegistryServer, unique_repo: str
) -> None:
    data, desc = _blob(300_000, 22)
    with FaultProxy(registry.host) as proxy:
        proxy.add(Respond(method="POST", path=r"/blobs/uploads/", status=503))
        with _client(proxy, registry) as client:
            opener = ClosingOpener(data)
            out = RegistryPusher(client).push_blob(unique_repo, desc, opener)
        assert out.outcome == "uploaded" and out.sent == desc.size
        assert opener.opened == 2  # one per attempt; the first was never read
        assert opener.sources[0].closed
        proxy.add(Respond(method="POST", path=r"/blobs/uploads/", status=400, times=None))
        with _client(proxy, registry) as client:
            opener = ClosingOpener(*_blob(1000, 23)[:1])
            other = Descriptor("application/octet-stream", opener.digest, 1000)
            with pytest.raises(RegistryError, match=r"\(400\)"):
                RegistryPusher(client).push_blob(unique_repo, other, opener)
        assert opener.opened == 1 and opener.sources[0].closed


class ReadOnly:
    """A source with `read` and nothing else (no `readinto`)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._data.read(n)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["read", "readinto"])
def test_body_from_read_or_readinto(registry: RegistryServer, unique_repo: str, kind: str) -> None:
    """A stream with `readinto` is sent from one reused buffer, any other one read by read."""
    data, desc = _blob(3 * MiB + 5, 30 if kind == "read" else 31)

    def opener() -> Any:
        return ReadOnly(data) if kind == "read" else Opener(data)()

    with _client(registry) as client:
        pusher = RegistryPusher(client)
        out = pusher.push_blob(unique_repo, desc, opener)
        assert (out.outcome, out.sent) == ("uploaded", desc.size)
        with client.open_blob(unique_repo, desc) as reader:
            assert reader.read() == data
        other_data, other = _blob(2 * MiB, 32)
        cut = other_data[:-10]  # the source ends 10 bytes early

        def short() -> Any:
            return ReadOnly(cut) if kind == "read" else io.BytesIO(cut)  # BytesIO: readinto

        with pytest.raises(TransferError, match="10 bytes short"):
            pusher.push_blob(unique_repo, other, short)
        assert not pusher.blob_exists(unique_repo, other)


def _desc_json(desc: Descriptor, media_type: str) -> str:
    return f'{{"mediaType": "{media_type}", "size": {desc.size}, "digest": "{desc.digest}"}}'


@pytest.mark.integration
def test_upload_memory_is_bounded(
    registry: RegistryServer, unique_repo: str, tmp_path: Path
) -> None:
    """A 64 MiB blob streamed from a file: Python allocations stay within a few MiB."""
    size = 64 * MiB
    path = tmp_path / "blob"
    hasher = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(size // MiB):
            chunk = hashlib.shake_256(f"mem-{i}".encode()).digest(MiB)
            hasher.update(chunk)
            out.write(chunk)
    desc = Descriptor("application/octet-stream", "sha256:" + hasher.hexdigest(), size)

    def opener() -> VerifyingReader:
        return VerifyingReader(path.open("rb"), desc.digest, size, what="file")

    with _client(registry) as client:
        tracemalloc.start()
        try:
            RegistryPusher(client).push_blob(unique_repo, desc, opener)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    print(f"peak Python memory pushing {size >> 20} MiB: {peak / MiB:.1f} MiB")
    assert peak < 16 * MiB, peak
    assert RegistryPusher(_client(registry)).blob_exists(unique_repo, desc)

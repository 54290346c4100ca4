"""RegistryClient against real docker-registry servers (anonymous, htpasswd, token auth).

Images are built by the test bed and pushed with skopeo; faults (dropped connections, 503/429,
redirects) come from the bed's proxy sitting in front of a real registry.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pipeline.errors import (
    AuthError,
    BaleError,
    DigestMismatch,
    ManifestError,
    NotFound,
    RegistryError,
    TransferError,
)
from pipeline.oci import OCI_INDEX, Descriptor
from pipeline.registry.client import BlobBody, RegistryClient
from pipeline.registry.credentials import Credentials
from pipeline.registry.transport import ConnectionOptions, RegistryOptions
from pipeline.transfer.ratelimit import RateLimiter
from pipeline.transfer.retry import RetryPolicy
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.proxy import Delay, DropAfter, FaultProxy, Respond, StripHeader
from tests.bed.registry import RegistryServer
from tests.bed.token_issuer import TokenIssuer

pytestmark = pytest.mark.integration

FAST = RetryPolicy(retries=3, initial=0.01, maximum=0.05)


AUTHFILE = ""


@pytest.fixture(autouse=True)
def no_host_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the machine's auth files: every client gets an empty one as `authfile`.

    (Not `$REGISTRY_AUTH_FILE`: docker-registry reads `REGISTRY_*` variables as config.)
    """
    empty = tmp_path / "auth.json"
    empty.write_text('{"auths": {}}')
    monkeypatch.setattr(sys.modules[__name__], "AUTHFILE", str(empty))


def connect(host: str, credentials: Credentials | None = None, **kw: Any) -> RegistryClient:
    kw.setdefault("retry", FAST)
    return RegistryClient(
        host,
        ConnectionOptions(
            RegistryOptions(credentials=credentials, authfile=AUTHFILE, tls_verify=False), **kw
        ),
    )


def client_for(
    server: RegistryServer | FaultProxy, creds: RegistryServer | None = None, **kw: Any
) -> RegistryClient:
    owner = creds if creds is not None else server
    credentials = None
    if isinstance(owner, RegistryServer) and owner.username is not None:
        credentials = Credentials(owner.username, owner.password or "")
    return connect(server.host, credentials, **kw)


@pytest.fixture(scope="module")
def images(
    image_factory: ImageFactory, registries: dict[str, RegistryServer]
) -> dict[str, dict[str, BuiltImage]]:
    """An OCI image, a schema2 image and an OCI index in every registry."""
    oci = image_factory.image(
        layers=[LayerSpec(2048, seed=11), LayerSpec(300_000, "zstd", seed=12)], labels={"k": "v"}
    )
    docker = image_factory.image(layers=[LayerSpec(4096, seed=13)], format="docker")
    index = image_factory.index(layers=[LayerSpec(1500, seed=14)])
    out: dict[str, dict[str, BuiltImage]] = {}
    for mode, server in registries.items():
        out[mode] = {
            "oci": image_factory.push(oci, "client/oci:1.0", server),
            "docker": image_factory.push(docker, "client/docker:1.0", server),
            "index": image_factory.push(index, "client/index:1.0", server),
        }
        image_factory.push(oci, "client/oci:2.0", server)
    return out


@pytest.fixture(params=["none", "htpasswd", "token"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---- the happy path in every auth mode ---------------------------------------------------------


def test_pull_everything(
    mode: str, registries: dict[str, RegistryServer], images: dict[str, dict[str, BuiltImage]]
) -> None:
    server = registries[mode]
    with client_for(server) as client:
        for kind in ("oci", "docker"):
            built = images[mode][kind]
            repo = f"client/{kind}"
            raw = client.get_manifest(repo, "1.0")
            assert raw.data == built.manifest and raw.digest == built.digest
            assert raw.media_type == built.media_type
            assert client.get_manifest(repo, built.digest).data == built.manifest
            head = client.head_manifest(repo, "1.0")
            assert head == Descriptor(built.media_type, built.digest, len(built.manifest))
            assert built.config_descriptor is not None
            assert client.get_blob(repo, built.config_descriptor) == built.config
            for layer in built.layers:
                reader = client.open_blob(repo, layer)
                chunks = []
                while chunk := reader.read(64 * 1024):
                    chunks.append(chunk)
                reader.close()
                assert b"".join(chunks) == built.read_blob(layer.digest)
                assert reader.verified
        index = images[mode]["index"]
        top = client.get_manifest("client/index", "1.0")
        assert (top.data, top.media_type) == (index.manifest, OCI_INDEX)
        for child in index.children:
            assert client.get_manifest("client/index", child.digest).data == child.manifest
        assert sorted(client.list_tags("client/oci")) == ["1.0", "2.0"]
        assert client.head_manifest("client/oci", "missing") is None


def test_token_reused_across_requests(
    make_registry: Any, image_factory: ImageFactory, make_token_issuer: Any
) -> None:
    issuer: TokenIssuer = make_token_issuer()
    server = make_registry("token", token_issuer=issuer)
    built = image_factory.push(
        image_factory.image(layers=[LayerSpec(1000, seed=21)]), "t/app:1", server
    )
    issuer.reset()
    issuer.fail_next(1, 503)  # the token service hiccups once: retried
    with client_for(server) as client:
        for _ in range(3):
            client.get_manifest("t/app", "1")
            client.get_blob("t/app", built.config_descriptor)  # type: ignore[arg-type]
        client.list_tags("t/app")
    assert issuer.count() == 1  # one scope set, one token
    assert issuer.issued[0].account == server.username


def test_token_renewed_when_it_expires_mid_run(
    make_registry: Any, image_factory: ImageFactory, make_token_issuer: Any
) -> None:
    issuer: TokenIssuer = make_token_issuer(lifetime=2)
    server = make_registry("token", token_issuer=issuer)
    image_factory.push(image_factory.image(layers=[LayerSpec(1000, seed=22)]), "t/exp:1", server)
    issuer.reset()
    with client_for(server) as client:
        client.get_manifest("t/exp", "1")
        time.sleep(2.2)  # the registry now refuses that token
        assert client.get_manifest("t/exp", "1").data
    assert issuer.count() == 2


def test_identity_token_via_oauth2_and_get_fallback(
    make_registry: Any, image_factory: ImageFactory, make_token_issuer: Any
) -> None:
    issuer: TokenIssuer = make_token_issuer(anonymous_pull=False)
    server = make_registry("token", token_issuer=issuer)
    image_factory.push(image_factory.image(layers=[LayerSpec(1000, seed=23)]), "t/id:1", server)
    issuer.refresh_tokens["refresh-abc"] = issuer.username
    creds = Credentials("", "", identity_token="refresh-abc")
    issuer.reset()
    with connect(server.host, creds) as client:
        assert client.list_tags("t/id") == ["1"]
    assert issuer.count("refresh_token") == 1
    issuer.oauth_post = False  # POST now 404s: GET fallback, anonymous, refused by this issuer
    try:
        with connect(server.host, creds) as client, pytest.raises(AuthError):
            client.list_tags("t/id")
    finally:
        issuer.oauth_post = True


# ---- errors ------------------------------------------------------------------------------------


def test_not_found_messages(
    registry: RegistryServer, images: dict[str, dict[str, BuiltImage]]
) -> None:
    host = registry.host
    with client_for(registry) as client:
        with pytest.raises(NotFound) as info:
            client.get_manifest("client/oci", "nope")
        assert str(info.value) == f"{host}/client/oci:nope: manifest unknown (404)"
        with pytest.raises(NotFound, match=rf"^{host}/client/none: repository name not known"):
            client.list_tags("client/none")
        missing = Descriptor("x", "sha256:" + "0" * 64, 10)
        with pytest.raises(NotFound, match=rf"^{host}/client/oci@sha256:0+: blob unknown"):
            client.open_blob("client/oci", missing)


@pytest.mark.parametrize("auth_mode", ["htpasswd", "token"])
def test_wrong_password(auth_mode: str, registries: dict[str, RegistryServer], images: Any) -> None:
    server = registries[auth_mode]
    secret = "not-the-password-9f8e7d"
    client = connect(server.host, Credentials(server.username or "", secret))
    with client, pytest.raises(AuthError) as info:
        client.get_manifest("client/oci", "1.0")
    message = str(info.value)
    assert message.startswith(f"the registry refused these credentials for {server.host} ")
    assert secret not in message and "\n" not in message


def test_anonymous_on_htpasswd_registry(htpasswd_registry: RegistryServer, images: Any) -> None:
    client = connect(htpasswd_registry.host)
    hint = rf"^{htpasswd_registry.host} requires credentials: give --creds USER:PASS or log in"
    with client, pytest.raises(AuthError, match=hint):
        client.get_manifest("client/oci", "1.0")


def test_unreachable_hosts() -> None:
    with (
        connect("nosuchhost.invalid") as client,
        pytest.raises(
            RegistryError, match=r"^nosuchhost\.invalid/a/b:1: cannot resolve registry host"
        ),
    ):
        client.get_manifest("a/b", "1")
    from tests.bed.registry import free_port

    port = free_port()
    client = connect(f"127.0.0.1:{port}")
    with client, pytest.raises(RegistryError, match="connection refused"):
        client.list_tags("a/b")


def test_tls_verify_refuses_plain_http(registry: RegistryServer, images: Any) -> None:
    client = RegistryClient(
        registry.host, ConnectionOptions(RegistryOptions(authfile=AUTHFILE), retry=FAST)
    )
    with client, pytest.raises(RegistryError, match="TLS error"):
        client.get_manifest("client/oci", "1.0")


def test_wrong_size_fails_verification(
    registry: RegistryServer, images: dict[str, dict[str, BuiltImage]]
) -> None:
    layer = images["none"]["oci"].layers[1]
    with client_for(registry) as client:
        short = Descriptor(layer.media_type, layer.digest, layer.size - 1)
        with pytest.raises(DigestMismatch):
            client.open_blob("client/oci", short).read()
        long = Descriptor(layer.media_type, layer.digest, layer.size + 10)
        with pytest.raises(BaleError):
            client.open_blob("client/oci", long).read()


# ---- faults through the proxy ------------------------------------------------------------------


@pytest.fixture
def big_image(
    image_factory: ImageFactory, registries: dict[str, RegistryServer]
) -> dict[str, BuiltImage]:
    image = image_factory.image(layers=[LayerSpec(4 << 20, "none", seed=31)])
    return {mode: image_factory.push(image, "client/big:1", s) for mode, s in registries.items()}


@pytest.fixture
def proxy_for(registries: dict[str, RegistryServer]) -> Iterator[Any]:
    started: list[FaultProxy] = []

    def make(mode: str) -> FaultProxy:
        proxy = FaultProxy(registries[mode].host).start()
        started.append(proxy)
        return proxy

    yield make
    for p in started:
        p.stop()


def test_dropped_blob_download_resumes_with_range(
    mode: str,
    registries: dict[str, RegistryServer],
    big_image: dict[str, BuiltImage],
    proxy_for: Any,
) -> None:
    proxy: FaultProxy = proxy_for(mode)
    built = big_image[mode]
    layer = built.layers[0]
    proxy.add(DropAfter(method="GET", path=r"/blobs/sha256:" + layer.hex, after=1_000_000))
    with client_for(proxy, registries[mode]) as client:
        reader = client.open_blob("client/big", layer)
        data = b""
        while chunk := reader.read(1 << 20):
            data += chunk
        reader.close()
    assert reader.verified and hashlib.sha256(data).hexdigest() == layer.hex
    gets = [r for r in proxy.find("GET", "/blobs/") if r.status in (200, 206)]
    assert [(r.status, r.header("Range"), r.fault) for r in gets] == [
        (200, None, "DropAfter"),
        (206, "bytes=1000000-", None),
    ]
    assert gets[0].body_bytes == 1_000_000


def test_server_ignoring_range_restarts_cleanly(
    registry: RegistryServer, big_image: dict[str, BuiltImage], proxy_for: Any
) -> None:
    proxy: FaultProxy = proxy_for("none")
    layer = big_image["none"].layers[0]
    proxy.add(DropAfter(path="/blobs/", after=700_001))
    proxy.add(StripHeader(path="/blobs/", header="Range"))  # fires on the resume
    with client_for(proxy) as client:
        reader = client.open_blob("client/big", layer)
        body = reader._source  # the BlobBody under the verifier
        data = reader.read()
    assert isinstance(body, BlobBody) and body.resumes == 1
    assert hashlib.sha256(data).hexdigest() == layer.hex and reader.verified
    second = proxy.find("GET", "/blobs/")[1]
    assert (second.status, second.header("Range"), second.fault) == (
        200,
        "bytes=700001-",
        "StripHeader",
    )


def test_connection_dropping_without_progress_gives_up(
    registry: RegistryServer, big_image: dict[str, BuiltImage], proxy_for: Any
) -> None:
    proxy: FaultProxy = proxy_for("none")
    layer = big_image["none"].layers[0]
    proxy.add(DropAfter(path="/blobs/", after=500_000, times=1))
    proxy.add(DropAfter(path="/blobs/", after=0, times=None))
    with client_for(proxy, retry=RetryPolicy(retries=2, initial=0.0)) as client:
        reader = client.open_blob("client/big", layer)
        with pytest.raises(
            TransferError, match=r"at byte 500000 of 4\d+ \(gave up after 3 attempts\)"
        ):
            reader.read()


def test_retry_after_503_and_429(registry: RegistryServer, images: Any, proxy_for: Any) -> None:
    proxy: FaultProxy = proxy_for("none")
    proxy.add(Respond(path="/manifests/", status=503, headers={"Retry-After": "0"}, times=2))
    proxy.add(Respond(path="/tags/", status=429, headers={"Retry-After": "0"}, times=1))
    with client_for(proxy) as client:
        assert client.get_manifest("client/oci", "1.0").data
        assert sorted(client.list_tags("client/oci")) == ["1.0", "2.0"]
    assert [r.status for r in proxy.find("GET", "/manifests/")] == [503, 503, 200]
    assert [r.status for r in proxy.find("GET", "/tags/")] == [429, 200]


def test_persistent_503_gives_up(registry: RegistryServer, images: Any, proxy_for: Any) -> None:
    proxy: FaultProxy = proxy_for("none")
    proxy.add(Respond(path="/manifests/", status=503, times=None))
    with (
        client_for(proxy, retry=RetryPolicy(retries=1, initial=0.0)) as client,
        pytest.raises(
            TransferError, match=r"client/oci:1.0: HTTP 503 \(gave up after 2 attempts\)"
        ),
    ):
        client.get_manifest("client/oci", "1.0")


def test_redirects_never_carry_authorization_to_another_host(
    registries: dict[str, RegistryServer], images: dict[str, dict[str, BuiltImage]], proxy_for: Any
) -> None:
    front: FaultProxy = proxy_for("htpasswd")
    storage: FaultProxy = proxy_for("none")  # the same blob, served anonymously
    config = images["htpasswd"]["oci"].config_descriptor
    assert config is not None
    blob_path = f"/v2/client/oci/blobs/{config.digest}"
    # `localhost` vs `127.0.0.1`: another origin, as an S3 redirect would be.
    front.add(
        Respond(
            path="/blobs/",
            status=307,
            headers={"Location": f"http://localhost:{storage.port}{blob_path}"},
        )
    )
    with client_for(front, registries["htpasswd"]) as client:
        client.get_manifest("client/oci", "1.0")  # learns Basic: the blob GET carries it
        assert client.get_blob("client/oci", config) == images["htpasswd"]["oci"].config
        redirected = front.find("GET", "/blobs/")[0]
        assert redirected.status == 307 and redirected.header("Authorization")
        assert storage.find("GET", "/blobs/")[0].header("Authorization") is None
        # A redirect to the same origin keeps it.
        front.add(Respond(path="/blobs/", status=307, headers={"Location": f"{blob_path}?same=1"}))
        assert client.get_blob("client/oci", config)
    same = front.find("GET", "/blobs/")
    assert (
        same[-1].path.endswith("?same=1")
        and same[-1].header(
            "Authorization",
        )
        and same[-1].status == 200
    )


# ---- tags pagination and referrers -------------------------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    """A registry that paginates tags and implements the referrers API (2.8.2 does neither)."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _json(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.seen.append(self.path)
        port = self.server.server_address[1]
        if self.path == "/v2/":
            return self._json({})
        if self.path == "/v2/p/tags/list":
            return self._json(
                {"name": "p", "tags": ["a", "b"]},
                {"Link": '</v2/p/tags/list?last=b&n=2>; rel="next"'},
            )
        if self.path == "/v2/p/tags/list?last=b&n=2":
            link = f'<http://127.0.0.1:{port}/v2/p/tags/list?last=d&n=2>; rel="next"'
            return self._json(
                {"name": "p", "tags": ["c", None, "sha256:" + "a" * 64, "d"]}, {"Link": link}
            )
        if self.path == "/v2/p/tags/list?last=d&n=2":
            return self._json({"name": "p", "tags": None})
        if self.path.startswith("/v2/p/referrers/sha256:"):
            manifests = [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:" + c * 64,
                    "size": 10,
                    "artifactType": t,
                }
                for c, t in (("1", "application/sig"), ("2", "application/sbom"))
            ]
            return self._json(
                {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
                content_type=OCI_INDEX,
            )
        if self.path.startswith("/v2/p/manifests/"):
            body = HUGE if self.path.endswith("/huge") else BARE
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return None
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return None

    do_HEAD = do_GET


BARE = json.dumps(
    {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "c" * 64,
            "size": 2,
        },
        "layers": [],
    }
).encode()
"""An OCI manifest without `mediaType` (as older writers make them)."""
HUGE = b'{"layers": [], "x": "' + b"x" * (4 * 1024 * 1024) + b'"}'


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stub.seen = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tags_follow_link_pages(stub: str) -> None:
    with connect(stub) as client:
        assert client.list_tags("p") == ["a", "b", "c", "d"]


def test_referrers_api_with_client_side_filter(stub: str) -> None:
    with connect(stub) as client:
        subject = "sha256:" + "f" * 64
        assert [d.artifact_type for d in client.referrers("p", subject)] == [
            "application/sig",
            "application/sbom",
        ]
        sboms = client.referrers("p", subject, artifact_type="application/sbom")
        assert [d.digest for d in sboms] == ["sha256:" + "2" * 64]
    assert _Stub.seen[-1].endswith("?artifactType=application%2Fsbom")


def test_referrers_fall_back_to_the_digest_tag(
    registry: RegistryServer, image_factory: ImageFactory, images: dict[str, dict[str, BuiltImage]]
) -> None:
    subject = images["none"]["oci"].digest
    listing = image_factory.index(layers=[LayerSpec(700, seed=41)])
    image_factory.push(listing, f"client/oci:sha256-{subject[7:]}", registry)
    with client_for(registry) as client:
        found = client.referrers("client/oci", subject)
        assert [d.digest for d in found] == [c.digest for c in listing.children]
        assert client.referrers("client/oci", subject, artifact_type="application/x") == []
        assert client.referrers("client/docker", images["none"]["docker"].digest) == []
    # 2.8.2 has no referrers API: its 404 is remembered, the next look-up asks the tag alone.
    with client_for(registry) as client:
        mark = registry.mark()
        client.referrers("client/oci", subject)
        client.referrers("client/docker", images["none"]["docker"].digest)
        assert registry.count("GET", r"/referrers/", since=mark) == 1


def test_manifest_type_from_content_type_and_digest_checks(stub: str) -> None:
    with connect(stub) as client:
        raw = client.get_manifest("p", "bare")
        assert raw.media_type == "application/vnd.oci.image.manifest.v1+json"
        assert raw.data == BARE and raw.digest == "sha256:" + hashlib.sha256(BARE).hexdigest()
        # No Docker-Content-Digest on HEAD: the digest comes from the bytes.
        assert client.head_manifest("p", "bare") == raw.descriptor()
        wrong = "sha256:" + "e" * 64
        with pytest.raises(DigestMismatch, match=rf"^{stub}/p@{wrong}: manifest: expected"):
            client.get_manifest("p", wrong)
        with pytest.raises(ManifestError, match=r"p:huge: manifest is over the 4194304 byte limit"):
            client.get_manifest("p", "huge")


def test_rate_limit_applies_to_blob_bytes(
    registry: RegistryServer, big_image: dict[str, BuiltImage]
) -> None:
    layer = big_image["none"].layers[0]
    limiter = RateLimiter(4 << 20)  # 4 MiB/s over a 4 MiB blob, 0.4 MiB burst: about 0.9 s
    with client_for(registry, limiter=limiter) as client:
        start = time.monotonic()
        data = client.open_blob("client/big", layer).read()
        elapsed = time.monotonic() - start
    assert len(data) == layer.size
    assert 0.7 < elapsed < 5


def test_many_threads_share_one_client_and_one_token(
    make_registry: Any, make_token_issuer: Any, image_factory: ImageFactory
) -> None:
    issuer: TokenIssuer = make_token_issuer()
    server = make_registry("token", token_issuer=issuer)
    image = image_factory.image(layers=[LayerSpec(200_000, seed=60 + i) for i in range(8)])
    built = image_factory.push(image, "t/many:1", server)
    issuer.reset()
    errors: list[BaseException] = []
    with client_for(server) as client:
        client.get_manifest("t/many", "1")

        def pull(layer: Descriptor) -> None:
            try:
                reader = client.open_blob("t/many", layer)
                assert hashlib.sha256(reader.read()).hexdigest() == layer.hex
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=pull, args=(layer,)) for layer in built.layers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert issuer.count() == 1


def test_proxy_delay_hook(registry: RegistryServer, images: Any, proxy_for: Any) -> None:
    proxy: FaultProxy = proxy_for("none")
    proxy.add(Delay(path="/manifests/", seconds=0.3))
    with client_for(proxy) as client:
        start = time.monotonic()
        assert client.get_manifest("client/oci", "1.0").data
        assert time.monotonic() - start >= 0.3
    assert [r.fault for r in proxy.find("GET", "/manifests/")] == ["Delay"]

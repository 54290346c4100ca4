"""RegistryClient against a real docker-registry serving HTTPS with a self-signed certificate:
refused when certificates are checked, accepted with `tls_verify=False` or when the certificate
is trusted through `SSL_CERT_FILE`; every connection of a client shares one TLS context."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from pipeline.errors import RegistryError
from pipeline.registry.client import RegistryClient
from pipeline.registry.transport import ConnectionOptions, RegistryOptions
from pipeline.transfer.retry import RetryPolicy
from tests.bed.certs import self_signed
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

FAST = RetryPolicy(retries=1, initial=0.01, maximum=0.05)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[RegistryServer, Path]:
    workdir = tmp_path_factory.mktemp("tls-registry")
    crt, key = self_signed(workdir)
    config = {"http": {"tls": {"certificate": str(crt), "key": str(key)}}}
    server = RegistryServer(workdir / "registry", extra_config=config).start()
    yield server, crt
    server.stop()


@pytest.fixture(scope="module")
def pushed(tls: tuple[RegistryServer, Path], image_factory: ImageFactory) -> BuiltImage:
    server, _ = tls
    return image_factory.build_and_push(
        f"{server.host}/tls/img:1", layers=[LayerSpec(300_000, seed=981)]
    )


def test_self_signed_is_refused_when_checked(tls, pushed) -> None:  # type: ignore[no-untyped-def]
    server, _ = tls
    client = RegistryClient(server.host, ConnectionOptions(retry=FAST))
    with client, pytest.raises(RegistryError, match="TLS error"):
        client.get_manifest("tls/img", "1")


def test_insecure_client_speaks_https_without_checking(tls, pushed) -> None:  # type: ignore[no-untyped-def]
    server, _ = tls
    with RegistryClient(
        server.host, ConnectionOptions(RegistryOptions(tls_verify=False), retry=FAST)
    ) as client:
        raw = client.get_manifest("tls/img", "1")
        assert raw.digest == pushed.digest
        assert client.transport.base().startswith("https://")


def test_trusted_through_ssl_cert_file(tls, pushed, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    server, crt = tls
    monkeypatch.setenv("SSL_CERT_FILE", str(crt))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with RegistryClient(server.host, ConnectionOptions(retry=FAST)) as client:
        layer = pushed.layers[0]
        assert client.get_manifest("tls/img", "1").digest == pushed.digest
        data = client.open_blob("tls/img", layer).read()
        assert hashlib.sha256(data).hexdigest() == layer.hex


def test_connections_share_one_context(tls, pushed) -> None:  # type: ignore[no-untyped-def]
    server, _ = tls
    layer = pushed.layers[0]
    errors: list[BaseException] = []
    with RegistryClient(
        server.host, ConnectionOptions(RegistryOptions(tls_verify=False), retry=FAST)
    ) as client:

        def pull() -> None:
            try:
                for _ in range(3):
                    assert len(client.open_blob("tls/img", layer).read()) == layer.size
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=pull) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pool = client.transport.pool.connection_from_url(f"https://{server.host}/")
        assert pool.num_connections > 1
        context = client.transport.pool.connection_pool_kw["ssl_context"]
        assert pool.conn_kw["ssl_context"] is context
    assert not errors

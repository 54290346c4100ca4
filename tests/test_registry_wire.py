"""The urllib3 adapter still finds its fast path: with an urllib3 whose internals moved, blob
reads would quietly fall back to copying every read (about twice the CPU per GiB)."""

from __future__ import annotations

import pytest

from pipeline.registry import wire
from pipeline.registry.auth import pull_scope
from pipeline.registry.client import RegistryClient
from pipeline.registry.transport import ConnectionOptions, RegistryOptions
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration

REPO = "wire/img"


@pytest.fixture(scope="module")
def pushed(image_factory: ImageFactory, registry: RegistryServer) -> BuiltImage:
    return image_factory.build_and_push(
        f"{REPO}:1", registry, layers=[LayerSpec(300_000, seed=981)]
    )


def test_blob_bodies_are_read_straight_from_the_socket(
    pushed: BuiltImage, registry: RegistryServer
) -> None:
    layer = pushed.layers[0]
    with RegistryClient(
        registry.host, ConnectionOptions(RegistryOptions(tls_verify=False))
    ) as client:
        transport = client.transport
        resp, _ = transport.request(
            "GET",
            f"/v2/{REPO}/blobs/{layer.digest}",
            scopes=[pull_scope(REPO)],
            headers={"Accept-Encoding": "identity"},
            expect=(200,),
        )
        assert wire.direct(resp) is not None, "urllib3 changed: see registry/wire.py"
        view = memoryview(bytearray(layer.size))
        got = 0
        while got < layer.size:
            n = wire.readinto(resp, view[got:])
            assert n
            got += n
        assert bytes(view) == pushed.read_blob(layer.digest)
        assert wire.unread(resp) == 0  # the counts were kept: the connection can be reused
        resp.release_conn()
        pool = transport.pool.connection_from_url(transport.base())
        assert pool.num_connections == 1

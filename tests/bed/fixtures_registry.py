"""Registry test bed fixtures: real registries in three auth modes, an image factory, skopeo,
podman and containerd as pullers.

The shared servers are session-scoped (each starts in well under a second), so tests must
push to repositories of their own: `unique_repo` gives one per test. Tests that need a
server of their own (read-only, S3 storage, short token lifetime, an issuer to reconfigure)
use `make_registry` / `make_token_issuer`; everything they start is stopped at session end.
"""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bed.containerd import Containerd
from tests.bed.images import ImageFactory, Skopeo
from tests.bed.podman import Podman
from tests.bed.registry import AuthMode, RegistryServer
from tests.bed.token_issuer import TokenIssuer

AUTH_MODES: tuple[AuthMode, ...] = ("none", "htpasswd", "token")


class RegistryFactory:
    """Starts registries (and their token issuers) on demand; `close()` stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._servers: list[RegistryServer] = []
        self._issuers: list[TokenIssuer] = []
        self._n = itertools.count(1)

    def token_issuer(self, **kwargs: Any) -> TokenIssuer:
        issuer = TokenIssuer(self.root / f"issuer-{next(self._n)}", **kwargs).start()
        self._issuers.append(issuer)
        return issuer

    def __call__(
        self,
        auth: AuthMode = "none",
        *,
        token_issuer: TokenIssuer | None = None,
        issuer_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RegistryServer:
        """A started registry; for auth='token' a new issuer unless one is given."""
        if auth == "token" and token_issuer is None:
            token_issuer = self.token_issuer(**(issuer_options or {}))
        server = RegistryServer(
            self.root / f"registry-{next(self._n)}-{auth}",
            auth=auth,
            token_issuer=token_issuer,
            **kwargs,
        )
        self._servers.append(server)
        return server.start()

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        for issuer in self._issuers:
            issuer.stop()


@pytest.fixture(scope="session")
def make_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    factory = RegistryFactory(tmp_path_factory.mktemp("registries"))
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def make_token_issuer(make_registry: RegistryFactory) -> Callable[..., TokenIssuer]:
    return make_registry.token_issuer


@pytest.fixture(scope="session")
def registry(make_registry: RegistryFactory) -> RegistryServer:
    """Anonymous registry (no auth)."""
    return make_registry("none")


@pytest.fixture(scope="session")
def htpasswd_registry(make_registry: RegistryFactory) -> RegistryServer:
    """Basic auth from an htpasswd file; `.username` / `.password` are valid."""
    return make_registry("htpasswd")


@pytest.fixture(scope="session")
def token_issuer(make_registry: RegistryFactory) -> TokenIssuer:
    """The token service behind `token_registry` (anonymous callers may pull)."""
    return make_registry.token_issuer()


@pytest.fixture(scope="session")
def token_registry(make_registry: RegistryFactory, token_issuer: TokenIssuer) -> RegistryServer:
    """Bearer token auth via `token_issuer`; `.username` / `.password` are the issuer's user."""
    return make_registry("token", token_issuer=token_issuer)


@pytest.fixture(scope="session")
def registries(
    registry: RegistryServer, htpasswd_registry: RegistryServer, token_registry: RegistryServer
) -> dict[AuthMode, RegistryServer]:
    """All three shared registries by auth mode."""
    return {"none": registry, "htpasswd": htpasswd_registry, "token": token_registry}


@pytest.fixture(params=AUTH_MODES)
def any_registry(request: pytest.FixtureRequest) -> RegistryServer:
    """Runs the test once per auth mode against the shared registries."""
    name = {"none": "registry", "htpasswd": "htpasswd_registry", "token": "token_registry"}
    return request.getfixturevalue(name[request.param])


@pytest.fixture(scope="session")
def image_factory(tmp_path_factory: pytest.TempPathFactory) -> ImageFactory:
    return ImageFactory(tmp_path_factory.mktemp("images"))


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """podman on a vfs store of the test's own (tests/bed/podman.py)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    p = Podman(tmp_path / "podman")
    yield p
    p.close()


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    """containerd of the test's own, for `ctr` pulls (tests/bed/containerd.py)."""
    missing = [b for b in ("containerd", "ctr") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (`make deps` installs containerd)")
    root = Path(tempfile.mkdtemp(prefix="bale-ctrd-"))  # a socket path must stay short
    try:
        daemon = Containerd(root)
    except (RuntimeError, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"containerd cannot run here: {exc}")
    yield daemon
    daemon.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def skopeo(image_factory: ImageFactory) -> Skopeo:
    """skopeo isolated from the machine: permissive policy, empty auth file."""
    return image_factory.skopeo


_repo_counter = itertools.count(1)


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """A repository name no other test uses, e.g. `bed/test-push-oci-none-12`."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60].strip("-")
    return f"bed/{name or 'test'}-{next(_repo_counter)}"

"""A registry named by an IPv6 literal (`[::1]:PORT`): archive, ls and restore through the CLI.

The store repository of such a host is its eight groups joined by `_`, the port after `-`
(`[::1]:5000` → `0_0_0_0_0_0_0_1-5000`): a name distribution accepts, which a stock registry
over the same store must serve. skopeo 1.9 cannot parse an IPv6 reference, so images reach
the `[::1]` registry through a twin registry on 127.0.0.1 sharing its storage directory.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.errors import InvalidReference
from pipeline.refs import Reference, store_host
from tests.bed.cli import run_bale
from tests.bed.fixtures_registry import RegistryFactory
from tests.bed.images import ImageFactory, LayerSpec, Skopeo
from tests.bed.registry import FilesystemStorage, RegistryServer


def test_store_host_keeps_names_and_spells_out_ipv6() -> None:
    assert store_host("docker.io") == "docker.io"
    assert store_host("Registry.Example:443") == "registry.example-443"
    assert store_host("127.0.0.1:5000") == "127.0.0.1-5000"
    assert store_host("[::1]:5000") == "0_0_0_0_0_0_0_1-5000"
    assert store_host("[::1]") == "0_0_0_0_0_0_0_1"
    assert store_host("[2001:DB8::a:1]:443") == "2001_db8_0_0_0_0_a_1-443"
    # One name per address however it is spelt; distinct addresses stay distinct.
    assert store_host("[0:0::0001]:5000") == store_host("[::1]:5000")
    assert store_host("[::1:0]:5000") != store_host("[::1]:5000")
    repo = Reference.parse("[fe80::1]:5000/team/app:1.0").store_repo
    assert repo == "fe80_0_0_0_0_0_0_1-5000/team/app"
    assert layout.tar_key_for(Reference.parse("[::1]:5000/a:1")) == (
        "images/0_0_0_0_0_0_0_1-5000/a/1.tar"
    )


@pytest.mark.parametrize("text", ["[1:2]:5000/a", "[::1::2]/a", "[::g]/a", "[]/a"])
def test_a_bracketed_host_must_be_an_ipv6_address(text: str) -> None:
    with pytest.raises(InvalidReference, match="bad registry"):
        Reference.parse(text)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class IPv6RegistryServer(RegistryServer):
    """The bed's registry, listening on [::1] only."""

    @property
    def host(self) -> str:
        return f"[::1]:{self.port}"

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                conn = http.client.HTTPConnection("::1", self.port, timeout=2)
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                conn.close()
                return True
            except OSError:
                time.sleep(0.02)
        return False


@pytest.mark.integration
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback (::1) here")
def test_archive_ls_restore_from_an_ipv6_registry(
    make_registry: RegistryFactory,
    image_factory: ImageFactory,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    twin = make_registry("none", storage=FilesystemStorage(tmp_path / "shared"))
    v6 = IPv6RegistryServer(tmp_path / "v6", storage=twin.storage).start()
    try:
        image = image_factory.build_and_push(
            f"{twin.host}/team/app:1.0", twin, layers=(LayerSpec(3000, seed=6601),)
        )
        source = f"{v6.host}/team/app:1.0"
        store = tmp_path / "store"

        done = run_bale("archive", source, "--to", str(store), "--src-tls-verify=false")
        assert done.returncode == 0, done.stderr
        repo = f"0_0_0_0_0_0_0_1-{v6.port}/team/app"
        assert (store / "images" / repo / "1.0.tar").is_file()
        assert (store / layout.tag_current_link_key(repo, "1.0")).read_text() == image.digest

        listing = run_bale("ls", str(store), "--json")
        assert listing.returncode == 0, listing.stderr
        assert [r["source"] for r in json.loads(listing.stdout)] == [source]
        assert run_bale("ls", str(store), source).stdout.splitlines()[1].split()[0] == source

        # Back into the IPv6 registry under another name, read through the twin.
        restored = run_bale(
            "restore", f"docker://{source}", f"docker://{v6.host}/team/restored",
            "--from", str(store), "--dest-tls-verify=false",
        )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        pushed = skopeo.inspect(f"docker://{twin.host}/team/restored:1.0", raw=True)
        assert pushed == image.manifest

        # A stock registry over the store serves the image under the mapped name.
        stock = make_registry("none", storage=FilesystemStorage(store))
        served = skopeo.inspect(f"docker://{stock.host}/{repo}:1.0", raw=True)
        assert served == image.manifest
    finally:
        v6.stop()

"""End to end against Ceph RGW (a real S3 implementation, tests/bed/rgw.py) through the `bale`
command: archive -> verify -> restore -> podman load of the tar as RGW holds it, and a stock
registry (distribution's S3 driver) serving the archive straight from RGW."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.archive import layout
from pipeline.refs import Reference
from tests.bed.cli import isolated_env, run_bale, show
from tests.bed.images import LayerSpec, podman_load
from tests.bed.moto import REGION
from tests.bed.registry import S3Storage
from tests.bed.rgw import RgwServer

pytestmark = pytest.mark.integration
MiB = 1 << 20


def rgw_env(rgw_server: RgwServer, tmp_path: Path) -> dict[str, str]:
    return isolated_env(
        tmp_path,
        AWS_ACCESS_KEY_ID=rgw_server.access_key,
        AWS_SECRET_ACCESS_KEY=rgw_server.secret_key,
        AWS_DEFAULT_REGION=REGION,
    )


def test_archive_verify_restore_load_and_stock_registry_on_rgw(
    registry, make_registry, rgw_server, image_factory, skopeo, unique_repo, tmp_path: Path
) -> None:
    layers = (LayerSpec(7 * MiB, seed=1501), LayerSpec(300_000, seed=1502))
    pushed = image_factory.push(
        image_factory.image(layers=layers), f"{registry.host}/{unique_repo}:r", registry
    )
    env = rgw_env(rgw_server, tmp_path)
    bucket = rgw_server.create_bucket()
    store = [f"s3://{bucket}/arch", "--endpoint-url", rgw_server.endpoint_url]
    src = f"docker://{registry.host}/{unique_repo}:r"

    archived = run_bale("-v", "archive", src, "--to", *store, "--src-tls-verify=false", env=env)
    assert archived.returncode == 0, show(archived)
    # -v says what the probe found on RGW and what bale does about it.
    assert "CompleteMultipartUpload ignores If-None-Match" in archived.stderr, show(archived)
    again = run_bale("archive", src, "--to", *store, "--src-tls-verify=false", "--force", env=env)
    assert again.returncode == 0, show(again)
    verified = run_bale("verify", *store, env=env)
    assert verified.returncode == 0 and verified.stdout == "", show(verified)

    back = f"docker://{registry.host}/{unique_repo}-back:r"
    restored = run_bale(
        "restore", src, back, "--from", store[0], *store[1:], "--dest-tls-verify=false", env=env
    )
    assert restored.returncode == 0, show(restored)
    assert skopeo.inspect(back)["Digest"] == pushed.digest

    # The tar as RGW holds it, fetched with boto3 (not bale), loads into podman.
    ref = Reference.parse(f"{registry.host}/{unique_repo}:r")
    tar = tmp_path / "from-rgw.tar"
    body = rgw_server.client().get_object(Bucket=bucket, Key=f"arch/{layout.tar_key_for(ref)}")
    tar.write_bytes(body["Body"].read())
    assert f"{ref.name}:r" in podman_load(tar, tmp_path / "podman")

    stock = make_registry(
        storage=S3Storage(
            regionendpoint=rgw_server.endpoint_url,
            bucket=bucket,
            accesskey=rgw_server.access_key,
            secretkey=rgw_server.secret_key,
            rootdirectory="/arch",
        ),
        readonly=True,
    )
    served = f"docker://{stock.host}/{registry.host.replace(':', '-')}/{unique_repo}:r"
    assert skopeo.inspect(served)["Digest"] == pushed.digest
    skopeo.copy(served, f"oci:{tmp_path / 'pulled'}", "--src-tls-verify=false")


@pytest.fixture(scope="module")
def tls_gateway(rgw_server: RgwServer, tmp_path_factory: pytest.TempPathFactory):
    """A second radosgw of the bed's cluster serving HTTPS with a self-made certificate."""
    from tests.bed.certs import self_signed

    crt, key = self_signed(tmp_path_factory.mktemp("rgw-tls"))
    endpoint = rgw_server.start_gateway("tls", ssl=(crt, key))
    yield endpoint, crt
    rgw_server.stop_gateway("tls")


def test_store_ca_bundle_over_https(
    rgw_server: RgwServer, tls_gateway, registry, image_factory, unique_repo, tmp_path: Path
) -> None:
    endpoint, crt = tls_gateway
    pushed = image_factory.push(
        image_factory.image(layers=(LayerSpec(20_000, seed=1511),)),
        f"{registry.host}/{unique_repo}:tls",
        registry,
    )
    env = rgw_env(rgw_server, tmp_path)
    bucket = rgw_server.create_bucket()
    store = [f"s3://{bucket}/arch", "--endpoint-url", endpoint]
    src = f"docker://{registry.host}/{unique_repo}:tls"
    archive = ["archive", src, "--to", *store, "--src-tls-verify=false", "--retries", "0"]

    untrusted = run_bale(*archive, env=env)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr, show(untrusted)
    missing = run_bale(*archive, "--store-ca-bundle", str(tmp_path / "none.pem"), env=env)
    assert missing.returncode == 2 and "none.pem" in missing.stderr, show(missing)

    trusted = run_bale(*archive, "--store-ca-bundle", str(crt), env=env)
    assert trusted.returncode == 0, show(trusted)
    listed = run_bale("ls", *store, "--json", env=env | {"AWS_CA_BUNDLE": str(crt)})
    assert listed.returncode == 0 and pushed.digest in listed.stdout, show(listed)


def test_profile_region_and_auto_addressing(
    rgw_server: RgwServer, registry, image_factory, unique_repo, tmp_path: Path
) -> None:
    """Credentials and region from AWS_PROFILE (no key variables), --region over it, and
    `auto` addressing, which reaches an endpoint given by IP address path-style (path and
    virtual: test_virtual_host_and_path_addressing)."""
    addressing = "auto"
    image_factory.push(
        image_factory.image(layers=(LayerSpec(20_000, seed=1512),)),
        f"{registry.host}/{unique_repo}:p",
        registry,
    )
    credentials, config = tmp_path / "credentials", tmp_path / "config"
    credentials.write_text(
        f"[rgw]\naws_access_key_id = {rgw_server.access_key}\n"
        f"aws_secret_access_key = {rgw_server.secret_key}\n"
    )
    config.write_text("[profile rgw]\nregion = eu-test-1\n")
    env = isolated_env(tmp_path)
    env |= {
        "AWS_PROFILE": "rgw",
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(config),
        "AWS_S3_ADDRESSING_STYLE": "virtual",  # the flag wins over the variable
    }
    bucket = rgw_server.create_bucket()
    store = [f"s3://{bucket}/arch", "--endpoint-url", rgw_server.endpoint_url]
    src = f"docker://{registry.host}/{unique_repo}:p"
    archived = run_bale(
        "archive", src, "--to", *store, "--src-tls-verify=false", "--s3-addressing", addressing,
        env=env,
    )  # fmt: skip
    assert archived.returncode == 0, show(archived)
    listed = run_bale("ls", *store, "--s3-addressing", addressing, "--region", "us-east-1", env=env)
    assert listed.returncode == 0 and unique_repo in listed.stdout, show(listed)
    bad = run_bale("ls", *store, env=env | {"AWS_S3_ADDRESSING_STYLE": "sideways"})
    assert bad.returncode == 2 and "sideways" in bad.stderr, show(bad)


@pytest.fixture(scope="module")
def vhost_gateway(rgw_server: RgwServer):
    """A radosgw of the bed's cluster that takes `bucket.s3.bale.test` as bucket host names,
    behind a forward proxy (names under .test resolve nowhere, so the client is sent through
    HTTP_PROXY, which passes the Host header through as a load balancer would)."""
    from tests.bed.proxy import FaultProxy

    endpoint = rgw_server.start_gateway("vhost", rgw_dns_name="s3.bale.test")
    port = endpoint.rsplit(":", 1)[1]
    with FaultProxy(f"127.0.0.1:{port}") as proxy:
        yield f"http://s3.bale.test:{port}", proxy
    rgw_server.stop_gateway("vhost")


@pytest.mark.parametrize("addressing", ["virtual", "path"])
def test_virtual_host_and_path_addressing(
    rgw_server: RgwServer,
    vhost_gateway,
    registry,
    image_factory,
    unique_repo,
    tmp_path: Path,
    addressing: str,
) -> None:
    endpoint, proxy = vhost_gateway
    image_factory.push(
        image_factory.image(layers=(LayerSpec(20_000, seed=1513),)),
        f"{registry.host}/{unique_repo}:v",
        registry,
    )
    env = rgw_env(rgw_server, tmp_path) | {
        "HTTP_PROXY": proxy.url,
        "NO_PROXY": "127.0.0.1,localhost",
        "AWS_S3_ADDRESSING_STYLE": addressing,
    }
    bucket = rgw_server.create_bucket()
    store = [f"s3://{bucket}/arch", "--endpoint-url", endpoint]
    src = f"docker://{registry.host}/{unique_repo}:v"
    seen = len(proxy.requests)
    archived = run_bale("archive", src, "--to", *store, "--src-tls-verify=false", env=env)
    assert archived.returncode == 0, show(archived)
    listed = run_bale("ls", *store, "--s3-addressing", addressing, env=env)
    assert listed.returncode == 0 and unique_repo in listed.stdout, show(listed)
    hosts = {r.headers.get("Host", "").rsplit(":", 1)[0] for r in proxy.requests[seen:]}
    assert hosts == ({f"{bucket}.s3.bale.test"} if addressing == "virtual" else {"s3.bale.test"})

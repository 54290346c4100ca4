"""The test bed works with real clients: skopeo pushes what the factory wrote, byte for byte,
to registries in every auth mode, and the bed's counters see what really went over the wire.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import urllib3
import zstandard

from pipeline.oci import (
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Platform,
    sha256_digest,
)
from tests.bed.fixtures_registry import RegistryFactory
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec, Skopeo, SkopeoError
from tests.bed.registry import AccessLogEntry, FilesystemStorage, RegistryServer, S3Storage
from tests.bed.token_issuer import Scope, TokenIssuer

pytestmark = pytest.mark.integration

http = urllib3.PoolManager(retries=False)


def _build(factory: ImageFactory, kind: str, seed: int) -> BuiltImage:
    layers = [LayerSpec(2048, "gzip", seed), LayerSpec(4096, "gzip", seed + 1)]
    if kind == "oci":
        return factory.image(layers, format="oci")
    if kind == "docker":
        return factory.image(layers, format="docker")
    if kind == "oci-index":
        return factory.index(["linux/amd64", "linux/arm64"], layers, format="oci")
    return factory.index(["linux/amd64", "linux/arm64/v8"], layers, format="docker")


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _get_token(issuer: TokenIssuer, scope: str, creds: tuple[str, str] | None = None) -> str:
    headers = {"Authorization": _basic(*creds)} if creds else {}
    r = http.request(
        "GET", issuer.realm, fields={"service": issuer.service, "scope": scope}, headers=headers
    )
    assert r.status == 200, r.data
    return str(r.json()["token"])


# ---- images ----------------------------------------------------------------------------


def test_layers_are_deterministic_real_tars(image_factory: ImageFactory) -> None:
    a = image_factory.layer(LayerSpec(3 * 1024 * 1024 + 5, "gzip", 7))
    b = image_factory.layer(LayerSpec(3 * 1024 * 1024 + 5, "zstd", 7))
    c = image_factory.layer(LayerSpec(3 * 1024 * 1024 + 5, "none", 7))
    # One content in three compressions: one diff_id, three blobs.
    assert a.diff_id == b.diff_id == c.diff_id == c.digest
    assert len({a.digest, b.digest, c.digest}) == 3
    raw = gzip.decompress(a.path.read_bytes())
    assert raw == zstandard.ZstdDecompressor().decompress(b.path.read_bytes(), len(raw))
    assert raw == c.path.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["bed", "bed/layer-7-3145733.bin"]
        data = tar.extractfile(members[1])
        assert data is not None
        body = data.read()
    assert len(body) == 3 * 1024 * 1024 + 5
    # Incompressible, and no 1 MiB chunk repeats (offset bugs cannot hide).
    assert a.size > len(body)
    chunks = {body[i : i + 1 << 20] for i in range(0, len(body), 1 << 20)}
    assert len(chunks) == 4
    assert image_factory.layer(LayerSpec(3 * 1024 * 1024 + 5, "gzip", 8)).diff_id != a.diff_id


def test_image_config_and_manifest_are_consistent(image_factory: ImageFactory) -> None:
    specs = [LayerSpec(1000, "gzip", 1), LayerSpec(2000, "zstd", 2), LayerSpec(10, "none", 3)]
    img = image_factory.image(specs, labels={"team": "bed"}, env=["A=1"])
    assert img.media_type == OCI_MANIFEST
    assert img.digest == sha256_digest(img.manifest)
    assert b'\n   "schemaVersion": 2' in img.manifest  # docker-style indent, not canonical
    manifest = json.loads(img.manifest)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER,
    ]
    assert img.config is not None and img.config_descriptor is not None
    assert sha256_digest(img.config) == img.config_descriptor.digest
    config = json.loads(img.config)
    assert config["rootfs"]["diff_ids"] == list(img.diff_ids)
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["Labels"] == {"team": "bed"}
    assert config["config"]["Env"] == ["A=1"]
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == 3
    for desc in (img.config_descriptor, *img.layers):
        assert sha256_digest(img.read_blob(desc.digest)) == desc.digest
        assert img.blob_path(desc.digest).stat().st_size == desc.size
    # Same inputs, same digest: tests can rebuild an image instead of passing it around.
    assert image_factory.image(specs, labels={"team": "bed"}, env=["A=1"]).digest == img.digest
    layout_index = json.loads((img.layout / "index.json").read_text())
    assert layout_index["manifests"][0]["digest"] == img.digest


def test_index_children_have_own_layers_unless_shared(image_factory: ImageFactory) -> None:
    idx = image_factory.index(["linux/amd64", "linux/arm64/v8", "linux/s390x"])
    assert idx.media_type == OCI_INDEX and idx.is_index
    assert [str(p) for p in idx.platforms] == ["linux/amd64", "linux/arm64/v8", "linux/s390x"]
    assert len({c.layers[0].digest for c in idx.children}) == 3
    arm = idx.child("linux/arm64")
    assert json.loads(arm.config or b"{}")["variant"] == "v8"
    listed = json.loads(idx.manifest)["manifests"]
    assert [m["digest"] for m in listed] == [c.digest for c in idx.children]
    assert listed[1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    shared = image_factory.index(["linux/amd64", "linux/arm64"], shared_layers=True)
    assert len({c.layers[0].digest for c in shared.children}) == 1
    assert len(shared.blobs) == 3  # two configs, one layer
    docker = image_factory.index(format="docker")
    assert docker.media_type == DOCKER_LIST
    assert all(c.media_type == DOCKER_MANIFEST for c in docker.children)
    assert {d.media_type for c in docker.children for d in c.layers} == {DOCKER_LAYER_GZIP}
    with pytest.raises(ValueError):
        image_factory.image([LayerSpec(10, "zstd")], format="docker")


def test_big_layer_generation_is_fast(image_factory: ImageFactory) -> None:
    start = time.monotonic()
    layer = image_factory.layer(LayerSpec(64 << 20, "gzip", 123))
    elapsed = time.monotonic() - start
    assert layer.size > 64 << 20
    assert elapsed < 5, f"64 MiB layer took {elapsed:.1f}s"
    start = time.monotonic()
    assert image_factory.layer(LayerSpec(64 << 20, "gzip", 123)) is layer  # cached
    assert time.monotonic() - start < 0.01


# ---- every auth mode, every manifest kind ----------------------------------------------


@pytest.mark.parametrize("kind", ["oci", "docker", "oci-index", "docker-list"])
def test_push_and_inspect(
    any_registry: RegistryServer,
    image_factory: ImageFactory,
    skopeo: Skopeo,
    unique_repo: str,
    kind: str,
) -> None:
    img = _build(image_factory, kind, seed=zlib.crc32(f"{kind}/{any_registry.auth}".encode()))
    pushed = image_factory.push(img, f"{unique_repo}:v1", any_registry)
    assert pushed.reference == f"{any_registry.host}/{unique_repo}:v1"
    raw = skopeo.inspect(f"docker://{pushed.reference}", registry=any_registry, raw=True)
    assert raw == img.manifest
    assert json.loads(raw)["mediaType"] == img.media_type
    info = skopeo.inspect(f"docker://{pushed.reference}", registry=any_registry)
    assert info["Digest"] == img.digest  # skopeo reports the top-level digest ...
    if img.is_index:
        # ... with the config and layers of the child for its own platform (amd64 here).
        child = img.child("linux/amd64")
        assert info["Architecture"] == "amd64"
        assert info["Layers"] == [d.digest for d in child.layers]
        for c in pushed.children:
            assert c.reference is not None
            raw_child = skopeo.inspect(f"docker://{c.reference}", registry=any_registry, raw=True)
            assert raw_child == c.manifest
    else:
        assert info["Layers"] == [d.digest for d in img.layers]
        config = skopeo.inspect(
            f"docker://{pushed.reference}", registry=any_registry, raw=True, config=True
        )
        assert config == img.config


def test_zstd_and_uncompressed_layers_push(
    registry: RegistryServer, image_factory: ImageFactory, skopeo: Skopeo, unique_repo: str
) -> None:
    img = image_factory.image(
        [LayerSpec(300_000, "zstd", 41), LayerSpec(200_000, "none", 42), LayerSpec(5, "gzip", 43)]
    )
    pushed = image_factory.push(img, f"{unique_repo}:mixed", registry)
    info = skopeo.inspect(f"docker://{pushed.reference}")
    assert info["Digest"] == img.digest
    raw = json.loads(skopeo.inspect(f"docker://{pushed.reference}", raw=True))
    assert [d["mediaType"] for d in raw["layers"]] == [
        OCI_LAYER_ZSTD,
        OCI_LAYER,
        OCI_LAYER_GZIP,
    ]
    # The registry serves the exact blob, and it decompresses to the config's diff_id.
    zstd_layer = img.layers[0]
    r = http.request("GET", f"{registry.url}/v2/{unique_repo}/blobs/{zstd_layer.digest}")
    assert r.status == 200 and sha256_digest(r.data) == zstd_layer.digest
    tar = zstandard.ZstdDecompressor().decompress(r.data, max_output_size=1 << 20)
    assert sha256_digest(tar) == img.diff_ids[0]


# ---- auth ------------------------------------------------------------------------------


def test_htpasswd_registry_refuses_anonymous_and_bad_password(
    htpasswd_registry: RegistryServer,
    image_factory: ImageFactory,
    skopeo: Skopeo,
    unique_repo: str,
) -> None:
    r = http.request("GET", f"{htpasswd_registry.url}/v2/")
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="bale-bed"'
    assert htpasswd_registry.username and htpasswd_registry.password
    ok = http.request(
        "GET",
        f"{htpasswd_registry.url}/v2/",
        headers={"Authorization": _basic(htpasswd_registry.username, htpasswd_registry.password)},
    )
    assert ok.status == 200
    bad = http.request(
        "GET",
        f"{htpasswd_registry.url}/v2/",
        headers={"Authorization": _basic(htpasswd_registry.username, "wrong")},
    )
    assert bad.status == 401
    pushed = image_factory.push(image_factory.image(), f"{unique_repo}:a", htpasswd_registry)
    with pytest.raises(SkopeoError):
        skopeo.inspect(f"docker://{pushed.reference}", raw=True)  # no creds
    with pytest.raises(SkopeoError):
        image_factory.skopeo.copy(
            image_factory.image().oci_ref,
            f"docker://{htpasswd_registry.host}/{unique_repo}:anon",
            "--dest-tls-verify=false",
        )


def test_token_registry_anonymous_can_pull_but_not_push(
    token_registry: RegistryServer,
    token_issuer: TokenIssuer,
    image_factory: ImageFactory,
    skopeo: Skopeo,
    unique_repo: str,
) -> None:
    r = http.request("GET", f"{token_registry.url}/v2/")
    assert r.status == 401
    challenge = r.headers["WWW-Authenticate"]
    assert challenge == f'Bearer realm="{token_issuer.realm}",service="{token_issuer.service}"'
    img = image_factory.image([LayerSpec(100, seed=501)])
    pushed = image_factory.push(img, f"{unique_repo}:a", token_registry)
    # anonymous_pull=True (the shared issuer's default): pull works without creds ...
    assert skopeo.inspect(f"docker://{pushed.reference}", raw=True) == img.manifest
    # ... and push does not.
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|denied|authentication"):
        skopeo.copy(
            image_factory.image([LayerSpec(100, seed=502)]).oci_ref,
            f"docker://{token_registry.host}/{unique_repo}:anon",
            "--dest-tls-verify=false",
        )
    anon = [r for r in token_issuer.issued if r.account is None]
    assert anon and all(set(g.actions) <= {"pull"} for r in anon for g in r.granted)


def test_token_registry_without_anonymous_pull(
    make_registry: RegistryFactory, image_factory: ImageFactory, skopeo: Skopeo
) -> None:
    reg = make_registry("token", issuer_options={"anonymous_pull": False})
    img = image_factory.image([LayerSpec(100, seed=601)])
    pushed = image_factory.push(img, "private/app:1", reg)
    with pytest.raises(SkopeoError):
        skopeo.inspect(f"docker://{pushed.reference}", raw=True)
    assert skopeo.inspect(f"docker://{pushed.reference}", registry=reg, raw=True) == img.manifest
    assert reg.token_issuer is not None
    assert reg.token_issuer.count(account=reg.username) >= 2


def test_token_lifetime_is_enforced_by_the_registry(
    make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    reg = make_registry("token", issuer_options={"lifetime": 2})
    issuer = reg.token_issuer
    assert issuer is not None and reg.username and reg.password
    image_factory.push(image_factory.image([LayerSpec(10, seed=701)]), "short/life:1", reg)
    token = _get_token(issuer, "repository:short/life:pull", (reg.username, reg.password))
    url = f"{reg.url}/v2/short/life/manifests/1"
    headers = {"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST}
    assert http.request("GET", url, headers=headers).status == 200
    # Wrong scope: insufficient_scope, with the scope to ask for.
    other = http.request("GET", f"{reg.url}/v2/other/repo/tags/list", headers=headers)
    assert other.status == 401
    assert 'error="insufficient_scope"' in other.headers["WWW-Authenticate"]
    assert 'scope="repository:other/repo:pull"' in other.headers["WWW-Authenticate"]
    time.sleep(2.2)
    expired = http.request("GET", url, headers=headers)
    assert expired.status == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]


def test_token_issuer_oauth_and_forged_tokens(token_registry: RegistryServer) -> None:
    issuer = token_registry.token_issuer
    assert issuer is not None
    url = f"{token_registry.url}/v2/"
    base = {"service": issuer.service, "client_id": "bale-test", "scope": "repository:x/y:pull"}
    before = issuer.tokens_issued
    r = http.request_encode_body(
        "POST",
        issuer.realm,
        fields={
            **base,
            "grant_type": "password",
            "username": issuer.username,
            "password": issuer.password,
        },
        encode_multipart=False,
    )
    assert r.status == 200, r.data
    body: dict[str, Any] = r.json()
    assert body["expires_in"] == issuer.lifetime and body["refresh_token"]
    assert body["scope"] == "repository:x/y:pull"
    ok = http.request("GET", url, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert ok.status == 200
    r2 = http.request_encode_body(
        "POST",
        issuer.realm,
        fields={**base, "grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        encode_multipart=False,
    )
    assert r2.status == 200 and "access_token" in r2.json()
    assert issuer.tokens_issued == before + 2
    assert issuer.count("refresh_token") >= 1
    bad = http.request_encode_body(
        "POST",
        issuer.realm,
        fields={**base, "grant_type": "password", "username": issuer.username, "password": "no"},
        encode_multipart=False,
    )
    assert bad.status == 401
    # GET with offline_token hands out a refresh token too (docker login's identity token).
    g = http.request(
        "GET",
        issuer.realm,
        fields={**base, "offline_token": "true"},
        headers={"Authorization": _basic(issuer.username, issuer.password)},
    )
    assert g.status == 200 and g.json()["refresh_token"]
    # Tokens for another audience or issuer are refused by the registry.
    for forged in (
        issuer.make_token(issuer.username, [], audience="elsewhere")[0],
        issuer.make_token(issuer.username, [], issuer="mallory")[0],
        issuer.make_token(issuer.username, [], lifetime=-1)[0],
    ):
        r = http.request("GET", url, headers={"Authorization": f"Bearer {forged}"})
        assert r.status == 401
    # Failure injection, for clients' retry tests.
    issuer.fail_next(1, 503)
    assert http.request("GET", issuer.realm, fields=base).status == 503
    assert http.request("GET", issuer.realm, fields=base).status == 200


def test_oauth_post_can_be_turned_off(make_token_issuer: Any) -> None:
    issuer: TokenIssuer = make_token_issuer(oauth_post=False)
    r = http.request_encode_body(
        "POST", issuer.realm, fields={"grant_type": "password"}, encode_multipart=False
    )
    assert r.status == 404


def test_scope_parsing() -> None:
    s = Scope.parse("repository:team/app:pull,push")
    assert (s.type, s.name, s.actions) == ("repository", "team/app", ("pull", "push"))
    assert Scope.parse("registry:catalog:*").actions == ("*",)
    assert str(Scope.parse("repository(plugin):a/b:pull")) == "repository(plugin):a/b:pull"


# ---- access log ------------------------------------------------------------------------


def test_access_log_counts_requests(
    registry: RegistryServer, image_factory: ImageFactory, skopeo: Skopeo, unique_repo: str
) -> None:
    img = image_factory.image([LayerSpec(50_000, seed=801), LayerSpec(60_000, seed=802)])
    mark = registry.mark()
    pushed = image_factory.push(img, f"{unique_repo}:1", registry)
    assert registry.count("PUT", rf"^/v2/{unique_repo}/manifests/", since=mark) == 1
    uploads = registry.requests("PUT", rf"^/v2/{unique_repo}/blobs/uploads/", since=mark)
    assert len(uploads) == 3  # two layers and the config
    assert all(u.status == 201 for u in uploads)
    assert all("digest=sha256" in u.query for u in uploads)
    # A second push of the same image uploads nothing: skopeo sees the blobs exist.
    mark = registry.mark()
    image_factory.push(img, f"{unique_repo}:2", registry)
    assert registry.count("PUT", r"/blobs/uploads/", since=mark) == 0
    assert registry.count("PUT", rf"^/v2/{unique_repo}/manifests/2$", since=mark) == 1
    # Reads are counted exactly, and the entries carry status and user agent.
    mark = registry.mark()
    for _ in range(3):
        http.request("GET", f"{registry.url}/v2/{unique_repo}/blobs/{img.layers[0].digest}")
    got = registry.requests("GET", rf"/blobs/{img.layers[0].digest}$", since=mark)
    assert len(got) == 3
    assert got[0].status == 200 and got[0].size == img.layers[0].size
    assert got[0].user_agent.startswith("python-urllib3")
    skopeo.inspect(f"docker://{pushed.reference}", raw=True)
    assert registry.count("GET", rf"^/v2/{unique_repo}/manifests/1$", since=mark) == 1
    assert registry.count("GET", r"^/_bed/") == 0


def test_access_log_line_parsing() -> None:
    line = (
        '127.0.0.1 - - [28/Nov/2026:11:34:01 +0000] "PUT /v2/a/b/blobs/uploads/x?digest=sha256%3A1'
        ' HTTP/1.1" 201 0 "" "skopeo/1.9.3"'
    )
    e = AccessLogEntry.parse(line)
    assert e is not None
    assert (e.method, e.path, e.status, e.size) == ("PUT", "/v2/a/b/blobs/uploads/x", 201, 0)
    assert e.query == "digest=sha256%3A1" and e.user_agent == "skopeo/1.9.3"
    assert AccessLogEntry.parse('time="..." level=info msg="x"') is None


# ---- storage variants ------------------------------------------------------------------


def test_readonly_registry_serves_another_registrys_storage(
    make_registry: RegistryFactory, image_factory: ImageFactory, skopeo: Skopeo
) -> None:
    writer = make_registry("none")
    img = image_factory.index(layers=[LayerSpec(1000, seed=901)])
    image_factory.push(img, "ro/app:1", writer)
    assert isinstance(writer.storage, FilesystemStorage)
    reader = make_registry(
        "none", storage=FilesystemStorage(writer.storage.rootdirectory), readonly=True
    )
    ref = f"docker://{reader.host}/ro/app:1"
    assert skopeo.inspect(ref, raw=True) == img.manifest
    with pytest.raises(SkopeoError):
        image_factory.push(image_factory.image([LayerSpec(10, seed=902)]), "ro/app:2", reader)
    assert reader.count("POST", r"/blobs/uploads/$", status=405) >= 1
    # restart flips read-only off on the same port
    reader.restart(readonly=False)
    image_factory.push(image_factory.image([LayerSpec(10, seed=902)]), "ro/app:2", reader)


def test_s3_storage_variant(
    make_registry: RegistryFactory,
    image_factory: ImageFactory,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    from tests.bed.registry import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bed",
            aws_secret_access_key="bedsecret",
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        s3.create_bucket(Bucket="archive")
        storage = S3Storage(endpoint, "archive", "bed", "bedsecret", rootdirectory="/team/x")
        reg = make_registry("none", storage=storage)
        img = image_factory.image([LayerSpec(20_000, seed=1001)])
        pushed = image_factory.push(img, "s3/app:1", reg)
        assert skopeo.inspect(f"docker://{pushed.reference}", raw=True) == img.manifest
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="archive")["Contents"]}
        hexd = img.layers[0].hex
        assert f"team/x/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data" in keys
        assert (
            "team/x/docker/registry/v2/repositories/s3/app/_manifests/tags/1/current/link" in keys
        )
        reg.stop()
    finally:
        server.stop()


def test_skopeo_is_isolated_from_the_machine(skopeo: Skopeo) -> None:
    assert json.loads(skopeo.policy.read_text()) == {
        "default": [{"type": "insecureAcceptAnything"}]
    }
    env = skopeo.env()
    assert env["REGISTRY_AUTH_FILE"] == str(skopeo.authfile)
    assert Path(env["DOCKER_CONFIG"], "config.json").exists()


def test_platform_helpers(image_factory: ImageFactory) -> None:
    img = image_factory.image(platform="linux/arm/v7")
    assert img.platforms == (Platform("linux", "arm", "v7"),)
    assert json.loads(img.config or b"{}")["variant"] == "v7"
    assert hashlib.sha256(img.manifest).hexdigest() == img.digest.split(":")[1]


@pytest.mark.slow
def test_big_image_push(
    registry: RegistryServer, image_factory: ImageFactory, skopeo: Skopeo, unique_repo: str
) -> None:
    """320 MiB in two layers: built in ~1.4 s and pushed by skopeo in ~1.6 s here."""
    start = time.monotonic()
    img = image_factory.image(
        [LayerSpec(256 << 20, "gzip", 2001), LayerSpec(64 << 20, "zstd", 2002)]
    )
    built = time.monotonic()
    pushed = image_factory.push(img, f"{unique_repo}:big", registry)
    pushed_at = time.monotonic()
    assert built - start < 20 and pushed_at - built < 60
    assert skopeo.inspect(f"docker://{pushed.reference}", raw=True) == img.manifest
    puts = registry.requests("PUT", rf"^/v2/{unique_repo}/blobs/uploads/")
    assert len(puts) == 3


def test_rgw_serves_s3_with_extra_storage_classes(rgw_server: Any) -> None:
    """The bed's Ceph RGW: its daemons are its own processes, its user's keys work, and the
    placement offers storage classes besides STANDARD (unconfigured, RGW answers 400)."""
    from tests.bed.rgw import STORAGE_CLASSES

    assert all(p.poll() is None for p in rgw_server.processes.values())
    assert set(rgw_server.pids) == {"mon", "osd", "radosgw"}
    client = rgw_server.client()
    bucket = rgw_server.create_bucket()
    for storage_class in ("STANDARD", *STORAGE_CLASSES):
        client.put_object(Bucket=bucket, Key=storage_class, Body=b"x", StorageClass=storage_class)
        head = client.head_object(Bucket=bucket, Key=storage_class)
        assert head.get("StorageClass", "STANDARD") == storage_class
    with pytest.raises(client.exceptions.ClientError, match=r"InvalidArgument|InvalidStorageClass"):
        client.put_object(Bucket=bucket, Key="no", Body=b"x", StorageClass="REDUCED_REDUNDANCY")

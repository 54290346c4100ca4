"""The read-only `/v2/` API over an archive: images archived by `bale archive` (into a local
directory, moto S3 and the OSS protocol server) are pulled back by skopeo, podman and containerd's `ctr` with their
digests unchanged; manifests, blobs (ranges, presigned redirects), lists and referrers answer
as the distribution spec says; writes are refused with 405; auth off, htpasswd, bearer."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt
import pytest

from pipeline.archive import layout
from pipeline.oci import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from pipeline.refs import Reference
from pipeline.store.oss import OSSStore
from tests.bed.artifacts import SBOM
from tests.bed.cli import isolated_env, run_bale
from tests.bed.fixtures_store import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_REGION
from tests.bed.images import LayerSpec, Skopeo, SkopeoError
from tests.bed.moto import MotoServer
from tests.bed.serve_web import Sample, ServeWeb, archive_everywhere, push_sample, request, serving

pytestmark = pytest.mark.integration

USER, PASSWORD, TOKEN = "puller", "s3cret-pw", "bale-test-token-1234"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Served:
    sample: Sample
    local: ServeWeb
    s3: ServeWeb
    oss: ServeWeb
    htpasswd: ServeWeb
    bearer: ServeWeb
    anonymous: ServeWeb
    store_dir: Path


@pytest.fixture(scope="module")
def served(
    registry, image_factory, skopeo, moto_server: MotoServer, oss_server, tmp_path_factory
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve-registry")
    sample = push_sample(registry, image_factory, skopeo, tmp / "artifacts", "served")
    stores = archive_everywhere(sample, tmp, moto_server, oss_server)
    assert stores.oss is not None
    htpasswd = tmp / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{USER}:{hashed.replace('$2b$', '$2y$')}\n")  # as htpasswd -B writes
    tokens = tmp / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    local = str(stores.local)
    specs: list[tuple[str, tuple[str, ...]]] = [
        (local, ()),
        (stores.s3, ()),
        (stores.oss, ()),
        (local, ("--htpasswd", str(htpasswd))),
        (local, ("--token-file", str(tokens))),
        (local, ("--htpasswd", str(htpasswd), "--anonymous-read")),
    ]
    with serving(specs, tmp, env=stores.env) as servers:
        yield Served(sample, *servers, store_dir=stores.local)


def _name(served: Served, which: str = "app") -> str:
    return served.sample.store_repo(getattr(served.sample, which))


# ---- the API, request by request ------------------------------------------------------------


def test_base_catalog_and_tags(served):
    base = request(served.local, "GET", "/v2/")
    assert base.status == 200
    assert base.headers["docker-distribution-api-version"] == "registry/2.0"
    catalog = request(served.local, "GET", "/v2/_catalog").json()["repositories"]
    assert catalog == sorted([_name(served, "app"), _name(served, "multi")])
    first = request(served.local, "GET", "/v2/_catalog?n=1")
    assert first.json()["repositories"] == catalog[:1]
    assert first.headers["link"] == f'</v2/_catalog?n=1&last={catalog[0]}>; rel="next"'
    tags = request(served.local, "GET", f"/v2/{_name(served)}/tags/list").json()
    app = served.sample.app
    hexes = app.digest[7:]
    assert tags["name"] == _name(served)
    assert set(tags["tags"]) == {
        "v1",
        f"sha256-{hexes}",
        f"sha256-{hexes}.sig",
        f"sha256-{hexes}.att",
    }
    missing = request(served.local, "GET", "/v2/nothing/here/tags/list")
    assert missing.status == 404
    assert missing.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_manifests_by_tag_and_digest_head_and_get(served):
    app = served.sample.app
    for ref in ("v1", app.digest):
        path = f"/v2/{_name(served)}/manifests/{ref}"
        got = request(served.local, "GET", path, {"Accept": DOCKER_MANIFEST})
        assert got.status == 200
        assert got.body == app.manifest
        assert got.headers["docker-content-digest"] == app.digest
        assert got.headers["content-type"] == DOCKER_MANIFEST
        head = request(served.local, "HEAD", path, {"Accept": DOCKER_MANIFEST})
        assert head.status == 200 and head.body == b""
        assert head.headers["content-length"] == str(len(app.manifest))
        assert head.headers["docker-content-digest"] == app.digest
    unknown = request(served.local, "GET", f"/v2/{_name(served)}/manifests/nope")
    assert unknown.status == 404
    assert unknown.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    # a digest of another repository is not this one's
    other = request(
        served.local, "GET", f"/v2/{_name(served)}/manifests/{served.sample.multi.digest}"
    )
    assert other.status == 404


def test_content_negotiation(served):
    multi = served.sample.multi
    path = f"/v2/{_name(served, 'multi')}/manifests/v2"
    index = request(served.local, "GET", path, {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"})
    assert index.headers["content-type"] == OCI_INDEX
    assert index.headers["docker-content-digest"] == multi.digest
    # a client that cannot take an index gets the linux/amd64 image, as distribution answers
    single = request(served.local, "GET", path, {"Accept": OCI_MANIFEST})
    amd64 = multi.child("linux/amd64")
    assert single.status == 200
    assert single.headers["docker-content-digest"] == amd64.digest
    assert single.body == amd64.manifest
    # never a converted manifest: an OCI image asked for as Docker schema2 is not found
    refused = request(served.local, "GET", path, {"Accept": DOCKER_MANIFEST})
    assert refused.status == 404
    assert refused.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    anything = request(served.local, "GET", path, {"Accept": "*/*"})
    assert anything.headers["docker-content-digest"] == multi.digest


def test_blobs_head_get_and_ranges_from_a_local_store(served):
    app = served.sample.app
    layer = app.layers[0]
    data = app.read_blob(layer.digest)
    path = f"/v2/{_name(served)}/blobs/{layer.digest}"
    head = request(served.local, "HEAD", path)
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(layer.size)
    assert head.headers["docker-content-digest"] == layer.digest
    whole = request(served.local, "GET", path)
    assert hashlib.sha256(whole.body).hexdigest() == layer.digest[7:]
    part = request(served.local, "GET", path, {"Range": "bytes=1000-1999"})
    assert part.status == 206
    assert part.body == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{layer.size}"
    tail = request(served.local, "GET", path, {"Range": "bytes=-10"})
    assert tail.status == 206 and tail.body == data[-10:]
    beyond = request(served.local, "GET", path, {"Range": f"bytes={layer.size}-"})
    assert beyond.status == 416
    # a blob the repository does not link is unknown there, even though the store has it
    elsewhere = request(served.local, "GET", f"/v2/{_name(served, 'multi')}/blobs/{layer.digest}")
    assert elsewhere.status == 404
    assert elsewhere.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


@pytest.mark.parametrize("which", ["s3", "oss"])
def test_blobs_redirect_to_presigned_store_urls(served, moto_server, oss_server, which):
    server: ServeWeb = getattr(served, which)
    endpoint = moto_server.endpoint_url if which == "s3" else oss_server.endpoint
    layer = served.sample.app.layers[0]
    path = f"/v2/{_name(served)}/blobs/{layer.digest}"
    got = request(server, "GET", path)
    assert got.status == 307
    location = urlsplit(got.headers["location"])
    assert f"{location.scheme}://{location.netloc}" == endpoint
    assert "ignature" in location.query
    conn = http.client.HTTPConnection(location.netloc, timeout=30)
    conn.request("GET", f"{location.path}?{location.query}", headers={"Range": "bytes=0-99"})
    resp = conn.getresponse()
    assert resp.status == 206
    assert resp.read() == served.sample.app.read_blob(layer.digest)[:100]
    conn.close()
    head = request(server, "HEAD", path)  # HEAD is answered here: a presigned URL is for GET
    assert head.status == 200 and head.headers["content-length"] == str(layer.size)


def test_referrers_api_lists_the_sbom(served):
    app = served.sample.app
    path = f"/v2/{_name(served)}/referrers/{app.digest}"
    got = request(served.local, "GET", path)
    assert got.status == 200
    assert got.headers["content-type"] == OCI_INDEX
    listed = got.json()["manifests"]
    assert [m["digest"] for m in listed] == [served.sample.sbom.digest]
    assert listed[0]["artifactType"] == SBOM
    filtered = request(served.local, "GET", f"{path}?artifactType=application/example")
    assert filtered.json()["manifests"] == []
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    none = request(
        served.local, "GET", f"/v2/{_name(served)}/referrers/{served.sample.sbom.digest}"
    )
    assert none.status == 200 and none.json()["manifests"] == []


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
@pytest.mark.parametrize("server", ["local", "htpasswd"])
def test_writes_answer_405_unsupported(served, method, server):
    name = _name(served)
    for path in (
        f"/v2/{name}/manifests/v1",
        f"/v2/{name}/blobs/uploads/",
        f"/v2/{name}/blobs/{served.sample.app.layers[0].digest}",
    ):
        got = request(getattr(served, server), method, path)
        assert got.status == 405, (method, path)
        error = got.json()["errors"][0]
        assert error["code"] == "UNSUPPORTED"
        assert error["message"]


def test_basic_auth_from_htpasswd(served):
    path = f"/v2/{_name(served)}/manifests/v1"
    anonymous = request(served.htpasswd, "GET", "/v2/")
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="bale"'
    assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert request(served.htpasswd, "GET", path, basic(USER, "wrong")).status == 401
    assert request(served.htpasswd, "GET", path, basic("nobody", PASSWORD)).status == 401
    assert request(served.htpasswd, "GET", path, {"Authorization": f"Bearer {TOKEN}"}).status == 401
    assert request(served.htpasswd, "GET", path, basic(USER, PASSWORD)).status == 200
    # the catalog lists and hands out what may be pulled: the same credentials
    for page in ("/", "/api/repositories", f"/download/{_name(served)}/v1.tar"):
        refused = request(served.htpasswd, "GET", page)
        assert refused.status == 401, page
        assert refused.headers["www-authenticate"] == 'Basic realm="bale"'
        assert request(served.htpasswd, "GET", page, basic(USER, PASSWORD)).status == 200, page
    # anonymous read when configured; a wrong password is still refused
    assert request(served.anonymous, "GET", path).status == 200
    assert request(served.anonymous, "GET", path, basic(USER, "wrong")).status == 401


def test_bearer_tokens(served):
    path = f"/v2/{_name(served)}/manifests/v1"
    anonymous = request(served.bearer, "GET", path)
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer realm=")
    assert request(served.bearer, "GET", path, {"Authorization": "Bearer nope"}).status == 401
    assert request(served.bearer, "GET", path, {"Authorization": f"Bearer {TOKEN}"}).status == 200


# ---- real clients pulling -------------------------------------------------------------------


def _oci_digest(layout: Path) -> str:
    return json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]


@pytest.mark.parametrize("which", ["local", "s3", "oss"])
def test_skopeo_pulls_with_digests_unchanged(served, skopeo: Skopeo, which, tmp_path):
    server: ServeWeb = getattr(served, which)
    for attr, tag in (("app", "v1"), ("multi", "v2")):
        image = getattr(served.sample, attr)
        src = f"docker://{server.host}/{served.sample.store_repo(image)}:{tag}"
        dest = tmp_path / f"{which}-{attr}"
        skopeo.copy(src, f"oci:{dest}", "--all", "--preserve-digests", "--src-tls-verify=false")
        assert _oci_digest(dest) == image.digest
        for blob in image.blobs:
            data = (dest / "blobs" / "sha256" / blob.digest[7:]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == blob.digest[7:]


def test_skopeo_pulls_with_credentials(served, skopeo: Skopeo, tmp_path):
    app = served.sample.app
    name = f"{_name(served)}:v1"
    with pytest.raises(SkopeoError, match=r"(?i)unauthorized|authentication"):
        skopeo.copy(
            f"docker://{served.htpasswd.host}/{name}",
            f"oci:{tmp_path / 'no'}",
            "--src-tls-verify=false",
        )
    skopeo.copy(
        f"docker://{served.htpasswd.host}/{name}",
        f"oci:{tmp_path / 'basic'}",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        f"{USER}:{PASSWORD}",
    )
    assert _oci_digest(tmp_path / "basic") == app.digest
    skopeo.copy(
        f"docker://{served.bearer.host}/{name}",
        f"oci:{tmp_path / 'bearer'}",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-registry-token",
        TOKEN,
    )
    assert _oci_digest(tmp_path / "bearer") == app.digest


@pytest.mark.parametrize("which", ["local", "s3", "htpasswd"])
def test_podman_pulls_with_digests_unchanged(served, podman, which):
    server: ServeWeb = getattr(served, which)
    app = served.sample.app
    ref = f"{server.host}/{_name(served)}:v1"
    creds = ["--creds", f"{USER}:{PASSWORD}"] if which == "htpasswd" else []
    podman("pull", "-q", "--tls-verify=false", *creds, f"docker://{ref}")
    inspected = json.loads(podman("image", "inspect", ref))[0]
    assert inspected["Digest"] == app.digest
    assert inspected["RootFS"]["Layers"] == list(app.diff_ids)


@pytest.mark.parametrize("which", ["local", "s3", "htpasswd"])
def test_ctr_pulls_with_digests_unchanged(served, containerd, which):
    server: ServeWeb = getattr(served, which)
    creds = ["--user", f"{USER}:{PASSWORD}"] if which == "htpasswd" else []
    for attr, tag in (("app", "v1"), ("multi", "v2")):
        image = getattr(served.sample, attr)
        ref = f"{server.host}/{served.sample.store_repo(image)}:{tag}"
        containerd.ctr(
            "images",
            "pull",
            "--plain-http",
            "--all-platforms",
            "--snapshotter",
            "native",
            *creds,
            ref,
        )
        listed = containerd.ctr("images", "ls")
        line = next(line for line in listed.splitlines() if line.startswith(ref + " "))
        assert image.digest in line.split()
        for blob in image.blobs:
            assert containerd.ctr_status("content", "get", blob.digest) == 0


def test_objects_in_an_archive_class_are_refused_with_a_hint_to_thaw(
    registry, image_factory, oss_server, tmp_path
):
    """A layer (and a tar) moved to OSS Archive answers 403 DENIED on /v2/ and 409 on the
    download, naming `bale thaw`, instead of redirecting to the store's own refusal."""
    app = image_factory.push(
        image_factory.image(layers=(LayerSpec(5000, seed=9151),)), "frozen/app:v1", registry
    )
    bucket = oss_server.create_bucket()
    keys = dict(
        OSS_ENDPOINT=oss_server.endpoint,
        OSS_ACCESS_KEY_ID=OSS_ACCESS_KEY_ID,
        OSS_ACCESS_KEY_SECRET=OSS_ACCESS_KEY_SECRET,
        OSS_REGION=OSS_REGION,
    )
    env = isolated_env(tmp_path, **keys)
    run_bale(
        "archive",
        f"docker://{app.reference}",
        "--to",
        f"oss://{bucket}/team",
        "--src-tls-verify=false",
        env=env,
        check=True,
    )
    store = OSSStore(
        bucket,
        "team",
        endpoint=oss_server.endpoint,
        access_key_id=OSS_ACCESS_KEY_ID,
        access_key_secret=OSS_ACCESS_KEY_SECRET,
        region=OSS_REGION,
    )
    cold = store.with_storage_class("Archive")
    layer = app.layers[0]
    repo = Reference.parse(app.reference).store_repo
    tar_key = layout.tar_key_for(Reference.parse(app.reference))
    for key in (layout.blob_key(layer.digest), tar_key):
        cold.put(key, store.read(key))  # the same bytes, now in Archive
    with serving([(f"oss://{bucket}/team", ())], tmp_path, env=env) as (server,):
        blob = request(server, "GET", f"/v2/{repo}/blobs/{layer.digest}")
        assert blob.status == 403
        error = blob.json()["errors"][0]
        assert error["code"] == "DENIED" and "bale thaw" in error["message"]
        tar = request(server, "GET", f"/download/{repo}/v1.tar")
        assert tar.status == 409 and "not restored" in tar.body.decode()
        config = app.config_descriptor.digest  # still Standard: redirected as before
        assert request(server, "GET", f"/v2/{repo}/blobs/{config}").status == 307

"""Signatures and attestations travel with their images: cosign-style tags and OCI referrers
(with distribution 2.8.2's missing referrers API replaced by the `sha256-<hex>` fallback index,
as oras and regclient maintain it) survive archive → restore, copy and sync, subject first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.archive.bucket import ArchiveBucket
from pipeline.oci import OCI_INDEX, OCI_MANIFEST, Descriptor, RawManifest
from pipeline.ops.referrers import (
    artifact_subject,
    cosign_tags,
    fallback_tag,
    merged_index,
    referrer_descriptor,
)
from pipeline.refs import Reference
from pipeline.registry.client import RegistryClient
from pipeline.registry.credentials import Credentials
from pipeline.registry.transport import ConnectionOptions, RegistryOptions
from pipeline.store.local import LocalStore
from tests.bed.artifacts import SBOM, attach, sign
from tests.bed.cli import run_bale
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec, Skopeo
from tests.bed.registry import RegistryServer

EMPTY = "application/vnd.oci.empty.v1+json"

# ---- names -------------------------------------------------------------------------------


def test_referrer_tag_names():
    digest = "sha256:" + "ab" * 32
    assert fallback_tag(digest) == "sha256-" + "ab" * 32
    assert cosign_tags(digest) == tuple(f"sha256-{'ab' * 32}{s}" for s in (".sig", ".att", ".sbom"))
    for tag in (*cosign_tags(digest), fallback_tag(digest)):
        assert artifact_subject(tag) == digest
    for tag in ("latest", "sha256-abc.sig", f"sha256-{'ab' * 32}.sig.1", f"sha512-{'ab' * 32}"):
        assert artifact_subject(tag) is None


def test_merged_index_keeps_existing_entries_first_and_adds_each_once():
    a = Descriptor(OCI_MANIFEST, "sha256:" + "1" * 64, 10, artifact_type=SBOM)
    b = Descriptor(OCI_MANIFEST, "sha256:" + "2" * 64, 20, annotations={"k": "v"})
    first = merged_index(None, [a])
    assert json.loads(first.data)["manifests"] == [a.to_json()]
    assert first.media_type == OCI_INDEX
    second = merged_index(first, [b, a])
    assert [e["digest"] for e in json.loads(second.data)["manifests"]] == [a.digest, b.digest]
    assert json.loads(second.data)["manifests"][1]["annotations"] == {"k": "v"}


def test_referrer_descriptor_follows_the_distribution_spec():
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY, "digest": "sha256:" + "4" * 64, "size": 2},
        "layers": [],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    raw = RawManifest.from_bytes(json.dumps(manifest).encode())
    desc = referrer_descriptor(raw)
    assert desc.artifact_type == EMPTY  # no artifactType: the config's media type
    assert desc.annotations == manifest["annotations"]
    manifest["artifactType"] = SBOM
    assert (
        referrer_descriptor(RawManifest.from_bytes(json.dumps(manifest).encode())).artifact_type
        == SBOM
    )


def _tags(client: RegistryClient, repo: str) -> dict[str, str]:
    """tag → digest, every tag of `repo`."""
    out = {}
    for tag in client.list_tags(repo):
        found = client.head_manifest(repo, tag)
        assert found is not None
        out[tag] = found.digest
    return out


@dataclass(frozen=True)
class Signed:
    repo: str
    image: BuiltImage
    signature: Descriptor
    attestation: Descriptor
    sbom: Descriptor
    sbom_signature: Descriptor

    @property
    def source(self) -> str:
        return f"docker://{self.image.reference}"


@pytest.fixture(scope="module")
def signed(
    registry: RegistryServer,
    image_factory: ImageFactory,
    skopeo: Skopeo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Signed:
    """A two-platform index signed (`.sig` on the index), its amd64 image attested (`.att`),
    an SBOM referring to the index (fallback index), and the SBOM itself signed (level 2)."""
    tmp = tmp_path_factory.mktemp("artifacts")
    repo = "referrers/signed"
    image = image_factory.push(
        image_factory.index(layers=(LayerSpec(30_000, seed=8101),)), f"{repo}:v1", registry
    )
    signature = sign(skopeo, tmp, registry, repo, image.digest)
    amd64 = image.child("linux/amd64")
    attestation = sign(skopeo, tmp, registry, repo, amd64.digest, ".att")
    sbom = attach(skopeo, tmp, registry, repo, image.descriptor, b'{"spdxVersion":"SPDX-2.3"}')
    sbom_signature = sign(skopeo, tmp, registry, repo, sbom.digest)
    return Signed(repo, image, signature, attestation, sbom, sbom_signature)


def _client(server: RegistryServer) -> RegistryClient:
    creds = Credentials(server.username, server.password) if server.username else None
    return RegistryClient(
        server.host, ConnectionOptions(RegistryOptions(credentials=creds, tls_verify=False))
    )


def _put_order(server: RegistryServer, repo: str, since: int) -> list[str]:
    """The references manifests were PUT under in `repo`, in order."""
    prefix = f"/v2/{repo}/manifests/"
    return [
        e.path[len(prefix) :]
        for e in server.requests("PUT", f"^{prefix}", since=since)
        if e.status == 201
    ]


def _expect_same_artifacts(signed: Signed, src: RegistryServer, dst: RegistryServer, repo: str):
    with _client(src) as theirs, _client(dst) as ours:
        want = _tags(theirs, signed.repo)
        got = _tags(ours, repo)
        assert got == want
        assert len(want) == 5  # v1, .sig, .att, the fallback index, the SBOM's .sig
        assert ours.head_manifest(repo, signed.sbom.digest) is not None
        listed = ours.referrers(repo, signed.image.digest)  # via the fallback tag on 2.8.2
        assert [d.digest for d in listed] == [signed.sbom.digest]
        assert listed[0].artifact_type == SBOM


def _check_order(signed: Signed, server: RegistryServer, repo: str, since: int) -> None:
    """Children, then the index they make up, then what refers to them, level by level."""
    order = _put_order(server, repo, since)
    amd64 = signed.image.child("linux/amd64").digest
    children = [order.index(c.digest) for c in signed.image.children]
    subject = order.index("v1")
    sig = order.index(cosign_tags(signed.image.digest)[0])
    att = order.index(cosign_tags(amd64)[1])
    sbom = order.index(signed.sbom.digest)
    index = order.index(fallback_tag(signed.image.digest))
    sbom_sig = order.index(cosign_tags(signed.sbom.digest)[0])
    assert max(children) < subject < min(sig, att, sbom)
    assert sbom < index
    assert max(sig, att, sbom) < sbom_sig


# ---- round trips ---------------------------------------------------------------------------


@pytest.mark.integration
def test_signed_image_round_trips_through_archive_and_restore(
    signed: Signed, registry: RegistryServer, htpasswd_registry: RegistryServer, tmp_path: Path
):
    store = tmp_path / "store"
    mark = registry.mark()
    proc = run_bale("archive", signed.source, "--to", str(store), "--src-tls-verify=false")
    assert proc.returncode == 0, proc.stderr
    # what discovery cost on the source: one tag listing, then per subject (index + 2 images)
    # a HEAD per cosign tag present, the fallback index GET, or the referrers API and its
    # fallback probe when no fallback tag is listed
    assert registry.count("GET", f"/v2/{signed.repo}/tags/list", since=mark) == 1

    bucket = ArchiveBucket(LocalStore(store))
    ref = Reference.parse(signed.image.reference or "")
    tags = set(bucket.tags(ref.store_repo))
    hexes = {k: d[7:] for k, d in (("index", signed.image.digest), ("sbom", signed.sbom.digest))}
    amd64 = signed.image.child("linux/amd64").digest[7:]
    assert tags == {
        "v1",
        f"sha256-{hexes['index']}.sig",
        f"sha256-{amd64}.att",
        f"sha256-{hexes['index']}",
        f"sha256-{hexes['sbom']}.sig",
    }
    # the fallback index is kept as the source's exact bytes
    stored = bucket.tag_digest(ref.store_repo, f"sha256-{hexes['index']}")
    with _client(registry) as client:
        found = client.head_manifest(signed.repo, f"sha256-{hexes['index']}")
        assert found is not None and stored == found.digest

    # gc keeps every referrer (they are tagged, or listed by a tagged index); verify is clean
    proc = run_bale("gc", str(store), "--older-than", "0s")
    assert proc.returncode == 0, proc.stderr
    assert "0 blob(s)" in proc.stderr, proc.stderr
    proc = run_bale("verify", str(store), "--deep")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    dest_repo = "referrers/restored"
    mark = htpasswd_registry.mark()
    proc = run_bale(
        "restore",
        signed.source,
        f"docker://{htpasswd_registry.host}/{dest_repo}",
        "--from",
        str(store),
        "--dest-tls-verify=false",
        f"--dest-creds={htpasswd_registry.creds}",
    )
    assert proc.returncode == 0, proc.stderr
    _expect_same_artifacts(signed, registry, htpasswd_registry, dest_repo)
    _check_order(signed, htpasswd_registry, dest_repo, mark)

    # a second restore finds everything there: no manifest or blob is written again
    mark = htpasswd_registry.mark()
    proc = run_bale(
        "restore",
        signed.source,
        f"docker://{htpasswd_registry.host}/{dest_repo}",
        "--from",
        str(store),
        "--dest-tls-verify=false",
        f"--dest-creds={htpasswd_registry.creds}",
    )
    assert proc.returncode == 0, proc.stderr
    assert htpasswd_registry.count("PUT", since=mark) == 0
    assert htpasswd_registry.count("POST", since=mark) == 0


@pytest.mark.integration
def test_restore_all_tags_and_no_referrers(
    signed: Signed, registry: RegistryServer, token_registry: RegistryServer, tmp_path: Path
):
    store = tmp_path / "store"
    proc = run_bale("archive", signed.source, "--to", str(store), "--src-tls-verify=false")
    assert proc.returncode == 0, proc.stderr
    repo_url = f"docker://{registry.host}/{signed.repo}"
    creds = f"--dest-creds={token_registry.creds}"
    proc = run_bale(
        "restore", repo_url, f"docker://{token_registry.host}/referrers/all", "--all-tags",
        "--from", str(store), "--dest-tls-verify=false", creds,)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("restored") == 1  # v1 only; its artifacts came along with it
    _expect_same_artifacts(signed, registry, token_registry, "referrers/all")

    proc = run_bale(
        "restore", signed.source, f"docker://{token_registry.host}/referrers/bare",
        "--from", str(store), "--dest-tls-verify=false", creds, "--no-referrers",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with _client(token_registry) as client:
        assert client.list_tags("referrers/bare") == ["v1"]


@pytest.mark.integration
def test_archive_without_referrers_stores_only_the_image(
    signed: Signed, registry: RegistryServer, tmp_path: Path
):
    store = tmp_path / "store"
    mark = registry.mark()
    proc = run_bale(
        "archive", signed.source, "--to", str(store), "--src-tls-verify=false", "--no-referrers"
    )
    assert proc.returncode == 0, proc.stderr
    assert registry.count("GET", "/tags/list$", since=mark) == 0
    assert registry.count(None, r"/referrers/sha256:", since=mark) == 0
    bucket = ArchiveBucket(LocalStore(store))
    ref = Reference.parse(signed.image.reference or "")
    assert bucket.tags(ref.store_repo) == ["v1"]


@pytest.mark.integration
def test_copy_carries_referrers_and_merges_an_existing_fallback_index(
    signed: Signed, registry: RegistryServer, skopeo: Skopeo, tmp_path: Path
):
    dest_repo = "referrers/copied"
    # the destination already lists another SBOM for the same index (pushed as oras would)
    other = attach(skopeo, tmp_path, registry, dest_repo, signed.image.descriptor, b'{"other":1}')
    proc = run_bale(
        "copy",
        signed.source,
        f"docker://{registry.host}/{dest_repo}:v1",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    )
    assert proc.returncode == 0, proc.stderr
    with _client(registry) as client:
        listed = client.referrers(dest_repo, signed.image.digest)
        assert [d.digest for d in listed] == [other.digest, signed.sbom.digest]
        tags = _tags(client, dest_repo)
        want = _tags(client, signed.repo)
    assert {t: d for t, d in tags.items() if t != fallback_tag(signed.image.digest)} == {
        t: d for t, d in want.items() if t != fallback_tag(signed.image.digest)
    }


@pytest.mark.integration
def test_sync_carries_referrers_subject_first_and_skips_them_next_time(
    signed: Signed, registry: RegistryServer, make_registry
):
    dest = make_registry("none")
    repo = f"{registry.host}/{signed.repo}"
    mark = dest.mark()
    proc = run_bale(
        "sync", f"docker://{repo}", f"docker://{dest.host}/mirror", "--all",
        "--src-tls-verify=false", "--dest-tls-verify=false",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _expect_same_artifacts(signed, registry, dest, "mirror/signed")
    _check_order(signed, dest, "mirror/signed", mark)
    # the repository's own referrer tags came along with v1: listed after it, then skipped
    lines = [line.split()[:2] for line in proc.stdout.splitlines()]
    assert lines[0] == ["copied", f"{repo}:v1"]
    assert {status for status, _ in lines[1:]} == {"skipped"} and len(lines) == 5

    mark = dest.mark()
    proc = run_bale(
        "sync", f"docker://{repo}", f"docker://{dest.host}/mirror", "--all",
        "--src-tls-verify=false", "--dest-tls-verify=false",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["skipped"] * 5
    assert dest.count("PUT", since=mark) == dest.count("POST", since=mark) == 0


@pytest.mark.integration
def test_sync_without_all_brings_the_platform_image_and_its_own_referrers(
    signed: Signed, registry: RegistryServer, make_registry
):
    dest = make_registry("none")
    proc = run_bale(
        "sync", f"docker://{signed.image.reference}", f"docker://{dest.host}",
        "--src-tls-verify=false", "--dest-tls-verify=false",)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    amd64 = signed.image.child("linux/amd64").digest
    with _client(dest) as client:
        assert _tags(client, "signed") == {
            "v1": amd64,
            cosign_tags(amd64)[1]: signed.attestation.digest,
        }

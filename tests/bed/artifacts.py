"""Signatures and attestations made the way cosign and oras make them, pushed with skopeo.

sign(skopeo, tmp, registry, repo, subject, kind=".sig")   a cosign-style `sha256-<hex>.sig`
                                                          (or `.att`) tag
attach(skopeo, tmp, registry, repo, subject, body)        an OCI 1.1 referrer (an SBOM) listed
                                                          in the subject's fallback index
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
from pathlib import Path

from pipeline.oci import OCI_INDEX, OCI_MANIFEST, Descriptor
from pipeline.ops.referrers import fallback_tag
from tests.bed.images import Skopeo
from tests.bed.registry import RegistryServer

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SBOM = "application/spdx+json"
EMPTY = "application/vnd.oci.empty.v1+json"


def _put(blobs: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = blobs / digest
    if not path.exists():
        path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layout(root: Path, manifest: dict, blobs: dict[str, bytes]) -> tuple[Path, Descriptor]:
    """An OCI layout holding `manifest` (its blobs given by content)."""
    root.mkdir(parents=True)
    (root / "blobs" / "sha256").mkdir(parents=True)
    for data in blobs.values():
        _put(root / "blobs" / "sha256", data)
    data = json.dumps(manifest, indent=2).encode()
    top = _put(root / "blobs" / "sha256", data)
    top["mediaType"] = manifest["mediaType"]
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return root, Descriptor(manifest["mediaType"], top["digest"], top["size"])


def _descriptor(data: bytes, media_type: str, **extra: object) -> dict:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **extra,
    }


def _push_layout(skopeo: Skopeo, layout: Path, dest: str, registry: RegistryServer) -> None:
    args = ["--preserve-digests", "--dest-tls-verify=false"]
    args += Skopeo.creds_args("--dest-creds", registry)
    skopeo.copy(f"oci:{layout}", f"docker://{dest}", *args)


def sign(
    skopeo: Skopeo, tmp: Path, registry: RegistryServer, repo: str, subject: str, kind: str = ".sig"
) -> Descriptor:
    """A cosign-style signature: a simplesigning payload layer with the signature in an
    annotation, pushed by skopeo to the tag `sha256-<hex>.sig` (or `.att`)."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": f"{registry.host}/{repo}"},
                "image": {"docker-manifest-digest": subject},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    fake_signature = base64.b64encode(hashlib.sha256(payload).digest()).decode()
    # cosign's config: the (uncompressed) payload layer's digest is its diff_id
    diff_id = "sha256:" + hashlib.sha256(payload).hexdigest()
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    media = SIMPLESIGNING if kind == ".sig" else "application/vnd.dsse.envelope.v1+json"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [
            _descriptor(
                payload, media, annotations={"dev.cosignproject.cosign/signature": fake_signature}
            )
        ],
    }
    name = f"{kind[1:]}-{subject[7:19]}-{len(list(tmp.glob('*')))}"
    layout, desc = _layout(tmp / name, manifest, {"p": payload, "c": config})
    tag = f"sha256-{subject[7:]}{kind}"
    _push_layout(skopeo, layout, f"{registry.host}/{repo}:{tag}", registry)
    return desc


def attach(
    skopeo: Skopeo, tmp: Path, registry: RegistryServer, repo: str, subject: Descriptor, body: bytes
) -> Descriptor:
    """An OCI 1.1 referrer (an SBOM whose `subject` is the image), pushed by digest with skopeo,
    then listed in the subject's fallback index the way oras does it on a registry without the
    referrers API: GET `sha256-<hex>` (if any), append the descriptor, PUT it back."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM,
        "config": _descriptor(b"{}", EMPTY),
        "layers": [_descriptor(body, SBOM)],
        "subject": subject.to_json(),
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    name = f"sbom-{subject.hex[:12]}-{len(list(tmp.glob('*')))}"
    layout, desc = _layout(tmp / name, manifest, {"b": body, "c": b"{}"})
    _push_layout(skopeo, layout, f"{registry.host}/{repo}@{desc.digest}", registry)
    entry = _descriptor(
        (layout / "blobs" / "sha256" / desc.hex).read_bytes(),
        OCI_MANIFEST,
        artifactType=SBOM,
        annotations=manifest["annotations"],
    )
    tag = fallback_tag(subject.digest)
    status, existing = _http(registry, "GET", f"/v2/{repo}/manifests/{tag}")
    index = (
        json.loads(existing)
        if status == 200
        else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    )
    index["manifests"].append(entry)
    status, _ = _http(registry, "PUT", f"/v2/{repo}/manifests/{tag}", json.dumps(index).encode())
    assert status == 201
    return desc


def _http(
    registry: RegistryServer, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    assert registry.auth == "none", "the raw helper talks to the anonymous registry only"
    conn = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=30)
    headers = {"Accept": OCI_INDEX}
    if body is not None:
        headers["Content-Type"] = OCI_INDEX
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data

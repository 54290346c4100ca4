"""Requests per image, counted at the registry and at the store (issue 19).

Both servers are reached through the test bed's HTTP proxy (`tests/bed/proxy.py`, no faults
added), which logs every request it forwards; each is classed by method and what its path
names (a manifest, a blob, a layer link, a tar part, ...), so a count says which kind of
request an image costs and how many of it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import urllib.request
from collections.abc import Iterable
from typing import Any

from tests.bed.proxy import ProxiedRequest

_REGISTRY_CLASSES = (
    (re.compile(r"^/v2/?$"), "ping /v2/"),
    (re.compile(r"/manifests/"), "manifest"),
    (re.compile(r"/blobs/uploads/"), "blob upload"),
    (re.compile(r"/blobs/"), "blob"),
    (re.compile(r"/referrers/"), "referrers"),
    (re.compile(r"/tags/list"), "tags/list"),
    (re.compile(r"token"), "token"),
)

_STORE_CLASSES = (
    (re.compile(r"/docker/registry/v2/blobs/"), "blob data"),
    (re.compile(r"/_layers/"), "layer link"),
    (re.compile(r"/_manifests/revisions/"), "revision link"),
    (re.compile(r"/_manifests/tags/[^/]+/index/"), "tag index link"),
    (re.compile(r"/_manifests/tags/"), "tag link"),
    (re.compile(r"/images/.*\.tar$"), "tar"),
    (re.compile(r"/images/.*\.json$"), "record"),
    (re.compile(r"/\.bale-probe-"), "probe key"),
    (re.compile(r"/bale-write-check-"), "write-check key"),
)


def registry_class(r: ProxiedRequest) -> str:
    path = r.path.split("?", 1)[0]
    for pattern, name in _REGISTRY_CLASSES:
        if pattern.search(path):
            return f"{r.method} {name}"
    return f"{r.method} other"


def store_class(r: ProxiedRequest) -> str:
    """S3 path-style requests: the key's class, then what the query makes of it."""
    path, _, query = r.path.partition("?")
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    key = next((name for pattern, name in _STORE_CLASSES if pattern.search(path)), None)
    if key is None:
        key = "bucket" if path.strip("/").count("/") == 0 else "other key"
    if "list-type" in params or (key == "bucket" and r.method == "GET" and "uploads" not in params):
        op = "list"
    elif "delete" in params:
        op = "delete objects"
    elif "uploads" in params:
        op = "start multipart" if r.method == "POST" else "list uploads"
    elif "partNumber" in params:
        op = "copy part" if r.header("x-amz-copy-source") else "part"
    elif "uploadId" in params:
        op = {"POST": "complete", "DELETE": "abort", "GET": "list parts"}.get(r.method, "upload")
    elif r.header("x-amz-copy-source"):
        op = "copy"
    else:
        op = ""
    return f"{r.method} {key}{' ' + op if op else ''}"


def others(requests: Iterable[ProxiedRequest], classify: Any) -> list[str]:
    """Paths no class names (to extend the classes)."""
    return sorted({r.path for r in requests if "other" in classify(r)})


def count(requests: Iterable[ProxiedRequest], classify: Any) -> dict[str, int]:
    counts = collections.Counter(classify(r) for r in requests)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def push_small_images(registry_url: str, repos: list[str], per_repo: int) -> list[str]:
    """`len(repos) * per_repo` distinct small images (one shared 2 KiB layer, a config of
    their own each) pushed through the registry API: skopeo, one process per image, would take
    minutes for hundreds. Returns `repo:tag` references (without the host)."""
    layer = hashlib.sha256(b"bale bench small layer").digest() * 64  # 2 KiB, not a tar:
    # the registry checks digests, not contents, and bale archives blobs as bytes.
    layer_digest = _digest(layer)
    refs: list[str] = []
    for repo in repos:
        _put_blob(registry_url, repo, layer)
        for i in range(per_repo):
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Labels": {"bench": f"{repo}-{i}"}},
                    "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
                }
            ).encode()
            config_digest = _put_blob(registry_url, repo, config)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {
                        "mediaType": "application/vnd.docker.container.image.v1+json",
                        "digest": config_digest,
                        "size": len(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "digest": layer_digest,
                            "size": len(layer),
                        }
                    ],
                }
            ).encode()
            tag = f"t{i}"
            _request(
                registry_url,
                "PUT",
                f"/v2/{repo}/manifests/{tag}",
                manifest,
                {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
            )
            refs.append(f"{repo}:{tag}")
    return refs


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _request(
    base: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> Any:
    url = path if path.startswith("http") else base + path
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    return urllib.request.urlopen(req, timeout=30)


def _put_blob(base: str, repo: str, data: bytes) -> str:
    digest = _digest(data)
    with _request(base, "POST", f"/v2/{repo}/blobs/uploads/", b"") as resp:
        location = resp.headers["Location"]
    sep = "&" if "?" in location else "?"
    headers = {"Content-Type": "application/octet-stream"}
    with _request(base, "PUT", f"{location}{sep}digest={digest}", data, headers):
        pass
    return digest

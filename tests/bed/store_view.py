"""What a store holds, read directly (files on disk, boto3), not through bale's store code.

Tests that break runs on purpose (faults, kills, signals, rate limits) check the store with
these: a blind spot in `bale verify` must not hide a dangling link.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.archive import layout
from pipeline.refs import Reference
from tests.bed.fixtures_store import S3Server


def local_keys(root: Path) -> set[str]:
    """Every file under a local store, as store keys (the temporary area included)."""
    if not root.exists():
        return set()
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def blob_digests(keys: set[str] | list[str], prefix: str = "") -> set[str]:
    out = set()
    for key in keys:
        digest = layout.digest_from_blob_key(key[len(prefix) :] if prefix else key)
        if digest is not None:
            out.add(digest)
    return out


def check_local_blobs(root: Path) -> int:
    """Every blob file hashes to its own name; returns how many there are."""
    n = 0
    for key in local_keys(root):
        digest = layout.digest_from_blob_key(key)
        if digest is None:
            continue
        assert "sha256:" + hashlib.sha256((root / key).read_bytes()).hexdigest() == digest, key
        n += 1
    return n


def record_of(root: Path, ref: str) -> dict[str, Any]:
    return json.loads((root / layout.record_key_for(Reference.parse(ref))).read_text())


class S3View:
    """What moto or RGW holds, read with boto3 directly (not through bale's store code)."""

    def __init__(self, server: S3Server, bucket: str, prefix: str) -> None:
        self.client = server.client()
        self.bucket = bucket
        self.prefix = prefix

    def keys(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + "/"
        )
        n = len(self.prefix) + 1
        return {o["Key"][n:] for page in pages for o in page.get("Contents", [])}

    def uploads(self) -> list[tuple[str, str, int]]:
        """(key, upload id, parts) of every unfinished multipart upload."""
        r = self.client.list_multipart_uploads(Bucket=self.bucket)
        out = []
        for u in r.get("Uploads", []):
            try:
                parts = self.client.list_parts(
                    Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]
                )
            except self.client.exceptions.NoSuchUpload:
                continue  # aborted between the listing and this call (e.g. the write check's)
            key = u["Key"][len(self.prefix) + 1 :]
            out.append((key, u["UploadId"], len(parts.get("Parts", []))))
        return out


def check_no_dangling(keys: set[str]) -> None:
    """Every digest link (layer, revision, tag history) names a blob the key set holds, and
    every record has its tar.

    `bale verify` checks this and more from the store; this reads the keys directly, so the
    invariant holds even if verify had a blind spot.
    """
    blobs = blob_digests(keys)
    for key in keys:
        parts = key.split("/")
        if (
            key.startswith(layout.REPOSITORIES_PREFIX)
            and parts[-1] == "link"
            and parts[-3] == "sha256"
        ):
            assert f"sha256:{parts[-2]}" in blobs, f"dangling link {key}"
        if key.startswith(layout.IMAGES_PREFIX) and key.endswith(".json"):
            assert key[: -len(".json")] + ".tar" in keys, f"record without its tar: {key}"

"""Presigned GET URLs (the `Presigning` capability): S3 and OSS hand out a URL that reads one
object without credentials, as `bale serve` redirects blob pulls and tar downloads to; a local
store has no such URL (it streams instead)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest

from pipeline.store.base import Presigning, attachment
from pipeline.store.local import LocalStore


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.mark.parametrize("kind", ["s3", "oss"])
def test_a_presigned_url_reads_the_object_without_credentials(store_bed, kind):
    store = store_bed(kind).store
    assert isinstance(store, Presigning)
    data = os.urandom(200_000)
    store.put("images/team/app/v1.tar", data)
    url = store.presign("images/team/app/v1.tar", expires=60)
    assert "pfx/images/team/app/v1.tar" in url  # under the store's prefix
    status, body, _ = _get(url)
    assert status == 200 and body == data
    status, body, _ = _get(url, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    status, _, _ = _get(url.replace("v1.tar", "v2.tar"))  # the signature covers the key
    assert status in (403, 404)


def test_a_presigned_s3_url_names_the_download(store_bed):
    store = store_bed("s3").store
    store.put("a.tar", b"tar bytes")
    url = store.presign("a.tar", filename="team_app_v1.tar")
    status, body, headers = _get(url)
    assert status == 200 and body == b"tar bytes"
    assert headers["Content-Disposition"] == attachment("team_app_v1.tar")


def test_a_local_store_does_not_presign(tmp_path):
    assert not isinstance(LocalStore(tmp_path), Presigning)


def test_attachment_names_any_file_safely():
    assert attachment("a.tar") == "attachment; filename=\"a.tar\"; filename*=UTF-8''a.tar"
    value = attachment('we"ird ü.tar')
    assert 'filename="we_ird ?.tar"' in value
    assert value.endswith("filename*=UTF-8''we%22ird%20%C3%BC.tar")

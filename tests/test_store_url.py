"""Store URLs and object locations, as DESIGN's Stores table and `bale copy` LOCATIONs say."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InvalidStoreURL
from pipeline.store.local import LocalStore
from pipeline.store.url import (
    ObjectLocation,
    StoreURL,
    open_location,
    open_store,
    parse_location,
    parse_store_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", StoreURL("s3", "bucket", "")),
        ("s3://bucket/", StoreURL("s3", "bucket", "")),
        ("s3://my.bucket-1/archive/v2/", StoreURL("s3", "my.bucket-1", "archive/v2")),
        ("oss://bucket/a/b", StoreURL("oss", "bucket", "a/b")),
        ("OSS://bucket/a", StoreURL("oss", "bucket", "a")),
        ("file:///srv/archive", StoreURL("file", "", "/srv/archive")),
        ("file://localhost/srv/archive", StoreURL("file", "", "/srv/archive")),
        ("/srv/archive/", StoreURL("file", "", "/srv/archive")),
        ("/srv/with:colon", StoreURL("file", "", "/srv/with:colon")),
    ],
)
def test_store_urls(url: str, expected: StoreURL) -> None:
    assert parse_store_url(url) == expected


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_store_url("archive") == StoreURL("file", "", str(tmp_path / "archive"))
    store = open_store("archive")
    assert isinstance(store, LocalStore) and store.url == (tmp_path / "archive").as_uri()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "s3://",
        "s3:///prefix",
        "oss://",
        "oss:///x",
        "s3:bucket",
        "gs://bucket",
        "http://host/bucket",
        "s3://bucket?x=1",
        "s3://bucket/a/../b",
        "s3://bad_bucket!/x",
        "file://otherhost/dir",
    ],
)
def test_bad_store_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(InvalidStoreURL) as info:
        parse_store_url(url)
    assert info.value.exit_code == 2


def test_credentials_in_a_url_are_never_echoed() -> None:
    with pytest.raises(InvalidStoreURL) as info:
        parse_store_url("s3://AKIAXXXX:very-secret@bucket/x")
    assert "very-secret" not in str(info.value) and "AKIAXXXX" not in str(info.value)


@pytest.mark.parametrize(
    ("location", "store", "key"),
    [
        ("s3://bucket/nginx.tar", StoreURL("s3", "bucket", ""), "nginx.tar"),
        ("oss://bucket/images/a/b.tar", StoreURL("oss", "bucket", ""), "images/a/b.tar"),
        ("/tmp/out/nginx.tar", StoreURL("file", "", "/tmp/out"), "nginx.tar"),
        ("file:///tmp/x.tar", StoreURL("file", "", "/tmp"), "x.tar"),
    ],
)
def test_object_locations(location: str, store: StoreURL, key: str) -> None:
    parsed = parse_location(location)
    assert parsed == ObjectLocation(store, key)
    assert str(parsed) == location.removeprefix("file://")


@pytest.mark.parametrize(
    "location", ["", "-", "s3://bucket", "s3://bucket/", "oss://", "/tmp/dir/"]
)
def test_bad_locations(location: str) -> None:
    with pytest.raises(InvalidStoreURL):
        parse_location(location)


def test_open_location_writes_a_local_file(tmp_path: Path) -> None:
    store, key = open_location(str(tmp_path / "out" / "image.tar"))
    store.put(key, b"tar bytes")
    assert (tmp_path / "out" / "image.tar").read_bytes() == b"tar bytes"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["image.tar"]  # no temp dir left


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("s3//bucket/x", "s3://bucket/x"),
        ("S3//bucket", "s3://bucket"),
        ("oss//bucket/a/b", "oss://bucket/a/b"),
        ("gs//bucket", "gs://bucket"),
        ("https//host/k.tar", "https://host/k.tar"),
        ("docker//host/repo", "docker://host/repo"),
        ("file//srv/archive", "file:///srv/archive"),
    ],
)
def test_a_url_without_its_colon_is_refused(text: str, meant: str) -> None:
    """`s3//bucket/x` would be the directory ./s3/bucket/x: refused, naming what was meant."""
    for parse in (parse_store_url, parse_location):
        with pytest.raises(InvalidStoreURL, match=f"did you mean {meant}\\?"):
            parse(text)


@pytest.mark.parametrize("text", ["./s3//x", "s3/bucket/x", "archive//x", "/s3//x", "s3"])
def test_paths_that_only_resemble_a_url_are_paths(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_store_url(text) == StoreURL("file", "", str(Path(text).absolute()).rstrip("/"))

"""Per-image records: built from a tar plan, written as JSON, and read back only when valid."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from pipeline import __version__
from pipeline.archive import layout
from pipeline.archive.record import ImageRecord, format_time
from pipeline.archive.tarplan import plan_image_tar
from pipeline.errors import InvalidArchive
from pipeline.oci import RawManifest
from pipeline.refs import Reference
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture(scope="module")
def index(image_factory: ImageFactory) -> BuiltImage:
    return image_factory.index(
        ["linux/amd64", "linux/arm/v7"],
        [LayerSpec(700, seed=401), LayerSpec(300, "none", seed=402)],
    )


def _raw(image: BuiltImage) -> RawManifest:
    return RawManifest.from_bytes(image.manifest)


def _one_platform_record(index: BuiltImage, ref: Reference) -> ImageRecord:
    """arm/v7 in the tar, both platforms in the store (what `bale archive --platform` does)."""
    top, arm = _raw(index), _raw(index.child("linux/arm/v7"))
    plan = plan_image_tar(ref, top, [arm])
    stored = [*(_raw(c).descriptor() for c in index.children), *index.blobs]
    return ImageRecord.build(
        ref,
        top,
        plan,
        stored=stored,
        stored_platforms=["linux/amd64", "linux/arm/v7"],
        archived_at=WHEN,
    )


def test_build_from_a_plan(index: BuiltImage) -> None:
    ref = Reference.parse("127.0.0.1:5000/team/app:1.0")
    record = _one_platform_record(index, ref)
    arm = index.child("linux/arm/v7")
    assert record.source == "127.0.0.1:5000/team/app:1.0"
    assert (record.repo, record.tag) == ("127.0.0.1-5000/team/app", "1.0")
    assert (record.digest, record.media_type) == (index.digest, index.media_type)
    assert (record.tar_digest, record.tar_media_type) == (arm.digest, arm.media_type)
    assert record.tar_key == "images/127.0.0.1-5000/team/app/1.0.tar"
    assert record.record_key == "images/127.0.0.1-5000/team/app/1.0.json"
    assert record.platforms == ("linux/arm/v7",)
    assert record.stored_platforms == ("linux/amd64", "linux/arm/v7")
    expected = {index.digest, *(c.digest for c in index.children), *(d.digest for d in index.blobs)}
    assert {b.digest for b in record.blobs} == expected
    assert len(record.blobs) == len(expected)
    assert record.blob_bytes == len(index.manifest) + sum(
        len(c.manifest) for c in index.children
    ) + sum(d.size for d in index.blobs)
    assert record.version == __version__
    assert record.reference == ref


def test_json_round_trip(index: BuiltImage) -> None:
    record = _one_platform_record(index, Reference.parse("127.0.0.1:5000/team/app:1.0"))
    data = record.to_json()
    obj = json.loads(data)
    assert obj["archived_at"] == "2024-05-06T07:08:09Z"
    assert obj["sizes"] == {"blobs": record.blob_bytes, "tar": record.tar_size}
    assert obj["tar_key"] == record.tar_key
    assert obj["blobs"][0] == {
        "digest": index.digest,
        "size": len(index.manifest),
        "media_type": index.media_type,
    }
    back = ImageRecord.from_json(data, key=record.record_key)
    assert back == record
    assert back.to_json() == data


def test_digest_references(index: BuiltImage) -> None:
    pinned = Reference.parse(f"nginx:1.17.6@{index.digest}")
    record = _one_platform_record(index, pinned)
    assert record.tag == "1.17.6"
    assert record.tar_key == f"images/docker.io/library/nginx/sha256-{index.digest[7:]}.tar"
    assert ImageRecord.from_json(record.to_json()) == record
    bare = _one_platform_record(index, Reference.parse(f"nginx@{index.digest}"))
    assert bare.tag is None
    assert ImageRecord.from_json(bare.to_json()).tar_key == bare.tar_key


def _mutated(record: ImageRecord, **changes: Any) -> bytes:
    obj = json.loads(record.to_json())
    for key, value in changes.items():
        if value is _DELETE:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj).encode()


_DELETE = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"digest": "sha256:short"}, "not a digest"),
        ({"tar_digest": "md5:" + "0" * 32}, "not a digest"),
        ({"tar_key": "images/../../etc/passwd.tar"}, "not where"),
        ({"tar_key": "docker/registry/v2/blobs/sha256/aa/x/data"}, "not where"),
        ({"repo": "docker.io/library/nginx"}, "does not match source"),
        ({"repo": "../x"}, "not a valid repository"),
        ({"tag": "2.0"}, "does not match source"),
        ({"tag": "../x"}, "not a valid tag"),
        ({"source": "not a ref"}, "invalid"),
        ({"format": 99}, "newer"),
        ({"archived_at": "yesterday"}, "bad time"),
        ({"archived_at": "2024-01-01T00:00:00"}, "no zone"),
        ({"sizes": {"blobs": 1, "tar": 5}}, "add up"),
        ({"sizes": {"blobs": 0, "tar": -5}}, "non-negative"),
        ({"blobs": [{"digest": "sha256:" + "a" * 64, "size": "12"}]}, "non-negative"),
        ({"blobs": "none"}, "must be a list"),
        ({"platforms": "linux/amd64"}, "list of strings"),
        ({"media_type": _DELETE}, "missing field"),
    ],
)
def test_invalid_records_are_refused(
    index: BuiltImage, changes: dict[str, Any], message: str
) -> None:
    record = _one_platform_record(index, Reference.parse("127.0.0.1:5000/team/app:1.0"))
    with pytest.raises(InvalidArchive, match=message):
        ImageRecord.from_json(_mutated(record, **changes))


def test_not_json_and_misplaced(index: BuiltImage) -> None:
    with pytest.raises(InvalidArchive, match="not valid JSON"):
        ImageRecord.from_json(b"{", key="images/a/b/c.json")
    with pytest.raises(InvalidArchive, match="not a JSON object"):
        ImageRecord.from_json(b"[]")
    record = _one_platform_record(index, Reference.parse("127.0.0.1:5000/team/app:1.0"))
    other = layout.record_key("127.0.0.1-5000/team/app", tag="2.0")
    with pytest.raises(InvalidArchive, match="not the tar beside it"):
        ImageRecord.from_json(record.to_json(), key=other)


def test_times_are_utc_with_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2024, 1, 1, 2, 0, 0, tzinfo=plus_two)) == "2024-01-01T00:00:00Z"
    with pytest.raises(ValueError):
        format_time(datetime(2024, 1, 1))

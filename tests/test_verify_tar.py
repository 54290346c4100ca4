"""`bale verify` reads a record's tar through the tar reader: damage inside the tar's layout
(an entry renamed away, so index.json's graph and manifest.json name an absent blob) comes
out as the faults the module docstring lists."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.tarplan import BLOCK
from pipeline.copy.session import RegistryOptions, Session
from pipeline.ops.archive import ArchiveOptions, Archiver
from pipeline.ops.verify import verify_store
from pipeline.refs import Reference
from pipeline.store.local import LocalStore
from tests.bed.images import LayerSpec

pytestmark = pytest.mark.integration


def _rename_member(data: bytes, old: str, new: str) -> bytes:
    """The tar with member `old` renamed to `new` (same length), its header checksum redone."""
    at = data.index(old.encode().ljust(100, b"\0"))
    assert at % BLOCK == 0
    header = bytearray(data[at : at + BLOCK])
    header[:100] = new.encode().ljust(100, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    return data[:at] + bytes(header) + data[at + BLOCK :]


def test_a_blob_missing_from_the_tar_is_named_by_who_needs_it(
    tmp_path: Path, registry: Any, image_factory: Any
) -> None:
    name = f"{registry.host}/verify-tar/{uuid.uuid4().hex[:8]}:1"
    built = image_factory.image(layers=(LayerSpec(5000, seed=801), LayerSpec(3000, seed=802)))
    built = image_factory.push(built, name, registry)
    bucket = ArchiveBucket(LocalStore(tmp_path / "store", fsync=False))
    with Session() as session:
        result = Archiver(bucket, session).archive(
            Reference.parse(name), RegistryOptions(tls_verify=False), ArchiveOptions()
        )
    assert result.status == "archived", result.error
    record = bucket.read_record(Reference.parse(name))
    assert record is not None
    assert verify_store(bucket).ok

    layer = built.layers[1].digest
    old = f"blobs/sha256/{layer[7:]}"
    new = "blobs/sha256/" + "0" * 64
    tar = tmp_path / "store" / record.tar_key
    tar.write_bytes(_rename_member(tar.read_bytes(), old, new))

    faults = {(f.kind, f.detail) for f in verify_store(bucket).faults}
    assert faults == {
        ("tar-entry-missing", f"{old} (named by manifest {built.digest})"),
        ("tar-entry-missing", f"{old} (named by manifest.json)"),
        ("tar-entry-corrupt", f"{new} hashes to {layer}"),
    }

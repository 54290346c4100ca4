"""Two images in the test registry that share one layer, archived with the real Archiver.

The verify and gc tests both start from this pair: the shared layer is stored once, so a fault
in it is one fault that both images' checks name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.record import ImageRecord
from pipeline.copy.session import RegistryOptions, Session
from pipeline.ops.archive import ArchiveOptions, Archiver
from pipeline.refs import Reference
from tests.bed.images import LayerSpec

SHARED = LayerSpec(6000, seed=701)
"""The layer both images carry: same bytes, same digest, stored once."""


@dataclass(frozen=True)
class Pushed:
    """Two images in the test registry that share one layer."""

    a: str
    b: str
    a_layers: tuple[str, ...]
    b_layers: tuple[str, ...]
    a_config: str
    b_config: str
    a_digest: str
    b_digest: str

    @property
    def shared(self) -> str:
        (digest,) = set(self.a_layers) & set(self.b_layers)
        return digest

    @property
    def a_only(self) -> str:
        (digest,) = set(self.a_layers) - set(self.b_layers)
        return digest

    @property
    def b_only(self) -> str:
        (digest,) = set(self.b_layers) - set(self.a_layers)
        return digest


def push_pair(registry: Any, image_factory: Any) -> Pushed:
    """Image a (gzip layers) and image b (the shared gzip layer plus a zstd one), pushed."""
    repo = f"verify/{uuid.uuid4().hex[:8]}"
    a = image_factory.image(layers=(SHARED, LayerSpec(9000, seed=702)))
    b = image_factory.image(layers=(SHARED, LayerSpec(7000, compression="zstd", seed=703)))
    a = image_factory.push(a, f"{registry.host}/{repo}/a:1", registry)
    b = image_factory.push(b, f"{registry.host}/{repo}/b:1", registry)
    return Pushed(
        a=f"{registry.host}/{repo}/a:1",
        b=f"{registry.host}/{repo}/b:1",
        a_layers=tuple(d.digest for d in a.layers),
        b_layers=tuple(d.digest for d in b.layers),
        a_config=a.config_descriptor.digest,
        b_config=b.config_descriptor.digest,
        a_digest=a.digest,
        b_digest=b.digest,
    )


def archive_both(bucket: ArchiveBucket, pushed: Pushed) -> tuple[ImageRecord, ImageRecord]:
    """Archive a and b into `bucket` with the real Archiver; their records."""
    with Session() as session:
        archiver = Archiver(bucket, session)
        for ref in (pushed.a, pushed.b):
            result = archiver.archive(
                Reference.parse(ref), RegistryOptions(tls_verify=False), ArchiveOptions()
            )
            assert result.status == "archived", result.error
    a = bucket.read_record(Reference.parse(pushed.a))
    b = bucket.read_record(Reference.parse(pushed.b))
    assert a is not None and b is not None
    return a, b

"""A registry repository as an `ImageSource` (the `docker://` transport's read side)."""

from __future__ import annotations

from pipeline.image import MemoisedTopSource
from pipeline.oci import Descriptor, RawManifest
from pipeline.refs import Reference
from pipeline.registry.client import RegistryClient
from pipeline.store.base import Readable


class RegistrySource(MemoisedTopSource):
    """Reads one image from a registry; the top manifest is fetched once and remembered."""

    reads_limited = True
    """Its client passes every read through the session's rate limiter."""

    def __init__(self, client: RegistryClient, reference: Reference) -> None:
        super().__init__(reference)
        self.client = client

    def _read_manifest(self, digest: str) -> RawManifest:
        return self.client.get_manifest(self._reference.repository, digest)

    def _read_top(self) -> RawManifest:
        return self.client.get_manifest(self._reference.repository, self._reference.identifier)

    def blob(self, descriptor: Descriptor) -> bytes:
        return self.client.get_blob(self._reference.repository, descriptor)

    def open_blob(self, descriptor: Descriptor) -> Readable:
        return self.client.open_blob(self._reference.repository, descriptor)

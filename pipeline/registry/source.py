"""A registry repository as an `ImageSource` (the `docker://` transport's read side)."""

from __future__ import annotations

from pipeline.oci import Descriptor, RawManifest
from pipeline.refs import Reference
from pipeline.registry.client import RegistryClient
from pipeline.store.base import Readable


class RegistrySource:
    """Reads one image from a registry; the top manifest is fetched once and remembered."""

    def __init__(self, client: RegistryClient, reference: Reference) -> None:
        self.client = client
        self._reference = reference
        self._top: RawManifest | None = None

    @property
    def reference(self) -> Reference:
        return self._reference

    def manifest(self, digest: str | None = None) -> RawManifest:
        if digest is not None:
            return self.client.get_manifest(self._reference.repository, digest)
        if self._top is None:
            self._top = self.client.get_manifest(
                self._reference.repository, self._reference.identifier
            )
        return self._top

    def blob(self, descriptor: Descriptor) -> bytes:
        return self.client.get_blob(self._reference.repository, descriptor)

    def open_blob(self, descriptor: Descriptor) -> Readable:
        return self.client.open_blob(self._reference.repository, descriptor)

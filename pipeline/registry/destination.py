"""A registry repository as an `ImageDestination` (the `docker://` transport's write side)."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.image import BlobWrite
from pipeline.oci import Descriptor, RawManifest
from pipeline.refs import Reference
from pipeline.registry.client import RegistryClient
from pipeline.registry.push import RegistryPusher, pusher_for
from pipeline.store.base import Readable


class RegistryDestination:
    """Writes one image into `reference`'s repository; the tag is the caller's choice.

    A mount is tried when `mount_from` is a repository of this same registry (a copy within
    one registry, or a restore into the registry the image was archived from).
    """

    def __init__(
        self,
        client: RegistryClient,
        reference: Reference,
        *,
        pusher: RegistryPusher | None = None,
    ) -> None:
        self.client = client
        self._reference = reference
        self.pusher = pusher or pusher_for(client)

    @property
    def reference(self) -> Reference:
        return self._reference

    @property
    def repository(self) -> str:
        return self._reference.repository

    def put_blob(
        self,
        descriptor: Descriptor,
        open_stream: Callable[[], Readable],
        *,
        mount_from: Reference | None = None,
    ) -> BlobWrite:
        mounts: list[str] = []
        if (
            mount_from is not None
            and mount_from.registry == self._reference.registry
            and mount_from.repository != self.repository
        ):
            mounts.append(mount_from.repository)
        return self.pusher.push_blob(self.repository, descriptor, open_stream, mount_from=mounts)

    def has_manifest(self, digest: str, tag: str | None = None) -> bool:
        return self.pusher.manifest_digest(self.repository, tag or digest) == digest

    def put_manifest(self, raw: RawManifest, tag: str | None = None) -> None:
        self.pusher.put_manifest(self.repository, tag or raw.digest, raw)

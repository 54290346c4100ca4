"""`transport:reference` strings, parsed in one place (skopeo's spelling).

`docker://REF`, `docker-archive:LOCATION[:REF]`, `oci-archive:LOCATION[:REF]`, where LOCATION
is a local path, `-` (stdin/stdout), `s3://bucket/key` or `oss://bucket/key`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.errors import UsageError
from pipeline.refs import Reference

ArchiveFormat = Literal["docker-archive", "oci-archive"]
_REMOTE_SCHEMES = ("s3://", "oss://", "file://")


@dataclass(frozen=True)
class RegistryTransport:
    reference: Reference

    def __str__(self) -> str:
        return f"docker://{self.reference}"


@dataclass(frozen=True)
class ArchiveTransport:
    """A tar at `location`; `name` is the image name inside it (RepoTags / ref.name)."""

    format: ArchiveFormat
    location: str
    name: str | None = None

    @property
    def is_stdio(self) -> bool:
        return self.location == "-"

    def __str__(self) -> str:
        return f"{self.format}:{self.location}" + (f":{self.name}" if self.name else "")


Transport = RegistryTransport | ArchiveTransport


def _split_location(rest: str) -> tuple[str, str | None]:
    """LOCATION[:REF]; a URL's own `scheme://` colon is not the separator."""
    skip = 0
    for scheme in _REMOTE_SCHEMES:
        if rest.startswith(scheme):
            skip = len(scheme)
            break
    head, sep, tail = rest[skip:].partition(":")
    return rest[:skip] + head, (tail if sep else None)


def parse_transport(text: str) -> Transport:
    if text.startswith("docker://"):
        return RegistryTransport(Reference.parse(text))
    for fmt in ("docker-archive", "oci-archive"):
        prefix = f"{fmt}:"
        if text.startswith(prefix):
            location, name = _split_location(text[len(prefix) :])
            if not location:
                raise UsageError(f"{text!r}: {fmt} needs a location (a path, -, s3:// or oss://)")
            if name is not None and not name:
                raise UsageError(f"{text!r}: empty image name after the location")
            return ArchiveTransport(fmt, location, name)
    raise UsageError(
        f"unknown transport in {text!r}: expected docker://, docker-archive: or oci-archive:"
    )


def archive_name(transport: ArchiveTransport, default: Reference | None) -> Reference:
    """The reference a tar names its image by: the transport's `:REF`, else the source's.

    For oci-archive a bare tag (`:latest`) is allowed and applied to the source's name. A
    source without a name (a tar entry without RepoTags) needs a full `:REF` (UsageError).
    """
    bare_tag = (
        transport.name is not None
        and transport.format == "oci-archive"
        and "/" not in transport.name
        and ":" not in transport.name
    )
    if transport.name is not None and not bare_tag:
        return Reference.parse(transport.name)
    if default is None:
        raise UsageError(f"the image has no name: give one as {transport.format}:LOCATION:NAME")
    if transport.name is None:
        return default
    return default.with_tag(transport.name)

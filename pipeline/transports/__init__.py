"""Transports side by side, each an `ImageSource` and/or `ImageDestination` of the one copy
engine (`pipeline/copy/engine.py`): `bucket` (the archive bucket), `names` (how `docker://`,
`docker-archive:` and `oci-archive:` are spelled). The name parser is re-exported here, where
callers have always imported it from."""

from pipeline.transports.names import (
    ArchiveTransport,
    RegistryTransport,
    Transport,
    archive_name,
    parse_transport,
)

__all__ = ["ArchiveTransport", "RegistryTransport", "Transport", "archive_name", "parse_transport"]

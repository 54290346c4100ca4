"""`bale copy`: one image from one transport to another, streamed end to end.

Registry → docker-archive/oci-archive writes the same dual-format tar `archive` writes, but
straight to its location (a local file, stdout, or an S3/OSS object via a streaming multipart
upload): no content-addressed area, no temporary files.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from pipeline.archive.tarplan import write_tar
from pipeline.archive.tarstream import TarStream, plan_resolved
from pipeline.image import ImageSource, resolve_image
from pipeline.oci import Platform
from pipeline.store.url import open_location
from pipeline.transfer.retry import RetryPolicy
from pipeline.transports import ArchiveTransport, archive_name


@dataclass(frozen=True)
class CopyResult:
    digest: str
    """Digest of the manifest the destination names (the tar's index.json root)."""
    size: int
    seconds: float
    destination: str


def copy_to_archive(
    source: ImageSource,
    dest: ArchiveTransport,
    *,
    platform: Platform | None = None,
    all_platforms: bool = False,
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
) -> CopyResult:
    """Stream `source` as a dual-format tar to `dest` (a path, `-`, s3:// or oss://)."""
    started = time.monotonic()
    resolved = resolve_image(
        source, platform=platform, all_platforms=all_platforms, store_all=all_platforms
    )
    plan = plan_resolved(
        resolved, all_platforms=all_platforms, name=archive_name(dest, source.reference)
    )
    if dest.is_stdio:
        out = sys.stdout.buffer
        write_tar(plan, out, source.open_blob, verify=False)
        out.flush()
    else:
        store, key = open_location(dest.location, endpoint_url=endpoint_url, retry=retry)
        stream = TarStream(plan, source.open_blob)
        try:
            store.put_stream(key, stream, plan.total_size)
        finally:
            stream.close()
    assert plan.root is not None
    return CopyResult(plan.root.digest, plan.total_size, time.monotonic() - started, str(dest))

"""The once-per-endpoint probe of what an S3 server does with bale's conditions
(pipeline/store/s3_probe.py), on moto_server and Ceph RGW, and the HEAD-checked if-absent
writes chosen where a condition is ignored."""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Callable

import pytest

from pipeline.store import s3_probe
from tests.bed.fixtures_store import StoreBed

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("kind", "conditional_complete", "checksum_validated"),
    [("s3", True, False), ("rgw", False, False)],  # neither checks x-amz-checksum-sha256,
)
def test_probe_measures_the_server_and_leaves_nothing(
    store_bed: Callable[..., StoreBed],
    fresh_probe: None,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    conditional_complete: bool,
    checksum_validated: bool,
) -> None:
    bed = store_bed(kind)
    caplog.set_level(logging.INFO, logger="bale.store")
    traits = s3_probe.traits_of(bed.store.client, bed.store.bucket, bed.store.prefix)
    assert traits.conditional_put is True
    assert traits.conditional_complete is conditional_complete
    assert traits.copy_part is True
    assert traits.checksum_validated is checksum_validated
    assert traits.checksum_accepted is True
    assert traits.md5_validated is (kind == "rgw")  # moto_server accepts a wrong Content-MD5
    assert traits.integrity == "signature"
    assert "uploads are guarded only by the payload hash" in caplog.text
    assert bed.names() == [] and bed.open_uploads() == []
    assert f"probed: {traits.describe()}" in caplog.text
    assert ("checked by HEAD" in caplog.text) is not conditional_complete
    # Once per endpoint: a second store on the same server asks nothing.
    assert s3_probe.traits_of(bed.store.client, "other-bucket", "") is traits


@pytest.mark.parametrize("kind", ["s3", "rgw"])
def test_checked_if_absent_writes_never_replace(
    store_bed: Callable[..., StoreBed], fresh_probe: None, kind: str
) -> None:
    """With no condition trusted (a server that ignores them all, or one that cannot be
    probed), if-absent PUTs and multipart completions still keep the existing object."""
    bed = store_bed(kind)
    s3_probe._known[str(bed.store.client.meta.endpoint_url)] = s3_probe.UNPROBED
    store = bed.store
    first, second = random.Random(1).randbytes(11 * MiB), random.Random(2).randbytes(11 * MiB)
    assert store.put("small", b"one", if_absent=True).written
    assert store.put("small", b"two", if_absent=True).written is False
    assert store.put_stream("big", io.BytesIO(first), len(first), if_absent=True).written
    assert store.put_stream("big", io.BytesIO(second), len(second), if_absent=True).written is False
    assert store.read("small") == b"one"
    assert store.read("big") == first
    assert bed.open_uploads() == []

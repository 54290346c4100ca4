"""The one manifest-graph walker and the one platform chooser (pipeline/oci.py)."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import ManifestError
from pipeline.oci import (
    DEFAULT_PLATFORM,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    RawManifest,
    choose_platform,
    walk_manifests,
)


def image(n: int) -> RawManifest:
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2}
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {**config, "digest": "sha256:" + f"{n:02x}" * 32},
        "layers": [],
    }
    return RawManifest.from_bytes(json.dumps(body).encode())


def index(*children: RawManifest) -> RawManifest:
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [c.descriptor().to_json() for c in children],
    }
    return RawManifest.from_bytes(json.dumps(body).encode())


def store(*raws: RawManifest) -> dict[str, RawManifest]:
    return {r.digest: r for r in raws}


def test_depth_first_in_index_order_each_once() -> None:
    a, b, c = image(1), image(2), image(3)
    inner = index(b, a)
    top = index(a, inner, c)
    held = store(a, b, c, inner)
    graph = walk_manifests([top], lambda d, _: held.get(d))
    assert [n.raw.digest for n in graph.nodes] == [
        top.digest,
        a.digest,
        inner.digest,
        b.digest,
        c.digest,
    ]
    assert [n.depth for n in graph.nodes] == [0, 1, 1, 2, 1]
    twice = walk_manifests([top], lambda d, _: held.get(d), once=False)
    assert [n.raw.digest for n in twice.nodes].count(a.digest) == 2


def test_missing_children_raise_skip_or_report() -> None:
    a, b = image(1), image(2)
    top = index(a, b)
    held = store(a)
    with pytest.raises(ManifestError, match=f"child manifest {b.digest} is missing"):
        walk_manifests([top], lambda d, _: held.get(d))
    skipped = walk_manifests([top], lambda d, _: held.get(d), missing="skip")
    assert [n.raw.digest for n in skipped.nodes] == [top.digest, a.digest]
    assert skipped.missing == []
    reported = walk_manifests([top], lambda d, _: held.get(d), missing="report")
    assert [(d, p) for d, _, p in reported.missing] == [(b.digest, top.digest)]


def test_depth_bound_raises_or_stops() -> None:
    level = index(image(1))
    chain = [level]
    for _ in range(3):
        chain.append(index(chain[-1]))
    held = store(*chain, image(1))
    top = chain[-1]  # depth 0; the image sits at depth 4
    assert len(walk_manifests([top], lambda d, _: held.get(d)).nodes) == 5
    with pytest.raises(ManifestError, match="nested too deep"):
        walk_manifests([top], lambda d, _: held.get(d), max_depth=3)
    stopped = walk_manifests([top], lambda d, _: held.get(d), max_depth=3, too_deep="skip")
    assert len(stopped.nodes) == 4


def test_roots_by_digest_are_fetched_together() -> None:
    a, b = image(1), image(2)
    held = store(a, b)
    calls: list[int] = []

    def batch(fn, items):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        return [fn(i) for i in items]

    graph = walk_manifests([a.digest, b.digest], lambda d, _: held.get(d), fetch_map=batch)
    assert [n.raw.digest for n in graph.nodes] == [a.digest, b.digest]
    assert calls == [2]


def test_one_chooser_ranks_wanted_then_preferred_then_position() -> None:
    amd, arm, arm7 = DEFAULT_PLATFORM, Platform("linux", "arm64"), Platform("linux", "arm", "v7")
    assert choose_platform([arm, amd], [amd]) == 1
    assert choose_platform([arm, arm7], [amd]) is None
    assert choose_platform([arm, arm7], [amd], fallback=True) == 0
    assert choose_platform([None, arm], [amd], fallback=True, unplatformed=True) == 1
    assert choose_platform([None, None], [amd], unplatformed=True, preferred=[False, True]) == 1
    assert choose_platform([arm7], [Platform("linux", "arm")]) == 0
    assert choose_platform([arm7], [Platform("linux", "arm")], exact_variant=True) is None

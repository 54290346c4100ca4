"""`bale serve`: a real registry notifies a real `bale serve` process, which archives.

The registry (distribution 2.8.2) is configured with `notifications.endpoints` pointing at the
service, with the shared secret in its `headers`; images are pushed with skopeo; the archive is
a local directory read back with `bale ls`/the records. Queues: the embedded SQLite file, and a
real redis-server for two replicas.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bed.fixtures_registry import ImageFactory, RegistryFactory
from tests.bed.images import LayerSpec
from tests.bed.registry import NotifyEndpoint, RegistryServer, free_port
from tests.bed.serve import SECRET, BaleServe

pytestmark = pytest.mark.integration


def notified_registry(make_registry: RegistryFactory, *ports: int) -> RegistryServer:
    """A registry that sends its events to `bale serve` on each of `ports`."""
    endpoints = tuple(
        NotifyEndpoint(
            f"http://127.0.0.1:{port}/events/distribution",
            headers={"Authorization": f"Bearer {SECRET}"},
            name=f"bale-{port}",
        )
        for port in ports
    )
    return make_registry(notify=endpoints)


def records(archive: Path) -> dict[str, dict]:
    """Image records in a local archive, by `repo/tag` path under images/."""
    out = {}
    for path in (archive / "images").rglob("*.json"):
        out[str(path.relative_to(archive / "images"))[: -len(".json")]] = json.loads(
            path.read_text()
        )
    return out


def archived_attempts(jobs: list[dict]) -> dict[str, int]:
    """Per job key, how many attempts archived it (wrote the tar and record)."""
    return {j["key"]: sum(a["outcome"] == "archived" for a in j["history"]) for j in jobs}


def test_pushes_with_duplicates_archive_each_image_once(
    tmp_path: Path, make_registry: RegistryFactory, image_factory: ImageFactory
) -> None:
    port = free_port()
    registry = notified_registry(make_registry, port)
    archive = tmp_path / "archive"
    serve = BaleServe(
        tmp_path / "serve", store=str(archive), allow=[registry.host], port=port
    ).start()
    try:
        images = [image_factory.image([LayerSpec(4096, seed=900 + n)]) for n in range(4)]
        for image in images:
            image_factory.push(image, "dedup/app:" + image.digest[7:15], registry)
        for image in images[:2]:  # the same pushes again: events for archived digests
            image_factory.push(image, "dedup/app:" + image.digest[7:15], registry)
        # And as generic events, while the first may still be running.
        for image in images:
            status, _ = serve.post(
                "/events/generic", {"image": f"{registry.host}/dedup/app:{image.digest[7:15]}"}
            )
            assert status == 202
        serve.wait_idle(4)
        jobs = serve.jobs()
        assert len(jobs) == 4, jobs
        assert all(j["state"] == "done" for j in jobs), jobs
        assert set(archived_attempts(jobs).values()) == {1}, jobs
        got = records(archive)
        for image in images:
            key = f"{registry.host.replace(':', '-')}/dedup/app/{image.digest[7:15]}"
            assert got[key]["digest"] == image.digest
    finally:
        serve.stop()

"""`bale ls`: every stored platform, and a repository or REPO:TAG filter, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bed.cli import run_bale
from tests.bed.images import ImageFactory, LayerSpec
from tests.bed.registry import RegistryServer

pytestmark = pytest.mark.integration


def _rows(stdout: str) -> dict[str, list[str]]:
    """The table's rows by image, split on runs of spaces (no cell holds two spaces)."""
    lines = stdout.splitlines()
    return {line.split()[0]: line.split() for line in lines[1:] if line.strip()}


def test_ls_shows_stored_platforms_and_filters(
    registry: RegistryServer, image_factory: ImageFactory, unique_repo: str, tmp_path: Path
) -> None:
    host = registry.host
    multi, app = f"{host}/{unique_repo}/multi:m", f"{host}/{unique_repo}/app"
    index = image_factory.index(("linux/amd64", "linux/arm64"), (LayerSpec(2000, seed=41),))
    image_factory.push(index, multi, registry)
    for tag in ("1.0", "2.0"):
        image_factory.build_and_push(f"{app}:{tag}", registry, layers=(LayerSpec(900, seed=42),))
    store = str(tmp_path / "store")
    done = run_bale("archive", multi, f"{app}:1.0", f"{app}:2.0", "--to", store,
                 "--src-tls-verify=false")  # fmt: skip
    assert done.returncode == 0, done.stderr

    # Without --platform the whole index is stored and linux/amd64 goes into the tar.
    listing = run_bale("ls", store)
    assert listing.returncode == 0, listing.stderr
    header = listing.stdout.splitlines()[0].split()
    assert header[:5] == ["IMAGE", "DIGEST", "PLATFORMS", "IN", "TAR"]
    rows = _rows(listing.stdout)
    assert sorted(rows) == sorted([multi, f"{app}:1.0", f"{app}:2.0"])
    assert rows[multi][2:4] == ["linux/amd64,linux/arm64", "linux/amd64"]
    assert rows[f"{app}:1.0"][2:4] == ["-", "-"]  # a lone manifest: no platform list

    # A repository, in full or as its trailing path, and one tag of it.
    assert sorted(_rows(run_bale("ls", store, app).stdout)) == [f"{app}:1.0", f"{app}:2.0"]
    trailing = app.split("/", 1)[1]
    assert sorted(_rows(run_bale("ls", store, trailing).stdout)) == [f"{app}:1.0", f"{app}:2.0"]
    assert sorted(_rows(run_bale("ls", store, f"{trailing}:2.0").stdout)) == [f"{app}:2.0"]
    records = json.loads(run_bale("ls", store, multi, "--json").stdout)
    assert [r["source"] for r in records] == [multi]
    assert records[0]["stored_platforms"] == ["linux/amd64", "linux/arm64"]
    assert records[0]["platforms"] == ["linux/amd64"]

    # No match: nothing listed, said on stderr; a pattern that is no reference: exit 2.
    none = run_bale("ls", store, f"{app}:9.9")
    assert none.returncode == 0 and none.stdout == "" and "no archived image" in none.stderr
    assert json.loads(run_bale("ls", store, f"{app}:9.9", "--json").stdout) == []
    bad = run_bale("ls", store, "Not A Ref")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

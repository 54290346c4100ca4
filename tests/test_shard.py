"""`--shard I/N`: parsing, the Kubernetes index default, and a stable, balanced partition."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest

from pipeline.batch.shard import in_shard, parse_shard, select, shard_of
from pipeline.batch.spec import SpecImage
from pipeline.errors import UsageError
from pipeline.refs import Reference


def refs(count: int) -> list[Reference]:
    return [
        Reference.parse(f"registry.example.com/team{i % 7}/app{i}:v{i % 13}") for i in range(count)
    ]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("2/8", {}, (2, 8)),
        ("0/1", {}, (0, 1)),
        (" 3 / 4 ", {}, (3, 4)),
        ("2/8", {"JOB_COMPLETION_INDEX": "5"}, (2, 8)),  # explicit wins
        ("8", {"JOB_COMPLETION_INDEX": "5"}, (5, 8)),
        ("/8", {"JOB_COMPLETION_INDEX": "0"}, (0, 8)),
    ],
)
def test_parse_shard(text: str, env: dict[str, str], expected: tuple[int, int]) -> None:
    assert parse_shard(text, env) == expected


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ("8", {}, "JOB_COMPLETION_INDEX is not set"),
        ("/8", {"JOB_COMPLETION_INDEX": ""}, "JOB_COMPLETION_INDEX is not set"),
        ("8/8", {}, "out of range 0..7"),
        ("8", {"JOB_COMPLETION_INDEX": "8"}, "out of range 0..7"),
        ("1/0", {}, "at least 1"),
        ("-1/4", {}, "whole number"),
        ("a/4", {}, "whole number"),
        ("1/x", {}, "whole number"),
        ("", {}, "whole number"),
        ("1/2/3", {}, "whole number"),
        ("٣/4", {}, "whole number"),
        ("4", {"JOB_COMPLETION_INDEX": "one"}, "whole number"),
    ],
)
def test_parse_shard_errors(text: str, env: dict[str, str], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_shard(text, env)


def test_env_default_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    assert parse_shard("4") == (3, 4)


@pytest.mark.parametrize("count", [1, 2, 3, 8, 16, 50])
def test_shards_partition_every_list_exactly_once(count: int) -> None:
    images = refs(2000)
    seen: collections.Counter[Reference] = collections.Counter()
    for index in range(count):
        part = select(images, index, count)
        assert part == [r for r in images if in_shard(r, index, count)]  # order kept
        seen.update(part)
    assert set(seen) == set(images) and set(seen.values()) == {1}


def test_shards_are_roughly_balanced() -> None:
    images = refs(8000)
    sizes = [len(select(images, i, 8)) for i in range(8)]
    assert sum(sizes) == 8000
    assert max(sizes) - min(sizes) < 200, sizes  # expected spread ~ 3 sigma = 3 * 30


def test_small_lists_split_across_many_shards() -> None:
    images = refs(20)
    assert sum(len(select(images, i, 2)) for i in range(2)) == 20
    assert all(len(select(images, i, 2)) >= 5 for i in range(2))


def test_hash_is_stable_across_processes_and_known() -> None:
    """sha256 of the normalised reference: fixed values, the same in a fresh interpreter."""
    ref = Reference.parse("nginx:1.17.6")
    assert str(ref) == "docker.io/library/nginx:1.17.6"
    here = [shard_of(ref, n) for n in (2, 3, 8, 1000)]
    code = (
        "from pipeline.refs import Reference; from pipeline.batch.shard import shard_of;"
        "r = Reference.parse('docker.io/library/nginx:1.17.6');"
        "print([shard_of(r, n) for n in (2, 3, 8, 1000)])"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert other == str(here)
    # int.from_bytes(sha256(b"docker.io/library/nginx:1.17.6").digest()[:8], "big") % n
    assert here == [1, 2, 5, 941]


def test_spellings_of_one_image_share_a_shard() -> None:
    a = Reference.parse("nginx")
    b = Reference.parse("docker://index.docker.io/library/nginx:latest")
    assert all(shard_of(a, n) == shard_of(b, n) for n in range(1, 40))


def test_select_takes_spec_images_and_refuses_strings() -> None:
    images = [SpecImage(r) for r in refs(30)]
    assert sum(len(select(images, i, 3)) for i in range(3)) == 30
    with pytest.raises(TypeError):
        select(["nginx:latest"], 0, 2)

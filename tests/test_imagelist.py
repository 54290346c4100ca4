"""`bale archive --from-file LIST`: one image per line, comments, stdin, file:line errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from pipeline.batch.imagelist import parse_image_list, read_image_list
from pipeline.errors import UsageError

LIST = """\
# images pushed by the partner in this pipeline run
nginx:1.17.6
docker://quay.io/coreos/etcd:v3.5.0   # pinned by the partner

  registry.example.com:5000/team/model@sha256:{hex}
docker.io/library/nginx:1.17.6
	# indented comment
"""


def test_parses_every_form_skips_comments_blanks_and_repeats() -> None:
    refs = parse_image_list(LIST.format(hex="ab" * 32), "images.txt")
    assert [str(r) for r in refs] == [
        "docker.io/library/nginx:1.17.6",
        "quay.io/coreos/etcd:v3.5.0",
        f"registry.example.com:5000/team/model@sha256:{'ab' * 32}",
    ]


def test_empty_list() -> None:
    assert parse_image_list("# nothing today\n\n") == []
    assert parse_image_list("") == []


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("nginx:1\nNginx:1\n", 2),
        ("nginx:1\n\n# c\nnginx:1 redis:2\n", 4),
        ("app@sha256:short\n", 1),
        ("host:5000/repo:bad:tag\n", 1),
    ],
)
def test_bad_line_names_file_and_line(text: str, line: int) -> None:
    with pytest.raises(UsageError) as info:
        parse_image_list(text, "images.txt")
    assert str(info.value).startswith(f"images.txt:{line}: invalid image reference")


def test_reads_files_and_stdin(tmp_path: Path) -> None:
    path = tmp_path / "list"
    path.write_text("alpine:3.20\r\nbusybox\r\n")  # CRLF from a Windows editor is fine
    assert [str(r) for r in read_image_list(path)] == [
        "docker.io/library/alpine:3.20",
        "docker.io/library/busybox:latest",
    ]
    refs = read_image_list("-", stdin=io.StringIO("redis:7\n"))
    assert [str(r) for r in refs] == ["docker.io/library/redis:7"]


def test_stdin_errors_say_stdin() -> None:
    with pytest.raises(UsageError, match=r"^<stdin>:1: "):
        read_image_list("-", stdin=io.StringIO("UPPER:1\n"))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read image list"):
        read_image_list(tmp_path / "missing")
    with pytest.raises(UsageError, match="cannot read image list"):
        read_image_list(tmp_path)  # a directory

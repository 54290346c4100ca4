import pytest

from pipeline.errors import InvalidReference
from pipeline.refs import Reference, parse_repository


@pytest.mark.parametrize(
    ("text", "registry", "repo", "tag", "digest"),
    [
        ("nginx:1.17.6", "docker.io", "library/nginx", "1.17.6", None),
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("docker://docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("index.docker.io/team/app:v1", "docker.io", "team/app", "v1", None),
        ("127.0.0.1:5000/team/app:1.0", "127.0.0.1:5000", "team/app", "1.0", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("quay.io/org/a/b@sha256:" + "a" * 64, "quay.io", "org/a/b", None, "sha256:" + "a" * 64),
        ("host:443/x:t@sha256:" + "b" * 64, "host:443", "x", "t", "sha256:" + "b" * 64),
    ],
)
def test_parse(text: str, registry: str, repo: str, tag: str | None, digest: str | None) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)


def test_store_repo() -> None:
    assert Reference.parse("nginx").store_repo == "docker.io/library/nginx"
    assert Reference.parse("127.0.0.1:5000/team/app").store_repo == "127.0.0.1-5000/team/app"
    assert str(Reference.parse("127.0.0.1:5000/a:b")) == "127.0.0.1:5000/a:b"


@pytest.mark.parametrize(
    "text",
    ["", "UPPER/case", "a/../b", "/abs", "nginx:", "nginx:bad tag", "x@sha256:123", "a//b", ".."],
)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidReference):
        Reference.parse(text)


def test_parse_repository_rejects_tag() -> None:
    assert parse_repository("docker://127.0.0.1:5000/a").tag is None
    with pytest.raises(InvalidReference):
        parse_repository("docker://127.0.0.1:5000/a:tag")


@pytest.mark.parametrize("tag", ["é", "v1\n", "a" * 129])
def test_tags_are_ascii_and_bounded(tag: str) -> None:
    from pipeline.refs import is_valid_tag

    assert not is_valid_tag(tag)

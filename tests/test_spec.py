"""Spec files: skopeo's `sync --src yaml` format, validation with line numbers, expansion."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.batch.spec import RegistrySpec, Spec, SpecImage, expand, load_spec, parse_spec
from pipeline.errors import NotFound, UsageError

REPO_ROOT = Path(__file__).resolve().parent.parent

# docs/skopeo-sync.1.md, "YAML file content (used source for --src yaml)", verbatim.
SKOPEO_DOC_SPEC = """\
registry.example.com:
    images:
        busybox: []
        redis:
            - "1.0"
            - "2.0"
            - "sha256:0000000000000000000000000000000011111111111111111111111111111111"
    images-by-tag-regex:
        nginx: ^1\\.13\\.[12]-alpine-perl$
    images-by-semver:
        alpine: ">= 3.12.0"
    credentials:
        username: john
        password: this is a secret
    tls-verify: true
    cert-dir: /home/john/certs
quay.io:
    tls-verify: false
    images:
        coreos/etcd:
            - latest
"""

TAGS = {
    "registry.example.com/busybox": ["1-glibc", "1-musl", "1-ubuntu", "latest"],
    "registry.example.com/nginx": [
        "1.13.0-alpine-perl",
        "1.13.1-alpine-perl",
        "1.13.2-alpine-perl",
        "1.13.2-alpine",
        "1.13.3-alpine-perl",
        "latest",
    ],
    "registry.example.com/alpine": [
        "3.11.6",
        "3.12.0",
        "3.12.1",
        "3.13",
        "4.0.0",
        "edge",
        "latest",
        "3.14.0-rc1",
    ],
}


class FakeLister:
    """Tag listing by table, counting calls; stands in for the registry client."""

    def __init__(self, tags: dict[str, list[str]]) -> None:
        self.tags = tags
        self.calls: list[tuple[str, str]] = []

    def __call__(self, registry: str, repository: str, spec: RegistrySpec) -> list[str]:
        self.calls.append((registry, repository))
        key = f"{registry}/{repository}"
        if key not in self.tags:
            raise NotFound(f"repository {key} not found", registry=registry, status=404)
        return self.tags[key]


def names(images: list[SpecImage]) -> list[str]:
    return [str(image.ref) for image in images]


def spec_of(text: str) -> Spec:
    return parse_spec(textwrap.dedent(text), "spec.yaml")


def usage_error(text: str) -> str:
    with pytest.raises(UsageError) as info:
        spec_of(text)
    return str(info.value)


# --- skopeo's documentation ----------------------------------------------------------------


def test_skopeo_documented_spec_expands_to_what_its_doc_says_is_copied() -> None:
    spec = parse_spec(SKOPEO_DOC_SPEC, "sync.yml")
    images = expand(spec, FakeLister(TAGS))
    digest = "sha256:0000000000000000000000000000000011111111111111111111111111111111"
    assert names(images) == [
        # "all images, as no tags are specified"
        "registry.example.com/busybox:1-glibc",
        "registry.example.com/busybox:1-musl",
        "registry.example.com/busybox:1-ubuntu",
        "registry.example.com/busybox:latest",
        # "images tagged "1.0" and "2.0" along with image with digest ..."
        "registry.example.com/redis:1.0",
        "registry.example.com/redis:2.0",
        f"registry.example.com/redis@{digest}",
        # "images tagged "1.13.1-alpine-perl" and "1.13.2-alpine-perl""
        "registry.example.com/nginx:1.13.1-alpine-perl",
        "registry.example.com/nginx:1.13.2-alpine-perl",
        # "all images with tags match the semantic version constraint ">= 3.12.0""
        "registry.example.com/alpine:3.12.0",
        "registry.example.com/alpine:3.12.1",
        "registry.example.com/alpine:3.13",
        "registry.example.com/alpine:4.0.0",
        # "images tagged "latest""
        "quay.io/coreos/etcd:latest",
    ]


def test_skopeo_documented_spec_options() -> None:
    spec = parse_spec(SKOPEO_DOC_SPEC, "sync.yml")
    example, quay = spec.registries
    assert (example.name, example.line, quay.name, quay.line) == (
        "registry.example.com",
        1,
        "quay.io",
        17,
    )
    assert example.credentials is not None
    assert example.credentials.username == "john"
    assert example.credentials.password == "this is a secret"
    assert (example.tls_verify, example.cert_dir) == (True, "/home/john/certs")
    assert (quay.credentials, quay.tls_verify, quay.cert_dir) == (None, False, None)
    images = expand(spec, FakeLister(TAGS))
    assert {
        (i.credentials, i.tls_verify, i.cert_dir) for i in images if i.ref.registry == "quay.io"
    } == {(None, False, None)}
    first = images[0]
    assert (first.credentials, first.tls_verify, first.cert_dir) == (
        example.credentials,
        True,
        "/home/john/certs",
    )


def test_design_spec_example_parses() -> None:
    spec = spec_of(
        """
        registry.example.com:
          images:
            busybox: []                # every tag
            redis: ["1.0", "2.0"]
          images-by-tag-regex:
            nginx: ^1\\.13\\.[12]-alpine-perl$
          images-by-semver:
            alpine: ">= 3.12.0"
          credentials: {username: john, password: secret}
          tls-verify: true
        """
    )
    kinds = [(s.kind, s.repository.repository) for s in spec.registries[0].selectors]
    assert kinds == [
        ("images", "busybox"),
        ("images", "redis"),
        ("images-by-tag-regex", "nginx"),
        ("images-by-semver", "alpine"),
    ]


def test_example_manifest_parses_and_expands() -> None:
    spec = load_spec(REPO_ROOT / "manifests" / "example.yaml")
    tags = {
        "docker.io/library/nginx": ["1.26.2", "1.27.0", "1.27.3", "1.27.3-alpine", "1.28.0"],
        "quay.io/prometheus/node-exporter": ["v1.7.0", "v1.8.0", "v1.8.2", "v1.8.2-rc.0"],
        "quay.io/prometheus/prometheus": ["v2.52.0", "v2.53.0", "v2.53.3", "v2.54.0"],
    }
    assert names(expand(spec, FakeLister(tags))) == [
        "docker.io/library/alpine:3.19",
        "docker.io/library/alpine:3.20",
        "docker.io/library/busybox:1.36",
        "docker.io/library/nginx:1.27.0",
        "docker.io/library/nginx:1.27.3",
        "quay.io/prometheus/node-exporter:v1.8.0",
        "quay.io/prometheus/node-exporter:v1.8.2",  # not v1.8.2-rc.0: the regex ends in $
        "quay.io/prometheus/prometheus:v2.53.0",
        "quay.io/prometheus/prometheus:v2.53.3",
    ]
    assert all(r.credentials is None for r in spec.registries)  # no secrets in the example


# --- what skopeo does, kept -------------------------------------------------------------------


def test_tags_are_the_scalar_text_as_yaml_v3_decodes_into_strings() -> None:
    spec = spec_of(
        """
        r.example.com:
          images:
            redis: [1.0, 2.10, 0x1F, 1e3, yes, '007']
        """
    )
    assert [ref.tag for ref in spec.registries[0].selectors[0].refs] == [
        "1.0",
        "2.10",
        "0x1F",
        "1e3",
        "yes",
        "007",
    ]


def test_repository_names_normalise_as_docker_does() -> None:
    spec = spec_of(
        """
        docker.io:
          images: {busybox: [latest], bitnami/redis: ["7"]}
        index.docker.io:
          images: {alpine: ["3.20"]}
        localhost:5000:
          images: {team/app: [v1]}
        registry.example.com/mirror:
          images: {nginx: [stable]}
        """
    )
    assert names(expand(spec, FakeLister({}))) == [
        "docker.io/library/busybox:latest",
        "docker.io/bitnami/redis:7",
        "docker.io/library/alpine:3.20",
        "localhost:5000/team/app:v1",
        "registry.example.com/mirror/nginx:stable",
    ]


def test_digest_entries_are_tried_first_as_digests() -> None:
    hex64 = "ab" * 32
    spec = spec_of(
        f"""
        r.example.com:
          images:
            app: ["sha256:{hex64}", "sha256"]
        """
    )
    first, second = spec.registries[0].selectors[0].refs
    assert (first.digest, first.tag) == (f"sha256:{hex64}", None)
    assert (second.digest, second.tag) == (None, "sha256")


def test_tag_regex_is_unanchored_go_re2() -> None:
    spec = spec_of(
        """
        r.example.com:
          images-by-tag-regex:
            a: alpine
            b: ^v[[:digit:]]+\\.\\pN+$
            c: (?i)RC
        """
    )
    tags = ["3.20-alpine", "alpine3", "v1.2", "v1.2.3", "1.0-rc1", "latest"]
    lister = FakeLister({f"r.example.com/{x}": tags for x in "abc"})
    assert names(expand(spec, lister)) == [
        "r.example.com/a:3.20-alpine",
        "r.example.com/a:alpine3",
        "r.example.com/b:v1.2",
        "r.example.com/c:1.0-rc1",
    ]


def test_empty_regex_matches_every_tag_as_in_go() -> None:
    spec = spec_of('r.example.com:\n  images-by-tag-regex: {a: ""}\n')
    assert len(expand(spec, FakeLister({"r.example.com/a": ["x", "y"]}))) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("false", False),
        ("yes", True),
        ("y", True),
        ("ON", True),
        ("off", False),
        ("No", False),
        ('"yes"', True),
        ("~", None),
        ("", None),
    ],
)
def test_tls_verify_spellings_yaml_v3_accepts(text: str, expected: bool | None) -> None:
    spec = spec_of(f"r.example.com:\n  tls-verify: {text}\n")
    assert spec.registries[0].tls_verify is expected


@pytest.mark.parametrize("text", ["'true'", "1", "tRUE", "maybe", "[true]"])
def test_tls_verify_spellings_yaml_v3_refuses(text: str) -> None:
    message = usage_error(f"r.example.com:\n  tls-verify: {text}\n")
    assert message.startswith("spec.yaml:2:") and "true or false" in message


def test_anchors_and_merge_keys_share_options() -> None:
    spec = spec_of(
        """
        a.example.com: &common
          credentials: {username: robot, password: pw}
          cert-dir: /certs
          images: {one: [v1]}
        b.example.com:
          <<: *common
          cert-dir: /other
          images: {two: [v2]}
        c.example.com: *common
        """
    )
    a, b, c = spec.registries
    assert b.credentials == a.credentials and b.cert_dir == "/other"
    assert [s.repository.repository for s in b.selectors] == ["two"]
    assert c.cert_dir == "/certs" and [s.repository.name for s in c.selectors] == [
        "c.example.com/one"
    ]


def test_empty_and_null_entries() -> None:
    assert spec_of("").registries == ()
    assert spec_of("# only a comment\n").registries == ()
    spec = spec_of(
        """
        r.example.com:
        s.example.com:
          images:
            busybox:
          credentials: {username: "", password: ""}
          cert-dir:
        """
    )
    r, s = spec.registries
    assert r.selectors == () and r.tls_verify is None
    assert s.selectors[0].lists_tags and s.credentials is None and s.cert_dir is None


def test_identity_token_and_secret_free_repr() -> None:
    spec = spec_of(
        """
        r.example.com:
          credentials: {username: "<token>", password: "", identitytoken: s3cret-token}
          images: {app: [v1]}
        """
    )
    creds = spec.registries[0].credentials
    assert creds is not None and creds.identity_token == "s3cret-token"
    shown = repr(spec) + repr(expand(spec, FakeLister({})))
    assert "s3cret-token" not in shown


# --- bale is stricter: everything a typo could be fails with file:line --------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("r.example.com:\n  images: {}\n  tls_verify: false\n", 3, "unknown key 'tls_verify'"),
        ("r.example.com:\n  Images: {a: []}\n", 2, "unknown key 'Images'"),
        ("r.example.com:\n  credentials:\n    user: x\n", 3, "unknown key 'user'"),
        ("- r.example.com\n", 1, "must be a mapping"),
        ("r.example.com: [images]\n", 1, "must be a mapping"),
        ("r.example.com:\n  images: [busybox]\n", 2, "must be a mapping"),
        ("r.example.com:\n  images:\n    busybox: latest\n", 3, "must be a list"),
        ("r.example.com:\n  images:\n    BusyBox: [latest]\n", 3, "invalid repository 'BusyBox'"),
        ("r.example.com:\n  images:\n    busybox:1: [latest]\n", 3, "invalid repository"),
        ("r.example.com:\n  images:\n    busybox: [latest, 'a b']\n", 3, "neither a valid tag"),
        ("r.example.com:\n  images:\n    busybox: [~]\n", 3, "must not be empty"),
        ("r.example.com:\n  images:\n    busybox: [[a]]\n", 3, "must be a string"),
        ("r.example.com:\n  images-by-tag-regex:\n    a: ~\n", 3, "must not be empty"),
        ("r.example.com:\n  images-by-tag-regex:\n    a: [x]\n", 3, "must be a string"),
        ("r.example.com:\n  images-by-tag-regex:\n    a: (?=x)\n", 3, "invalid regular expression"),
        (
            "r.example.com:\n  images-by-tag-regex:\n    a: (x)\\1\n",
            3,
            "invalid regular expression",
        ),
        ("r.example.com:\n  images-by-tag-regex:\n    a: '[a-'\n", 3, "invalid regular expression"),
        ("r.example.com:\n  images-by-tag-regex:\n    a: a\\Cb\n", 3, "\\C"),
        ("r.example.com:\n  images-by-semver:\n    a: latest\n", 3, "invalid semver constraint"),
        ("r.example.com:\n  images-by-semver:\n    a: '>= 1.0.0.1'\n", 3, "invalid semver"),
        ("r.example.com:\n  images-by-semver:\n    a: ''\n", 3, "invalid semver"),
        (
            "r.example.com:\n  images: {a: []}\nr.example.com:\n  images: {}\n",
            3,
            "already defined at line 1",
        ),
        ("r.example.com:\n  images: {a: []}\n  images: {b: []}\n", 3, "already defined at line 2"),
        ("r.example.com:\n  images: {a: [x]\n", 3, "invalid YAML"),
        ("r.example.com: {}\n---\nq.example.com: {}\n", 2, "invalid YAML"),
        ("docker://r.example.com:\n  images: {a: [x]}\n", 1, "invalid registry"),
    ],
)
def test_mistakes_name_file_and_line(text: str, line: int, fragment: str) -> None:
    message = usage_error(text)
    assert message.startswith(f"spec.yaml:{line}: "), message
    assert fragment in message, message
    assert "\n" not in message


def test_error_messages_never_show_the_password() -> None:
    message = usage_error(
        "r.example.com:\n  credentials: {username: u, password: hunter2}\n  tls-verify: maybe\n"
    )
    assert "hunter2" not in message


def test_load_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("r.example.com:\n  images-by-semver: {a: nope}\n")
    with pytest.raises(UsageError, match=rf"^{bad}:2: invalid semver constraint 'nope'"):
        load_spec(bad)


# --- expansion --------------------------------------------------------------------------------


def test_order_is_file_order_with_skopeo_kind_order_within_a_registry() -> None:
    spec = spec_of(
        """
        z.example.com:
          images-by-semver: {s: ">= 1"}
          images-by-tag-regex: {r: "^v"}
          images: {b: [two, one], a: [x]}
        a.example.com:
          images: {c: [y]}
        """
    )
    lister = FakeLister(
        {"z.example.com/s": ["1.0", "0.9", "2.0"], "z.example.com/r": ["v2", "x", "v1"]}
    )
    assert names(expand(spec, lister)) == [
        "z.example.com/b:two",
        "z.example.com/b:one",
        "z.example.com/a:x",
        "z.example.com/r:v2",
        "z.example.com/r:v1",
        "z.example.com/s:1.0",
        "z.example.com/s:2.0",
        "a.example.com/c:y",
    ]


def test_tags_are_listed_once_per_repository_and_images_kept_once() -> None:
    spec = spec_of(
        """
        r.example.com:
          images: {app: [], other: [v1, v1]}
          images-by-tag-regex: {app: "^v"}
          images-by-semver: {app: ">= 1"}
        q.example.com:
          images: {app: [v1]}
        """
    )
    lister = FakeLister({"r.example.com/app": ["v1", "1.5", "latest"]})
    assert names(expand(spec, lister)) == [
        "r.example.com/app:v1",
        "r.example.com/app:1.5",
        "r.example.com/app:latest",
        "r.example.com/other:v1",
        "q.example.com/app:v1",
    ]
    assert lister.calls == [("r.example.com", "app")]


def test_invalid_tags_from_the_registry_are_skipped() -> None:
    spec = spec_of("r.example.com:\n  images: {app: []}\n")
    lister = FakeLister({"r.example.com/app": ["ok", "-bad", "a" * 129, "also.ok"]})
    assert names(expand(spec, lister)) == ["r.example.com/app:ok", "r.example.com/app:also.ok"]


def test_listing_errors_propagate_or_go_to_on_error() -> None:
    spec = spec_of(
        """
        r.example.com:
          images: {gone: [], app: []}
          images-by-tag-regex: {gone2: "."}
        """
    )
    lister = FakeLister({"r.example.com/app": ["v1"]})
    with pytest.raises(NotFound):
        expand(spec, lister)
    failures: list[str] = []
    images = expand(
        spec,
        lister,
        on_error=lambda sel, reg, exc: failures.append(f"{reg.name} {sel.repository.name} {exc}"),
    )
    assert names(images) == ["r.example.com/app:v1"]
    assert failures == [
        "r.example.com r.example.com/gone repository r.example.com/gone not found",
        "r.example.com r.example.com/gone2 repository r.example.com/gone2 not found",
    ]


def test_lister_receives_the_registry_spec() -> None:
    spec = spec_of("r.example.com:\n  tls-verify: false\n  images: {app: []}\n")
    seen: list[bool | None] = []

    def lister(registry: str, repository: str, reg: RegistrySpec) -> list[str]:
        seen.append(reg.tls_verify)
        return ["v1"]

    expand(spec, lister)
    assert seen == [False]


def test_immutable_per_registry_or_per_repository() -> None:
    def immutable(text: str) -> dict[str, bool]:
        images = expand(spec_of(text), lambda *_: [])
        return {str(i.ref): i.immutable for i in images}

    assert immutable(
        """
        quay.io:
          images: {app: ["1"], lib: ["2"]}
          immutable: [app]
        ghcr.io:
          images: {tool: ["3"]}
          immutable: yes
        docker.io:
          images: {busybox: ["4"]}
        """
    ) == {
        "quay.io/app:1": True,
        "quay.io/lib:2": False,
        "ghcr.io/tool:3": True,
        "docker.io/library/busybox:4": False,
    }
    assert "quay.io immutable must be true or false" in usage_error(
        """
        quay.io:
          images: {app: ["1"]}
          immutable: sometimes
        """
    )
    assert "invalid repository" in usage_error(
        """
        quay.io:
          images: {app: ["1"]}
          immutable: ["Bad Name"]
        """
    )

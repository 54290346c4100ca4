"""`bale inspect` / `bale list-tags`: the same JSON as skopeo, and one-line errors.

The integration tests run bale and the real skopeo side by side on images the bed pushed to
registries in all three auth modes, and compare parsed JSON. The installed skopeo (Debian's
1.9) predates `LayersData` and `ArgsEscaped`; where its output lacks a key that current skopeo
prints, that key is checked against the manifest instead.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import AuthError, ManifestError
from pipeline.oci import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    OCI_INDEX,
    Descriptor,
    ImageIndex,
    Platform,
    RawManifest,
    sha256_digest,
)
from pipeline.ops.inspect import (
    GO_ZERO_TIME,
    choose_instance,
    go_time,
    inspect_source,
    oci_config,
    render_json,
    wanted_platforms,
)
from tests.bed.cli import isolated_env, run_bale
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec, Skopeo
from tests.bed.registry import RegistryServer

# ---- Go encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "printed"),
    [
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
        ("2024-01-01T00:00:00.000000000Z", "2024-01-01T00:00:00Z"),
        ("2024-01-01T00:00:00.5Z", "2024-01-01T00:00:00.5Z"),
        ("2024-01-01T00:00:00.123456789123Z", "2024-01-01T00:00:00.123456789Z"),
        ("2024-01-01T10:00:00+00:00", "2024-01-01T10:00:00Z"),
        ("2024-01-01T10:00:00.250-07:30", "2024-01-01T10:00:00.25-07:30"),
        ("2024-01-01t10:00:00z", "2024-01-01T10:00:00Z"),
    ],
)
def test_go_time(given: str, printed: str) -> None:
    assert go_time(given, "t") == printed


@pytest.mark.parametrize("bad", ["2024-01-01", "yesterday", 5, "2024-01-01T00:00:00"])
def test_go_time_rejects(bad: Any) -> None:
    with pytest.raises(ManifestError):
        go_time(bad, "config created")


def test_render_json_is_go_marshal_indent() -> None:
    value = {"Name": "a<b>&c\u2028", "Tags": [], "Labels": {}, "Env": None, "Size": 3, "é": "ü"}
    assert render_json(value) == (
        "{\n"
        '    "Name": "a\\u003cb\\u003e\\u0026c\\u2028",\n'
        '    "Tags": [],\n'
        '    "Labels": {},\n'
        '    "Env": null,\n'
        '    "Size": 3,\n'
        '    "é": "ü"\n'
        "}\n"
    )


# ---- platform choice ---------------------------------------------------------------------------


def test_wanted_platforms() -> None:
    assert [str(p) for p in wanted_platforms(Platform("linux", "amd64"))] == ["linux/amd64"]
    assert [str(p) for p in wanted_platforms(Platform("linux", "arm64"))] == [
        "linux/arm64",
        "linux/arm64/v8",
    ]
    assert [str(p) for p in wanted_platforms(Platform("linux", "arm", "v7"))] == [
        "linux/arm/v7",
        "linux/arm/v6",
        "linux/arm/v5",
        "linux/arm",
    ]
    assert [str(p) for p in wanted_platforms(Platform("windows", "amd64", "x"))] == [
        "windows/amd64/x",
        "windows/amd64",
    ]


def entry(n: int, platform: str | None, **annotations: str) -> Descriptor:
    return Descriptor(
        DOCKER_MANIFEST,
        f"sha256:{n:064x}",
        10,
        Platform.parse(platform) if platform else None,
        annotations=dict(annotations),
    )


def test_choose_from_docker_list_in_wanted_order() -> None:
    index = ImageIndex(DOCKER_LIST, (entry(1, "linux/arm64/v8"), entry(2, "linux/arm64")))
    assert choose_instance(index, Platform("linux", "arm64")).digest == entry(2, None).digest
    with pytest.raises(ManifestError, match="no image found in manifest list for architecture"):
        choose_instance(index, Platform("linux", "s390x"))


def test_choose_from_oci_index() -> None:
    unplatformed = entry(1, None)
    gzip = entry(2, "linux/amd64")
    zstd = entry(3, "linux/amd64", **{"io.github.containers.compression.zstd": "true"})
    assert choose_instance(ImageIndex(OCI_INDEX, (unplatformed, gzip, zstd))).digest == zstd.digest
    assert (
        choose_instance(ImageIndex(OCI_INDEX, (unplatformed, entry(4, "linux/arm64"))))
        == unplatformed
    )
    with pytest.raises(ManifestError, match="no image found in image index"):
        choose_instance(ImageIndex(OCI_INDEX, (entry(4, "linux/arm64"),)))


# ---- inspect from an in-memory source ----------------------------------------------------------


class MemorySource:
    """Manifests and blobs from dicts: the `ImageSource` shape, for the pure-logic cases."""

    def __init__(
        self, top: bytes, media_type: str | None = None, blobs: dict[str, bytes] | None = None
    ) -> None:
        self.top = RawManifest.from_bytes(top, media_type)
        self.blobs = blobs or {}

    def manifest(self, digest: str | None = None) -> RawManifest:
        assert digest is None
        return self.top

    def blob(self, descriptor: Descriptor) -> bytes:
        return self.blobs[descriptor.digest]


def image_source(
    config: dict[str, Any],
    *,
    media_type: str = DOCKER_MANIFEST,
    config_type: str = DOCKER_CONFIG,
    layers: list[dict[str, Any]] | None = None,
) -> MemorySource:
    config_bytes = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": layers if layers is not None else [],
    }
    return MemorySource(
        json.dumps(manifest).encode(), blobs={sha256_digest(config_bytes): config_bytes}
    )


def test_schema2_defaults_and_nulls() -> None:
    source = image_source({"architecture": "arm64", "os": "linux", "variant": "v8"})
    out = inspect_source(source, name="example.com/a", tags=lambda: ["x"])
    assert out == {
        "Name": "example.com/a",
        "Digest": source.top.digest,
        "RepoTags": ["x"],
        "Created": GO_ZERO_TIME,
        "DockerVersion": "",
        "Labels": None,
        "Architecture": "arm64",
        "Os": "linux",
        "Layers": [],
        "LayersData": [],
        "Env": None,
    }
    assert "Variant" not in out  # skopeo's output type has no Variant


def test_oci_fields_annotations_and_case_insensitive_keys() -> None:
    layers = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": "sha256:" + "a" * 64,
            "size": 5,
            "annotations": {},
        },
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
            "digest": "sha256:" + "b" * 64,
            "size": 6,
            "annotations": {"k": "v"},
        },
    ]
    config = {
        "Architecture": "amd64",
        "os": "linux",
        "config": {"labels": {"z": "1", "a": "2"}, "Env": []},
        "docker_version": "24.0",
    }
    source = image_source(
        config,
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_type="application/vnd.oci.image.config.v1+json",
        layers=layers,
    )
    out = inspect_source(source, name="", tags=None)
    assert "Name" not in out and out["RepoTags"] == []
    assert out["Created"] is None  # OCI: a pointer, absent means null
    assert (out["Architecture"], out["DockerVersion"], out["Env"]) == ("amd64", "24.0", [])
    assert list(out["Labels"]) == ["a", "z"]  # Go sorts map keys
    assert [d["Annotations"] for d in out["LayersData"]] == [{}, {"k": "v"}]
    assert out["Layers"] == ["sha256:" + "a" * 64, "sha256:" + "b" * 64]


def test_oci_artifact_is_not_an_image() -> None:
    source = image_source(
        {},
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_type="application/vnd.example+json",
    )
    with pytest.raises(ManifestError, match="not an image"):
        inspect_source(source, name="x")


def test_tags_refused_means_null_repo_tags() -> None:
    def refuse() -> list[str]:
        raise AuthError("denied")

    out = inspect_source(image_source({}), name="x", tags=refuse)
    assert out["RepoTags"] is None


def test_schema1() -> None:
    v1 = {
        "created": "2016-01-02T03:04:05.600Z",
        "docker_version": "1.9.1",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["A=1"], "Labels": None},
    }
    manifest = {
        "schemaVersion": 1,
        "name": "library/old",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": "sha256:" + "2" * 64}, {"blobSum": "sha256:" + "1" * 64}],
        "history": [{"v1Compatibility": json.dumps(v1)}, {"v1Compatibility": "{}"}],
        "signatures": [],
    }
    source = MemorySource(json.dumps(manifest).encode())
    assert source.top.media_type == DOCKER_SCHEMA1_SIGNED
    out = inspect_source(source, name="docker.io/library/old", tags=None)
    assert out["Tag"] == "v1" and list(out)[:3] == ["Name", "Tag", "Digest"]
    assert out["Created"] == "2016-01-02T03:04:05.6Z"
    assert out["Layers"] == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
    assert out["LayersData"][0] == {
        "MIMEType": "",
        "Digest": "sha256:" + "1" * 64,
        "Size": -1,
        "Annotations": None,
    }
    assert (out["Env"], out["Labels"], out["DockerVersion"]) == (["A=1"], None, "1.9.1")


def test_oci_config_round_trip() -> None:
    docker = {
        "architecture": "amd64",
        "os": "linux",
        "container_config": {"Hostname": "x"},
        "docker_version": "20",
        "created": "2024-05-06T07:08:09.100000Z",
        "config": {
            "Hostname": "h",
            "ExposedPorts": {"80/tcp": {}},
            "Env": [],
            "Cmd": ["sh"],
            "ArgsEscaped": True,
            "Labels": {},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "c" * 64]},
        "history": [{"created_by": "x", "empty_layer": False}],
    }
    assert oci_config(json.dumps(docker).encode()) == {
        "created": "2024-05-06T07:08:09.1Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"ExposedPorts": {"80/tcp": {}}, "Cmd": ["sh"], "ArgsEscaped": True},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "c" * 64]},
        "history": [{"created_by": "x"}],
    }
    bare = oci_config(b'{"config": {}, "rootfs": {}}')
    assert bare == {"architecture": "", "os": "", "rootfs": {"type": "", "diff_ids": None}}


# ---- against skopeo ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(
    image_factory: ImageFactory, registries: dict[str, RegistryServer]
) -> dict[tuple[str, str], BuiltImage]:
    """Four kinds of image in each registry, plus a second tag."""
    built = {
        "oci": image_factory.image(
            layers=[LayerSpec(3000, seed=51), LayerSpec(200_000, "zstd", seed=52)],
            labels={"org.example": "<&>"},
            created="2024-03-04T05:06:07.250Z",
        ),
        "docker": image_factory.image(layers=[LayerSpec(5000, seed=53)], format="docker", env=[]),
        "index": image_factory.index(
            ("linux/amd64", "linux/arm64", "linux/arm/v7"), [LayerSpec(2000, seed=54)]
        ),
        "list": image_factory.index(
            ("linux/arm64", "linux/amd64"), [LayerSpec(2100, seed=55)], format="docker"
        ),
    }
    out = {}
    for mode, server in registries.items():
        for kind, image in built.items():
            out[(mode, kind)] = image_factory.push(image, f"inspect/{kind}:1.0", server)
            image_factory.push(image, f"inspect/{kind}:latest", server)
    return out


@pytest.fixture(scope="module")
def bale_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """bale reads no credentials from the machine (skopeo is isolated the same way by the bed)."""
    return isolated_env(tmp_path_factory.mktemp("bale-env"))


def bale(env: dict[str, str], *args: str) -> bytes:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout_bytes


def creds(server: RegistryServer) -> list[str]:
    return [f"--creds={server.creds}"] if server.creds else []


MODES = ["none", "htpasswd", "token"]
KINDS = ["oci", "docker", "index", "list"]


@pytest.mark.integration
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_inspect_equals_skopeo(
    mode: str,
    kind: str,
    registries: dict[str, RegistryServer],
    pushed: dict[tuple[str, str], BuiltImage],
    skopeo: Skopeo,
    bale_env: dict[str, str],
) -> None:
    server = registries[mode]
    ref = f"docker://{server.host}/inspect/{kind}:1.0"
    args = ["--tls-verify=false", *creds(server)]

    ours = json.loads(bale(bale_env, "inspect", *args, ref))
    theirs = skopeo.inspect(ref, registry=server)
    if "LayersData" not in theirs:  # skopeo < 1.10: check ours against the manifest instead
        image = pushed[(mode, kind)]
        image = image.child("linux/amd64") if image.is_index else image
        assert ours.pop("LayersData") == [
            {"MIMEType": d.media_type, "Digest": d.digest, "Size": d.size, "Annotations": None}
            for d in image.layers
        ]
    assert ours == theirs
    assert list(ours) == list(theirs)  # same key order too

    raw = bale(bale_env, "inspect", "--raw", *args, ref)
    assert raw == skopeo.inspect(ref, registry=server, raw=True)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == theirs["Digest"]

    config = json.loads(bale(bale_env, "inspect", "--config", *args, ref))
    assert config == skopeo.inspect(ref, registry=server, config=True)
    raw_config = bale(bale_env, "inspect", "--raw", "--config", *args, ref)
    assert raw_config == skopeo.inspect(ref, registry=server, raw=True, config=True)


@pytest.mark.integration
def test_inspect_output_bytes_equal_skopeo(
    registries: dict[str, RegistryServer], pushed: Any, skopeo: Skopeo, bale_env: dict[str, str]
) -> None:
    """Byte for byte where the installed skopeo prints the same keys (config has no new ones)."""
    server = registries["none"]
    ref = f"docker://{server.host}/inspect/oci:1.0"
    ours = bale(bale_env, "inspect", "--config", "--tls-verify=false", ref)
    theirs = skopeo.run("inspect", "--config", "--tls-verify=false", ref).stdout
    assert ours == theirs
    info = json.loads(bale(bale_env, "inspect", "--tls-verify=false", ref))
    theirs = skopeo.run("inspect", "--tls-verify=false", ref).stdout
    if b'"LayersData"' not in theirs:
        del info["LayersData"]
    assert "\\u003c\\u0026\\u003e" in render_json(info)  # the label, HTML-escaped as Go does
    assert render_json(info).encode() == theirs


@pytest.mark.integration
@pytest.mark.parametrize(
    ("platform", "arch", "variant"), [("linux/arm64", "arm64", None), ("linux/arm/v7", "arm", "v7")]
)
def test_inspect_platform_matches_skopeo_override(
    platform: str,
    arch: str,
    variant: str | None,
    registries: dict[str, RegistryServer],
    pushed: Any,
    skopeo: Skopeo,
    bale_env: dict[str, str],
) -> None:
    server = registries["none"]
    ref = f"docker://{server.host}/inspect/index:1.0"
    ours = json.loads(bale(bale_env, "inspect", "--tls-verify=false", "--platform", platform, ref))
    ours.pop("LayersData", None)
    extra = ["--override-arch", arch] + (["--override-variant", variant] if variant else [])
    theirs = json.loads(skopeo.run(*extra, "inspect", "--tls-verify=false", ref).stdout)
    theirs.pop("LayersData", None)
    assert ours == theirs and ours["Architecture"] == arch


@pytest.mark.integration
@pytest.mark.parametrize("mode", MODES)
def test_list_tags_equals_skopeo(
    mode: str,
    registries: dict[str, RegistryServer],
    pushed: Any,
    skopeo: Skopeo,
    bale_env: dict[str, str],
) -> None:
    server = registries[mode]
    ref = f"docker://{server.host}/inspect/index"
    ours = bale(bale_env, "list-tags", "--tls-verify=false", *creds(server), ref)
    theirs = skopeo.run("list-tags", "--tls-verify=false", *creds(server), ref).stdout
    assert json.loads(ours) == json.loads(theirs)
    assert ours == theirs


# ---- bad input and failures: exit codes, one line, no secrets ----------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "docker://127.0.0.1:5000/UPPER/case:1",
        "docker://host/repo:bad tag",
        "oci:/tmp/layout",
        "nginx@sha256:123",
    ],
)
def test_malformed_reference_exits_2_with_one_line(ref: str, bale_env: dict[str, str]) -> None:
    proc = run_bale("inspect", ref, env=bale_env)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and ref in lines[0]
        and lines[0].startswith("bale: error: invalid image reference")
    )


def test_list_tags_refuses_a_tag(bale_env: dict[str, str]) -> None:
    proc = run_bale("list-tags", "docker://127.0.0.1:5000/a/b:1", env=bale_env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_failures_exit_1_with_one_line_and_no_secret(
    registries: dict[str, RegistryServer], pushed: Any, bale_env: dict[str, str]
) -> None:
    none, basic, token = registries["none"], registries["htpasswd"], registries["token"]
    wrong = "Wr0ng-Passw0rd-zz91"
    secrets = [wrong, basic.password or "", token.password or ""]
    runs: list[tuple[list[str], str]] = [
        (
            ["inspect", "--tls-verify=false", "docker://nosuchhost.invalid/a/b:1"],
            "nosuchhost.invalid/a/b:1: cannot resolve registry host",
        ),
        (
            ["inspect", "--tls-verify=false", f"docker://{none.host}/inspect/oci:missing"],
            f"{none.host}/inspect/oci:missing: manifest unknown (404)",
        ),
        (
            ["list-tags", "--tls-verify=false", f"docker://{none.host}/inspect/nothing"],
            f"{none.host}/inspect/nothing: repository name not known to registry (404)",
        ),
        (
            ["inspect", "--tls-verify=false", f"docker://{basic.host}/inspect/oci:1.0"],
            f"docker://{basic.host}/inspect/oci:1.0: {basic.host} requires credentials: "
            "give --creds USER:PASS",
        ),
        (
            [
                "inspect",
                "--tls-verify=false",
                f"--creds={basic.username}:{wrong}",
                f"docker://{basic.host}/inspect/oci:1.0",
            ],
            f"docker://{basic.host}/inspect/oci:1.0: the registry refused these credentials "
            f"for {basic.host}",
        ),
        (
            [
                "inspect",
                "--tls-verify=false",
                f"--creds={token.username}:{wrong}",
                f"docker://{token.host}/inspect/oci:1.0",
            ],
            f"docker://{token.host}/inspect/oci:1.0: the registry refused these credentials "
            f"for {token.host}",
        ),
        (
            ["inspect", f"--creds={basic.creds}", f"docker://{basic.host}/inspect/oci:1.0"],
            f"{basic.host}/inspect/oci:1.0: TLS error",
        ),
    ]
    outputs = []
    for args, expected in runs:
        proc = run_bale("-vv", *args, env=bale_env)
        outputs.append(proc.stdout + proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("bale: error:")]
        assert proc.returncode == 1, proc.stderr
        assert proc.stdout == ""
        assert len(errors) == 1 and errors[0].startswith(f"bale: error: {expected}"), proc.stderr
    # Successful runs with the right credentials, verbose: nothing secret there either.
    for server in (basic, token):
        proc = run_bale(
            "-vv",
            "inspect",
            "--tls-verify=false",
            f"--creds={server.creds}",
            f"docker://{server.host}/inspect/index:1.0",
            env=bale_env,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    everything = "\n".join(outputs)
    for secret in secrets:
        assert secret and secret not in everything


def test_help_lists_skopeo_flags(bale_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["inspect", "--help"], env=bale_env)
    for flag in (
        "--raw",
        "--config",
        "--tls-verify",
        "--creds",
        "--authfile",
        "--retry-times",
        "--platform",
    ):
        assert flag in result.output

"""Bad input through the real CLI: each case gets its exit code, one clear line, nothing partial.

The contract (DESIGN.md): exit 2 for a usage error or bad input, with nothing written; exit 1
when one or more images fail at run time (the rest done). "One clear line": a bale error is
exactly one `bale: error: ...` line on stderr; click's own option errors print a usage hint
and exactly one `Error: ...` line; an image that fails prints exactly one `failed ...` line.
No case may print a Python traceback.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.archive import layout
from pipeline.oci import MAX_MANIFEST_BYTES, OCI_MANIFEST
from tests.bed.cli import error_line, isolated_env, run_bale, show
from tests.bed.images import BuiltImage, ImageFactory, LayerSpec
from tests.bed.moto import MOTO_KEYS, MotoServer
from tests.bed.proxy import FaultProxy, Respond
from tests.bed.registry import RegistryServer
from tests.bed.store_view import local_keys

pytestmark = pytest.mark.integration


def failed_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one `failed` line of a run where one image failed at run time."""
    assert proc.returncode == 1, show(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, show(proc)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("failed ")]
    assert len(lines) == 1, show(proc)
    return lines[0]


def nothing_of_the_image(root: Path) -> None:
    """No tag, link, tar, record or temporary file: nothing anyone could mistake for it."""
    keys = local_keys(root)
    assert not [
        k
        for k in keys
        if k.startswith((layout.IMAGES_PREFIX, layout.REPOSITORIES_PREFIX, ".bale-tmp/"))
    ], keys


# ---- usage errors: no server needed, nothing written ---------------------------------------


@dataclass(frozen=True)
class Usage:
    id: str
    args: list[str]
    says: str
    """A substring of the error line."""
    files: dict[str, str] | None = None
    """Files to create in the test directory first (name -> text); `{dir}` in args is it."""


SPEC_BAD_YAML = "registry.example.com:\n  images:\n    busybox: [1.0\n  tls-verify: true\n"
SPEC_NOT_A_MAP = "- registry.example.com\n"
SPEC_UNKNOWN_KEY = "registry.example.com:\n  images:\n    busybox: []\n  colour: blue\n"
SPEC_BAD_REGEX = "registry.example.com:\n  images-by-tag-regex:\n    nginx: '^1\\.(13'\n"
SPEC_BAD_SEMVER = "registry.example.com:\n  images-by-semver:\n    alpine: '>= three'\n"
SPEC_BAD_TLS = "registry.example.com:\n  images:\n    busybox: []\n  tls-verify: sometimes\n"
SPEC_BAD_REPO = "registry.example.com:\n  images:\n    ../../etc: ['1']\n"

TO = ["--to", "{dir}/store"]

USAGE = [
    Usage("ref-not-a-ref", ["archive", "Not A Ref", *TO], "invalid image reference"),
    Usage("ref-upper-case", ["archive", "docker://h.io/Team/App:1", *TO], "lower-case"),
    Usage("ref-bad-tag", ["archive", "nginx:bad tag!", *TO], "invalid"),
    Usage("ref-short-digest", ["archive", "nginx@sha256:abc", *TO], "digest"),
    Usage("ref-dotdot", ["archive", "docker://h.io/../../etc:1", *TO], "invalid"),
    Usage("ref-empty", ["archive", "docker://", *TO], "invalid"),
    Usage("ref-newline-tag", ["archive", "nginx:1\n", *TO], "invalid"),
    Usage("no-images", ["archive", *TO], "no images given"),
    Usage("url-no-bucket", ["archive", "nginx:1", "--to", "s3://"], "has no bucket"),
    Usage("url-oss-no-bucket", ["archive", "nginx:1", "--to", "oss://"], "has no bucket"),
    Usage("url-scheme", ["archive", "nginx:1", "--to", "ftp://a/b"], "unsupported store URL"),
    Usage("option-jobs", ["archive", "nginx:1", *TO, "--jobs", "0"], "--jobs"),
    Usage("option-rate", ["archive", "nginx:1", *TO, "--limit-rate", "fast"], "invalid size"),
    Usage("option-retries", ["archive", "nginx:1", *TO, "--retries", "-1"], "--retries"),
    Usage("option-platform", ["archive", "nginx:1", *TO, "--platform", "linux"], "platform"),
    Usage("option-creds", ["archive", "nginx:1", *TO, "--src-creds", "nocolon"], "USER:PASS"),
    Usage("option-tls", ["archive", "nginx:1", *TO, "--src-tls-verify=maybe"], "boolean"),
    Usage("gc-duration", ["gc", "{dir}/store", "--older-than", "5x"], "invalid duration"),
    Usage(
        "from-file-bad-line",
        ["archive", "--from-file", "{dir}/list.txt", *TO],
        "list.txt:3",
        {"list.txt": "# images\nnginx:1\nNot A Ref\n"},
    ),
    Usage("from-file-missing", ["archive", "--from-file", "{dir}/nope.txt", *TO], "nope.txt"),
    Usage("spec-missing", ["run", "{dir}/nope.yaml", *TO], "nope.yaml"),
    Usage("spec-bad-yaml", ["run", "{dir}/s.yaml", *TO], "s.yaml:", {"s.yaml": SPEC_BAD_YAML}),
    Usage("spec-not-a-map", ["run", "{dir}/s.yaml", *TO], "s.yaml", {"s.yaml": SPEC_NOT_A_MAP}),
    Usage("spec-unknown-key", ["run", "{dir}/s.yaml", *TO], "colour", {"s.yaml": SPEC_UNKNOWN_KEY}),
    Usage("spec-bad-regex", ["run", "{dir}/s.yaml", *TO], "s.yaml:3", {"s.yaml": SPEC_BAD_REGEX}),
    Usage("spec-bad-semver", ["run", "{dir}/s.yaml", *TO], "s.yaml:3", {"s.yaml": SPEC_BAD_SEMVER}),
    Usage("spec-bad-tls", ["run", "{dir}/s.yaml", *TO], "tls-verify", {"s.yaml": SPEC_BAD_TLS}),
    Usage("spec-repo-dotdot", ["run", "{dir}/s.yaml", *TO], "s.yaml", {"s.yaml": SPEC_BAD_REPO}),
    Usage("copy-transport", ["copy", "foo:bar", "docker-archive:{dir}/x.tar"], "transport"),
    Usage("copy-no-location", ["copy", "docker-archive:", "docker://h.io/a:1"], "location"),
    Usage("inspect-bad-ref", ["inspect", "docker://h.io/A:1"], "invalid image reference"),
    Usage("verify-bad-ref", ["verify", "{dir}/store", "Not A Ref"], "invalid image reference"),
    Usage("restore-bad-dest", ["restore", "h.io/a:1", "docker://", "--from", "{dir}/s"], "invalid"),
]


@pytest.mark.parametrize("case", USAGE, ids=[c.id for c in USAGE])
def test_usage_errors_exit_2_with_one_line_and_write_nothing(case: Usage, tmp_path: Path) -> None:
    for name, text in (case.files or {}).items():
        (tmp_path / name).write_text(text)
    before = {p.name for p in tmp_path.iterdir()}
    args = [a.replace("{dir}", str(tmp_path)) for a in case.args]
    proc = run_bale(*args, env=isolated_env(tmp_path, **MOTO_KEYS))
    assert proc.returncode == 2, show(proc)
    assert case.says in error_line(proc), show(proc)
    assert {p.name for p in tmp_path.iterdir()} == before | {"cli-home"}  # nothing written
    assert proc.stdout == "", show(proc)


def test_spec_yaml_is_loaded_safely(tmp_path: Path) -> None:
    """A Python tag in a spec is never constructed: the command it names does not run."""
    marker = tmp_path / "pwned"
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "127.0.0.1:1:\n  images:\n"
        f"    x: !!python/object/apply:os.system ['touch {marker}']\n"
        "  tls-verify: false\n"
    )
    proc = run_bale(
        "run", str(spec), "--to", str(tmp_path / "store"), env=isolated_env(tmp_path, **MOTO_KEYS)
    )
    assert proc.returncode in (1, 2), show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert not marker.exists()


# ---- runtime failures of one image: exit 1, one line, nothing of it stored ------------------


@dataclass(frozen=True)
class Image:
    built: BuiltImage
    repo: str


@pytest.fixture(scope="module")
def image(registry: RegistryServer, image_factory: ImageFactory) -> Image:
    built = image_factory.image(layers=(LayerSpec(5000, seed=7601),))
    image_factory.push(built, f"{registry.host}/bad/app:1", registry)
    return Image(built, "bad/app")


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p


def archive(ref: str, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path / "store"
    proc = run_bale(
        "archive",
        ref,
        "--to",
        str(root),
        "--src-tls-verify=false",
        *extra,
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    return proc, root


def test_missing_tag(registry: RegistryServer, image: Image, tmp_path: Path) -> None:
    proc, root = archive(f"docker://{registry.host}/{image.repo}:nope", tmp_path)
    line = failed_line(proc)
    assert f"{image.repo}:nope" in line and "404" in line, line
    nothing_of_the_image(root)


def test_missing_repository(registry: RegistryServer, tmp_path: Path) -> None:
    proc, root = archive(f"docker://{registry.host}/bad/never-pushed:1", tmp_path)
    line = failed_line(proc)
    assert "never-pushed" in line and "404" in line, line
    nothing_of_the_image(root)


def test_one_missing_tag_does_not_stop_the_others(
    registry: RegistryServer, image: Image, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    proc = run_bale(
        "archive",
        f"docker://{registry.host}/{image.repo}:nope",
        f"docker://{registry.host}/{image.repo}:1",
        "--to",
        str(root),
        "--src-tls-verify=false",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    assert "nope" in failed_line(proc)
    assert proc.stdout.count("archived ") == 1, show(proc)
    assert not [k for k in local_keys(root) if "nope" in k]


def test_spec_with_a_missing_tag_fails_that_image_only(
    registry: RegistryServer, image: Image, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"{registry.host}:\n  images:\n    {image.repo}: ['1', 'nope']\n  tls-verify: false\n"
    )
    root = tmp_path / "store"
    proc = run_bale("run", str(spec), "--to", str(root), env=isolated_env(tmp_path, **MOTO_KEYS))
    assert "nope" in failed_line(proc)
    assert not [k for k in local_keys(root) if "nope" in k]


def test_manifest_over_4_mib(proxy: FaultProxy, image: Image, tmp_path: Path) -> None:
    """The registry answers with a manifest one byte over the cap: refused without reading it
    all, one line, nothing stored."""
    body = b'{"schemaVersion":2,"pad":"' + b"x" * MAX_MANIFEST_BYTES + b'"}'
    proxy.add(
        Respond(
            method="GET",
            path="/manifests/",
            status=200,
            headers={"Content-Type": OCI_MANIFEST},
            body=body,
            times=None,
        )
    )
    proc, root = archive(f"docker://{proxy.host}/{image.repo}:1", tmp_path)
    line = failed_line(proc)
    assert f"over the {MAX_MANIFEST_BYTES} byte limit" in line, line
    nothing_of_the_image(root)
    assert not local_keys(root)


def test_manifest_digest_mismatch(
    proxy: FaultProxy, image: Image, image_factory: ImageFactory, tmp_path: Path
) -> None:
    """Pinned by digest, the registry serves another (valid) manifest: refused by digest."""
    other = image_factory.image(layers=(LayerSpec(5000, seed=7602),))
    proxy.add(
        Respond(
            method="GET",
            path="/manifests/sha256:",
            status=200,
            headers={"Content-Type": OCI_MANIFEST},
            body=other.manifest,
            times=None,
        )
    )
    pinned = f"docker://{proxy.host}/{image.repo}@{image.built.digest}"
    proc, root = archive(pinned, tmp_path)
    line = failed_line(proc)
    assert f"expected {image.built.digest}, got {other.digest}" in line, line
    nothing_of_the_image(root)
    assert not local_keys(root)
    assert not proxy.find("GET", "/blobs/")  # nothing it names was even fetched


def test_manifest_that_is_not_json(proxy: FaultProxy, image: Image, tmp_path: Path) -> None:
    proxy.add(
        Respond(
            method="GET",
            path="/manifests/",
            status=200,
            headers={"Content-Type": OCI_MANIFEST},
            body=b"<html>gateway</html>",
            times=None,
        )
    )
    proc, root = archive(f"docker://{proxy.host}/{image.repo}:1", tmp_path)
    assert f"{image.repo}:1" in failed_line(proc)
    assert not local_keys(root)


# ---- stores that cannot be written ---------------------------------------------------------


def test_store_under_a_file(registry: RegistryServer, image: Image, tmp_path: Path) -> None:
    """A store path whose parent is a file (root ignores permissions, so this is the local
    store that cannot be written): found before the image, one line, nothing written."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    root = blocker / "store"
    proc = run_bale(
        "archive",
        f"docker://{registry.host}/{image.repo}:1",
        "--to",
        str(root),
        "--src-tls-verify=false",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    assert proc.returncode == 2, show(proc)
    line = error_line(proc)
    assert "a file is in the way" in line, line
    assert blocker.read_text() == "not a directory"


def test_s3_bucket_that_does_not_exist(
    registry: RegistryServer, image: Image, moto_server: MotoServer, tmp_path: Path
) -> None:
    proc = run_bale(
        "archive",
        f"docker://{registry.host}/{image.repo}:1",
        "--to",
        "s3://no-such-bucket-7/arch",
        "--endpoint-url",
        moto_server.endpoint_url,
        "--src-tls-verify=false",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    assert proc.returncode == 2, show(proc)
    assert "bucket no-such-bucket-7 does not exist" in error_line(proc)
    names = {b["Name"] for b in moto_server.client().list_buckets()["Buckets"]}
    assert "no-such-bucket-7" not in names  # not created behind the user's back
    for command in ("verify", "gc", "ls"):
        proc = run_bale(
            command,
            "s3://no-such-bucket-7/arch",
            "--endpoint-url",
            moto_server.endpoint_url,
            env=isolated_env(tmp_path, **MOTO_KEYS),
        )
        assert proc.returncode == 2, show(proc)
        assert "bucket no-such-bucket-7 does not exist" in error_line(proc)


def test_oss_bucket_without_permission(
    registry: RegistryServer, image: Image, oss_server: Any, tmp_path: Path
) -> None:
    """The OSS server answers 403 AccessDenied to everything in this bucket."""
    from tests.bed.fixtures_store import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_REGION

    bucket = oss_server.create_bucket()
    oss_server.deny(bucket)
    env = isolated_env(
        tmp_path,
        **MOTO_KEYS,
        OSS_ENDPOINT=oss_server.endpoint,
        OSS_ACCESS_KEY_ID=OSS_ACCESS_KEY_ID,
        OSS_ACCESS_KEY_SECRET=OSS_ACCESS_KEY_SECRET,
        OSS_REGION=OSS_REGION,
    )
    url = f"oss://{bucket}/arch"
    proc = run_bale(
        "archive",
        f"docker://{registry.host}/{image.repo}:1",
        "--to",
        url,
        "--src-tls-verify=false",
        env=env,
    )
    assert proc.returncode == 2, show(proc)
    line = error_line(proc)
    assert bucket in line and "denied" in line.lower(), line
    assert "retrying" not in proc.stderr, show(proc)  # a 403 is not worth another try
    assert oss_server.objects(bucket) == {} and oss_server.uploads(bucket) == []
    for command in ("verify", "gc", "ls"):
        proc = run_bale(command, url, env=env)
        assert proc.returncode == 2, show(proc)
        assert "denied" in error_line(proc).lower(), show(proc)
    oss_server.drop_bucket(bucket)


def test_verify_of_a_store_that_is_not_there(tmp_path: Path) -> None:
    proc = run_bale("verify", str(tmp_path / "typo"), env=isolated_env(tmp_path, **MOTO_KEYS))
    assert proc.returncode != 0, show(proc)
    assert "typo" in error_line(proc)


# ---- bad tars given to copy docker-archive: ------------------------------------------------


def rewrite_tar(
    src: Path, dst: Path, *, drop: str | None = None, add: dict[str, bytes] | None = None
) -> None:
    """Copy a tar member by member, leaving out names ending in `drop` and adding `add`."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for member in tin.getmembers():
            if drop is not None and member.name.endswith(drop):
                continue
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
        for name, data in (add or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def good_tar(
    registry: RegistryServer, image: Image, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Any]:
    """The image as a docker-archive written by bale itself (copy docker:// -> docker-archive:)."""
    where = tmp_path_factory.mktemp("tars")
    tar = where / "good.tar"
    proc = run_bale(
        "copy",
        f"docker://{registry.host}/{image.repo}:1",
        f"docker-archive:{tar}",
        "--src-tls-verify=false",
        env=isolated_env(where, **MOTO_KEYS),
    )
    assert proc.returncode == 0, show(proc)
    with tarfile.open(tar) as t:
        manifest = json.loads(t.extractfile("manifest.json").read())  # type: ignore[union-attr]
    return tar, manifest


@pytest.mark.parametrize(
    "flaw", ["dotdot-entry", "absolute-entry", "missing-layer", "missing-config"]
)
def test_copy_refuses_a_bad_tar_and_pushes_nothing(
    flaw: str,
    good_tar: tuple[Path, Any],
    registry: RegistryServer,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    tar, manifest = good_tar
    bad = tmp_path / "bad.tar"
    (entry,) = manifest
    if flaw == "dotdot-entry":
        rewrite_tar(tar, bad, add={"blobs/../../escape": b"x"})
        says = "escapes the archive"
    elif flaw == "absolute-entry":
        rewrite_tar(tar, bad, add={"/etc/bale-test": b"x"})
        says = "absolute path"
    elif flaw == "missing-layer":
        rewrite_tar(tar, bad, drop=entry["Layers"][0])
        says = "missing"
    else:
        rewrite_tar(tar, bad, drop=entry["Config"])
        says = "missing"
    since = registry.mark()
    proc = run_bale(
        "copy",
        f"docker-archive:{bad}",
        f"docker://{registry.host}/{unique_repo}:1",
        "--dest-tls-verify=false",
        env=isolated_env(tmp_path, **MOTO_KEYS),
    )
    assert proc.returncode == 2, show(proc)
    assert says in error_line(proc), show(proc)
    assert registry.count("POST", since=since) == 0  # no upload even started
    assert registry.count("PUT", since=since) == 0
    assert not (tmp_path / "escape").exists() and not Path("/etc/bale-test").exists()

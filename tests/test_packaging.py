"""bale as users install it: a wheel built from the checkout, and the image of the Containerfile;
and the README's command table against the CLI's commands.

The wheel and the image are slow (they fetch bale's dependencies from the package index). The image is built from
a base made here, because no base image can be pulled in CI: debootstrap writes a minimal
Debian bookworm with python3, and `podman import` turns it into the BASE the Containerfile
builds on (the same Debian a `debian:bookworm-slim` base gives, with python3 preinstalled).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import __version__
from pipeline.archive import layout
from pipeline.cli import main
from pipeline.refs import Reference
from tests.bed.images import LayerSpec

ROOT = Path(__file__).resolve().parent.parent
# What the Containerfile copies into its build stage: a wheel must build from these alone.
SOURCES = ("pyproject.toml", "README.md", "LICENSE")
DEBIAN_MIRROR = os.environ.get("BALE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _run(*args: str | Path, timeout: float = 900, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw
    )
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    return proc


def _source_copy(dest: Path) -> Path:
    """The checkout's package sources alone (no .venv, no build/ or egg-info left in ROOT)."""
    dest.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH or active venv: the installed bale must not find the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return env


def test_readme_table_names_every_command_and_no_other() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n## Commands\n", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^\| `bale ([a-z-]+)", table, re.M)
    assert sorted(listed) == sorted(main.commands)
    assert "DESIGN" not in readme  # not in this repository


@pytest.fixture
def pushed_image(registry, image_factory, unique_repo) -> Reference:
    image = image_factory.image([LayerSpec(3000, seed=1301), LayerSpec(5000, seed=1302)])
    image_factory.push(image, f"{unique_repo}:1.0", registry)
    return Reference.parse(f"{registry.host}/{unique_repo}:1.0")


@pytest.mark.slow
@pytest.mark.integration
def test_wheel_installs_into_a_fresh_venv_and_archives(tmp_path: Path, pushed_image) -> None:
    src = _source_copy(tmp_path / "src")
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", src)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"bale-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(f"bale-{__version__}.dist-info/METADATA").decode()
    assert "pipeline/cli/__init__.py" in names
    assert "pipeline/serve/templates/index.html" in names  # the catalog's pages: package data
    assert not [n for n in names if n.startswith("tests/")]
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert "Apache-2.0" in metadata

    venv = tmp_path / "venv"
    env = _clean_env()
    _run(sys.executable, "-m", "venv", venv, env=env)
    _run(venv / "bin" / "pip", "install", "--quiet", wheel, env=env, cwd=tmp_path)
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import pipeline; print(pipeline.__file__)",
        env=env,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(venv)), where.stdout

    version = _run(venv / "bin" / "bale", "--version", env=env, cwd=tmp_path)
    assert version.stdout.strip() == f"bale, version {__version__}"

    archive = tmp_path / "archive"
    done = _run(
        venv / "bin" / "bale",
        "archive",
        f"docker://{pushed_image}",
        "--to",
        archive,
        "--src-tls-verify=false",
        env=env,
        cwd=tmp_path,
    )
    assert str(pushed_image) in done.stdout + done.stderr
    assert (archive / layout.tar_key_for(pushed_image)).stat().st_size > 8000


# ---- the image -----------------------------------------------------------------------------
# Built and run with chroot isolation: no OCI runtime or cgroup set-up is needed, so this runs
# on CI machines (and in containers) where `podman run` cannot start a container.


class Containers:
    """podman and buildah on one throwaway vfs store (the runroot must stay under 50 characters)."""

    def __init__(self, root: Path) -> None:
        self.runroot = tempfile.mkdtemp(prefix="bale-img-")
        self.store = ["--storage-driver", "vfs", "--root", str(root), "--runroot", self.runroot]

    def podman(self, *args: str | Path, timeout: float = 900) -> str:
        return _run("podman", *self.store, *args, timeout=timeout).stdout

    def buildah(self, *args: str | Path, timeout: float = 900) -> str:
        return _run("buildah", *self.store, *args, timeout=timeout).stdout

    def close(self) -> None:
        subprocess.run(["buildah", *self.store, "rm", "--all"], capture_output=True, timeout=300)
        subprocess.run(["podman", *self.store, "rmi", "-a", "-f"], capture_output=True, timeout=300)
        shutil.rmtree(self.runroot, ignore_errors=True)


def _image_tools_missing() -> str | None:
    if os.geteuid() != 0:
        return "building the image's base with debootstrap needs root"
    missing = [t for t in ("podman", "buildah", "debootstrap", "make") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (make deps installs them)"
    return None


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[Containers]:
    reason = _image_tools_missing()
    if reason:
        pytest.skip(f"cannot build the bale image here: {reason}")
    c = Containers(tmp_path / "storage")
    yield c
    c.close()


def _local_base(containers: Containers, work: Path) -> str:
    """A Debian bookworm base image made here: debootstrap, tar, `podman import`."""
    rootfs = work / "rootfs"
    _run(
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates",
        "bookworm",
        rootfs,
        DEBIAN_MIRROR,
        timeout=1800,
    )
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    tar = work / "rootfs.tar"
    _run("tar", "-C", rootfs, "--numeric-owner", "-cf", tar, ".")
    shutil.rmtree(rootfs)
    name = "localhost/bale-test-base:bookworm"
    containers.podman("import", tar, name)
    tar.unlink()
    return name


def _ca_bundle() -> str:
    """The CA bundle this machine's pip trusts, for pip in the build (a proxy may intercept)."""
    for path in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE")):
        if path and Path(path).is_file():
            return path
    return ""


@pytest.mark.slow
@pytest.mark.integration
def test_image_builds_from_a_local_base_and_runs_bale(
    tmp_path: Path, containers: Containers, pushed_image
) -> None:
    base = _local_base(containers, tmp_path)
    image = "localhost/bale:test"
    _run(
        "make",
        "--no-print-directory",
        "-C",
        ROOT,
        "image",
        f"CONTAINER=podman {' '.join(containers.store)}",
        f"BASE={base}",
        f"IMAGE={image}",
        "IMAGE_BUILD_FLAGS=--network=host --isolation=chroot",
        f"CA_BUNDLE={_ca_bundle()}",
        timeout=3600,
    )
    config = containers.podman(
        "image", "inspect", "--format", "{{json .Config.Entrypoint}} {{.Config.User}}", image
    )
    # The k8s examples run as uid 65532 (runAsNonRoot); the image's user is that one.
    assert config.split() == ['["bale"]', "65532:65532"]

    box = containers.buildah("from", image).strip()

    def run(*cmd: str) -> str:
        return containers.buildah("run", "--isolation=chroot", box, "--", *cmd)

    help_text = run("bale", "--help")
    for command in ("archive", "restore", "copy", "sync", "verify", "gc"):
        assert f"  {command} " in help_text
    assert run("bale", "--version").strip() == f"bale, version {__version__}"
    # Not root, no compiler, and crcmod's C extension (compiled in the first stage) is there.
    checks = (
        "id -u; id -g; command -v gcc cc pip || echo none; python3 -c 'import crcmod._crcfunext'"
    )
    assert run("sh", "-c", checks).split() == ["65532", "65532", "none"]
    # One real archive from the test registry, inside the image.
    out = run(
        "bale",
        "archive",
        f"docker://{pushed_image}",
        "--to",
        "/home/bale/archive",
        "--src-tls-verify=false",
    )
    assert str(pushed_image) in out
    listed = run("bale", "ls", "/home/bale/archive")
    assert pushed_image.store_repo in listed

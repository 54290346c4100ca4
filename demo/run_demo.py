"""`make demo`: bale end to end on this machine, offline, in about ten seconds.

1. starts a throwaway docker-registry on 127.0.0.1:5000 (a free port if that one is taken),
2. builds small images locally that share a base layer and pushes them with skopeo,
3. `bale run manifests/demo.yaml --to ./demo-archive` (the spec picks three of the four tags),
4. `bale ls ./demo-archive`,
5. `bale restore` one image under a new name and compares digests with `skopeo inspect`,
6. says where everything is, stops the registry and deletes its data.

Run it again and the images already archived are skipped. Everything lives under the current
directory (or `$DEMO_DIR`): `demo-archive/` is the archive, `.demo/` the demo's scratch space
(registry data, skopeo's config, the run report), wiped at every start.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test bed (tests/bed) builds, pushes and inspects images

from tests.bed.images import ImageFactory, LayerSpec  # noqa: E402
from tests.bed.registry import RegistryServer  # noqa: E402

SPEC = ROOT / "manifests" / "demo.yaml"
SPEC_HOST = "127.0.0.1:5000"
"""The registry host manifests/demo.yaml names."""

KiB = 1024
BASE = LayerSpec(768 * KiB, seed=1)
"""The shared base layer: stored and transferred once however many images use it."""
IMAGES = {
    "demo/web:1.0": (BASE, LayerSpec(96 * KiB, seed=10)),
    "demo/web:1.1": (BASE, LayerSpec(96 * KiB, seed=11)),
    "demo/web:latest": (BASE, LayerSpec(96 * KiB, seed=11), LayerSpec(8 * KiB, seed=12)),
    "demo/worker:1.0": (BASE, LayerSpec(64 * KiB, seed=20)),
}
RESTORE_FROM = "demo/web:1.1"
RESTORE_TO = "demo/web-restored:1.1"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def port_free(port: int) -> bool:
    """Whether nobody listens on the port. SO_REUSEADDR as Go's listener sets it, so that the
    TIME_WAIT leftovers of the previous demo's registry do not count as taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Demo:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.work = base / ".demo"
        self.archive = base / "demo-archive"
        self.registry: RegistryServer | None = None
        self.factory: ImageFactory | None = None

    def rel(self, path: Path) -> str:
        """A path as typed from the demo's directory (absolute when outside it)."""
        try:
            return str(path.relative_to(self.base))
        except ValueError:
            return str(path)

    def bale(self, *args: str, check: bool = True) -> int:
        """Run bale as a user would, printing the command; output goes straight to the terminal."""
        say(f"$ bale {shlex.join(args)}")
        assert self.factory is not None
        env = self.factory.skopeo.env()  # an empty auth file: no credentials from this machine
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", *args], cwd=self.base, env=env, check=False
        )
        if check and proc.returncode != 0:
            raise SystemExit(f"demo: `bale {args[0]}` exited {proc.returncode}")
        return proc.returncode

    def start_registry(self) -> RegistryServer:
        server = RegistryServer(self.work / "registry")
        host_port = int(SPEC_HOST.rsplit(":", 1)[1])
        if port_free(host_port):
            server.port = host_port
        self.registry = server.start()
        return server

    def spec_path(self, host: str) -> Path:
        """manifests/demo.yaml, or a copy naming the port the registry really got."""
        if host == SPEC_HOST:
            return SPEC
        copy = self.work / "demo.yaml"
        copy.write_text(SPEC.read_text().replace(SPEC_HOST, host))
        say(f"(port 5000 is taken: running {self.rel(copy)}, the demo spec with {host})")
        return copy

    def run(self) -> None:
        started = time.monotonic()
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.factory = ImageFactory(self.work / "images")

        step("1. A throwaway registry")
        registry = self.start_registry()
        say(f"docker-registry at {registry.url} (data in {self.rel(registry.workdir)})")

        step("2. Build small images on one base layer and push them with skopeo")
        pushed = {}
        for name, layers in IMAGES.items():
            image = self.factory.build_and_push(f"{registry.host}/{name}", registry, layers=layers)
            pushed[name] = image
            sizes = " + ".join(f"{layer.size // KiB} KiB" for layer in layers)
            say(f"pushed {registry.host}/{name}  {image.digest[:19]}  layers {sizes}")

        step("3. Archive what the spec selects")
        spec = self.spec_path(registry.host)
        report, junit = self.work / "report.json", self.work / "junit.xml"
        self.bale(
            "run", self.rel(spec), "--to", "./demo-archive",
            "--report", self.rel(report), "--junit", self.rel(junit),
        )  # fmt: skip

        step("4. What the archive holds")
        self.bale("ls", "./demo-archive")

        step("5. Restore one image under a new name, digest unchanged")
        source = f"docker://{registry.host}/{RESTORE_FROM}"
        target = f"docker://{registry.host}/{RESTORE_TO}"
        self.bale("restore", source, target, "--from", "./demo-archive", "--dest-tls-verify=false")
        original = self.factory.skopeo.inspect(source)["Digest"]
        restored = self.factory.skopeo.inspect(target)["Digest"]
        say(f"skopeo inspect {source}: {original}")
        say(f"skopeo inspect {target}: {restored}")
        if original != restored:
            raise SystemExit("demo: the restored image's digest differs from the original")
        say("digests are equal: the restored image is byte-for-byte the original")

        step("Where everything is")
        tars = sorted(self.archive.glob("images/**/*.tar"))
        say(f"archive      ./{self.rel(self.archive)}/   (`bale ls ./demo-archive`)")
        for tar in tars:
            say(f"  tar        {self.rel(tar)}   (docker load / podman load / skopeo read it)")
        say(
            f"  blobs      ./{self.rel(self.archive)}/docker/registry/v2/   (a stock registry "
            "with this as its rootdirectory serves the archive)"
        )
        say(f"spec         {self.rel(spec)}")
        say(f"run report   {self.rel(report)} (JSON), {self.rel(junit)} (JUnit)")
        say(f"registry     {registry.url}: stopped now, its data under .demo/ removed")
        say(f"done in {time.monotonic() - started:.1f}s; run it again and archived images are")
        say("skipped. Remove everything with: rm -rf demo-archive .demo")

    def close(self) -> None:
        if self.registry is not None:
            self.registry.stop()
            shutil.rmtree(self.registry.workdir, ignore_errors=True)
        if self.factory is not None:
            shutil.rmtree(self.factory.root, ignore_errors=True)


def main() -> None:
    base = Path(os.environ.get("DEMO_DIR") or os.getcwd()).resolve()
    demo = Demo(base)
    try:
        demo.run()
    finally:
        demo.close()


if __name__ == "__main__":
    main()

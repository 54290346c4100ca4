"""The servers and images every contender shares, built from the test bed's own pieces.

One docker-registry (the source), a second one (sync's destination), one S3 server (moto_server,
or Ceph RGW with `--store rgw`: a real S3 implementation, whose speed moto hides), and images made by the test bed's `ImageFactory` and pushed with skopeo. Everything lives under one
work directory, and each contender process gets its own empty TMPDIR there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bed.images import BuiltImage, ImageFactory, LayerSpec, Skopeo
from tests.bed.moto import REGION, MotoServer, start_moto_server
from tests.bed.registry import RegistryServer
from tests.bed.rgw import RgwServer, start_rgw

STORES = ("moto", "rgw")

ROOT = Path(__file__).resolve().parent.parent
BALE = [sys.executable, "-m", "pipeline"]


@dataclass(frozen=True)
class Pushed:
    """An image in the source registry."""

    name: str
    ref: str
    """`host/repo:tag` in the source registry."""
    image: BuiltImage

    @property
    def size(self) -> int:
        return self.image.total_size

    @property
    def repo(self) -> str:
        return self.ref.rsplit(":", 1)[0].split("/", 1)[1]

    @property
    def layer_bytes(self) -> int:
        return sum(d.size for d in self.image.layers)


class Bed:
    """Start with `with Bed(workdir) as bed:`; everything stops and is removed on exit."""

    def __init__(
        self, workdir: Path, *, code: Path = ROOT, keep: bool = False, store: str = "moto"
    ) -> None:
        self.workdir = workdir
        self.store = store
        """Which S3 server the S3 cases write to: one of STORES."""
        self.code = code
        """The tree whose `pipeline` is measured (a snapshot of a commit, or the work tree)."""
        self.baseline: tuple[str, Path] | None = None
        """An older bale measured beside `code` in the same runs: (its label, its tree)."""
        self.keep = keep
        self._stack = contextlib.ExitStack()
        self.registry: RegistryServer
        self.registry2: RegistryServer
        self.s3: MotoServer | RgwServer
        self.factory: ImageFactory
        self.skopeo: Skopeo
        self._tmp_n = 0

    def __enter__(self) -> Bed:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        try:
            self.registry = self._stack.enter_context(RegistryServer(self.workdir / "registry"))
            self.registry2 = self._stack.enter_context(RegistryServer(self.workdir / "registry2"))
            if self.store == "rgw":
                self.s3 = start_rgw(self.workdir / "rgw")
            else:
                moto_tmp = self.workdir / "moto-tmp"
                moto_tmp.mkdir()
                with _env(TMPDIR=str(moto_tmp)):  # moto spools objects over 5 MiB to disk there
                    self.s3 = start_moto_server(self.workdir)
            self._stack.callback(self.s3.stop)
            self.factory = ImageFactory(self.workdir / "images")
            self.skopeo = Skopeo(self.workdir / "skopeo")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def bales(self) -> list[tuple[str, Path]]:
        """(suffix of the contender's name, tree) of every bale measured: the code, then the
        baseline if any, so an old and a new commit run alternately on the same servers."""
        return [("", self.code), *([self.baseline] if self.baseline else [])]

    # ---- images ------------------------------------------------------------------------

    def push(self, name: str, layers: Sequence[LayerSpec]) -> Pushed:
        image = self.factory.image(layers=layers, format="docker")
        ref = f"{self.registry.host}/bench/{name}:1"
        self.factory.push(image, ref, self.registry)
        return Pushed(name, ref, image)

    def drop_layer_files(self, pushed: Pushed) -> None:
        """Free the generator's copy of big layers once pushed (the registry has its own)."""
        for desc in pushed.image.layers:
            path = pushed.image.blob_path(desc.digest)
            with contextlib.suppress(FileNotFoundError):
                if path.resolve().stat().st_size > 64 << 20:
                    path.resolve().unlink()

    # ---- environment -------------------------------------------------------------------

    def tmpdir(self, label: str) -> Path:
        """A fresh empty directory for one run's TMPDIR."""
        self._tmp_n += 1
        path = self.workdir / "tmp" / f"{self._tmp_n:04d}-{label}"
        path.mkdir(parents=True)
        return path

    def s3_env(self, endpoint: str | None = None, code: Path | None = None) -> dict[str, str]:
        """The environment of a contender talking to the S3 server: fixed keys, no CA bundle;
        `code` is the tree whose bale runs (default: the one measured)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BALE_"))}
        env.update(
            AWS_ACCESS_KEY_ID=self.s3.access_key,
            AWS_SECRET_ACCESS_KEY=self.s3.secret_key,
            AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=endpoint or self.s3.endpoint_url,
            PYTHONPATH=os.pathsep.join(dict.fromkeys([str(code or self.code), str(ROOT)])),
        )
        return env

    def skopeo_env(self) -> dict[str, str]:
        env = self.skopeo.env()
        env.pop("TMPDIR", None)  # each run sets its own
        return env

    def skopeo_cmd(self, tmpdir: Path, *args: str) -> list[str]:
        return [
            self.skopeo.binary,
            "--policy",
            str(self.skopeo.policy),
            "--tmpdir",
            str(tmpdir),
            *args,
        ]

    # ---- buckets -----------------------------------------------------------------------

    def new_bucket(self) -> str:
        return self.s3.create_bucket(f"bench-{uuid.uuid4().hex[:10]}")

    def drop_bucket(self, name: str) -> None:
        """Empty and delete a bucket (keeps the server's memory and disk flat across runs)."""
        client = self.s3.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
        for up in uploads:
            client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        client.delete_bucket(Bucket=name)

    def bucket_bytes(self, name: str) -> int:
        client: Any = self.s3.client()
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""Test images written as OCI image layouts on disk, then pushed with skopeo.

Registry content in the test bed must come from a real client, not from bale itself, or a bug
in bale's writer would be invisible to bale's reader. So images are generated here as plain
files (an OCI layout: `oci-layout`, `index.json`, `blobs/sha256/...`) and skopeo pushes them
with `--preserve-digests`, which guarantees the registry holds exactly the bytes written here.

Layer content is a real tar holding one file of seeded pseudo-random bytes (SHAKE-256 of the
seed and chunk number: incompressible, unique at every offset, about 250 MiB/s to make).
Large gzip layers use deflate level 0 (stored blocks, still valid gzip): level 1 on
incompressible data runs at ~50 MiB/s, too slow for 256 MiB layers in a fast test suite.
Manifests are written with a 3-space indent, like docker's own, so that any code path that
re-serialises a manifest changes its digest and gets caught.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import zstandard

from pipeline.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    sha256_digest,
)

if TYPE_CHECKING:
    from collections.abc import Callable

Compression = Literal["gzip", "zstd", "none"]
ImageFormat = Literal["oci", "docker"]

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
"""Docker schema2's uncompressed layer type (pipeline.oci has no constant for it)."""

DEFAULT_CREATED = "2024-01-01T00:00:00Z"
"""Fixed so that the same inputs always give the same digests."""

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_TAG = "image"
"""Every layout holds one image, annotated with this tag name."""

_CHUNK = 1 << 20
_MTIME = 1704067200  # 2024-01-01T00:00:00Z
_SMALL_LAYER = 1 << 20
"""Gzip layers up to this size use level 6 (realistic deflate); larger ones level 0 (fast)."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer: a tar with a single file of `size` seeded pseudo-random bytes.

    The uncompressed tar (so the diff_id) depends only on `size` and `seed`: the same
    seed in gzip and zstd gives one layer in two compressions, as in real registries.
    `level` overrides the compression level (gzip: 6 up to 1 MiB else 0; zstd: 1).
    """

    size: int
    compression: Compression = "gzip"
    seed: int = 0
    level: int | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"layer size must be >= 0, got {self.size}")
        if self.compression not in ("gzip", "zstd", "none"):
            raise ValueError(f"unknown compression {self.compression!r}")


@dataclass(frozen=True)
class BuiltLayer:
    spec: LayerSpec
    digest: str
    size: int
    diff_id: str
    """sha256 of the uncompressed tar, as in the config's rootfs.diff_ids."""
    path: Path


@dataclass(frozen=True)
class BuiltImage:
    """An image (or index) in an OCI layout; `reference` is set once it has been pushed.

    For an index, `config` is None, `layers`/`diff_ids` are empty and `children` holds one
    BuiltImage per platform (same layout, so a child's `oci_ref` names the whole index).
    Blobs are shared between every image a factory builds: copy a blob before corrupting it.
    """

    layout: Path
    digest: str
    media_type: str
    manifest: bytes
    config: bytes | None
    config_descriptor: Descriptor | None
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]
    platforms: tuple[Platform, ...]
    children: tuple[BuiltImage, ...] = ()
    reference: str | None = None

    @property
    def is_index(self) -> bool:
        return bool(self.children) or self.media_type in (OCI_INDEX, DOCKER_LIST)

    @property
    def oci_ref(self) -> str:
        """The skopeo name of this image: `oci:DIR`.

        Without `:TAG` on purpose: skopeo 1.9 ignores index.json entries with Docker media
        types when it looks a tag up, but takes the layout's only entry whatever its type.
        """
        return f"oci:{self.layout}"

    @property
    def descriptor(self) -> Descriptor:
        platform = self.platforms[0] if len(self.platforms) == 1 and not self.is_index else None
        return Descriptor(self.media_type, self.digest, len(self.manifest), platform)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Every distinct config and layer blob, children included, first-seen order."""
        seen: dict[str, Descriptor] = {}
        images = self.children if self.is_index else (self,)
        for image in images:
            assert image.config_descriptor is not None
            for desc in (image.config_descriptor, *image.layers):
                seen.setdefault(desc.digest, desc)
        return tuple(seen.values())

    @property
    def manifests(self) -> tuple[Descriptor, ...]:
        """This manifest and its children's, children first (the order a registry needs)."""
        return (*(c.descriptor for c in self.children), self.descriptor)

    @property
    def total_size(self) -> int:
        """Bytes of every distinct blob and manifest: what a full copy transfers."""
        return sum(d.size for d in self.blobs) + sum(d.size for d in self.manifests)

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def child(self, platform: str | Platform) -> BuiltImage:
        wanted = Platform.parse(platform) if isinstance(platform, str) else platform
        for c in self.children:
            if c.platforms[0].matches(wanted):
                return c
        raise KeyError(f"no child for platform {wanted}")

    @property
    def repository(self) -> str | None:
        """`host/repo` of the pushed reference, without tag."""
        if self.reference is None:
            return None
        ref = self.reference.split("@", 1)[0]
        head, _, tail = ref.rpartition(":")
        return head if head and "/" not in tail else ref


class PushTarget(Protocol):
    """What push needs from a registry: RegistryServer satisfies it."""

    @property
    def host(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...


class SkopeoError(RuntimeError):
    """A skopeo command failed; the message carries its stderr."""


class Skopeo:
    """Runs skopeo isolated from the machine's configuration.

    A permissive policy, an empty auth file and an empty registries.conf live in `workdir`, so
    the tests behave the same on a developer's machine, in CI and with no /etc/containers.
    """

    def __init__(self, workdir: Path, binary: str = "skopeo") -> None:
        self.binary = shutil.which(binary) or binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.policy = workdir / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.authfile = workdir / "auth.json"
        self.authfile.write_text('{"auths": {}}')
        (workdir / "docker").mkdir(exist_ok=True)
        (workdir / "docker" / "config.json").write_text('{"auths": {}}')
        self.registries_conf = workdir / "registries.conf"
        self.registries_conf.write_text("unqualified-search-registries = []\n")
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(exist_ok=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            REGISTRY_AUTH_FILE=str(self.authfile),
            DOCKER_CONFIG=str(self.workdir / "docker"),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            TMPDIR=str(self.tmpdir),
        )
        return env

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        cmd = [self.binary, "--policy", str(self.policy), "--tmpdir", str(self.tmpdir), *args]
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()
            raise SkopeoError(f"skopeo {args[0]} failed ({proc.returncode}): {err}")
        return proc

    @staticmethod
    def creds_args(flag: str, target: PushTarget | None) -> list[str]:
        if target is None or target.username is None:
            return []
        return [f"{flag}={target.username}:{target.password}"]

    def copy(self, src: str, dst: str, *extra: str) -> None:
        self.run("copy", "--quiet", *extra, src, dst)

    def inspect(
        self,
        ref: str,
        *,
        registry: PushTarget | None = None,
        raw: bool = False,
        config: bool = False,
        tls_verify: bool = False,
    ) -> Any:
        """`skopeo inspect`: parsed JSON, or the raw bytes when `raw` (with `config` too)."""
        args = ["inspect", f"--tls-verify={'true' if tls_verify else 'false'}"]
        args += self.creds_args("--creds", registry)
        if raw:
            args.append("--raw")
        if config:
            args.append("--config")
        out = self.run(*args, ref).stdout
        return out if raw else json.loads(out)


def _chunks(seed: int, size: int) -> Iterator[bytes]:
    prefix = f"bale-bed:{seed}:".encode()
    for i in range(0, (size + _CHUNK - 1) // _CHUNK):
        n = min(_CHUNK, size - i * _CHUNK)
        yield hashlib.shake_256(prefix + str(i).encode()).digest(n)


def _tar_stream(spec: LayerSpec) -> Iterator[bytes]:
    """A deterministic tar: one directory and one file, root-owned, fixed mtime."""
    d = tarfile.TarInfo("bed")
    d.type, d.mode, d.mtime, d.uname, d.gname = tarfile.DIRTYPE, 0o755, _MTIME, "root", "root"
    f = tarfile.TarInfo(f"bed/layer-{spec.seed}-{spec.size}.bin")
    f.size, f.mode, f.mtime, f.uname, f.gname = spec.size, 0o644, _MTIME, "root", "root"
    written = 0
    for header in (d.tobuf(tarfile.PAX_FORMAT), f.tobuf(tarfile.PAX_FORMAT)):
        yield header
        written += len(header)
    yield from _chunks(spec.seed, spec.size)
    written += spec.size
    pad = (-spec.size) % tarfile.BLOCKSIZE
    end = pad + 2 * tarfile.BLOCKSIZE
    end += (-(written + end)) % tarfile.RECORDSIZE
    yield b"\0" * end


def _compressor(spec: LayerSpec) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    if spec.compression == "gzip":
        level = spec.level if spec.level is not None else (6 if spec.size <= _SMALL_LAYER else 0)
        z = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip header, mtime 0
        return z.compress, z.flush
    if spec.compression == "zstd":
        zc = zstandard.ZstdCompressor(level=spec.level if spec.level is not None else 1)
        zo = zc.compressobj()
        return zo.compress, zo.flush
    return (lambda b: b), (lambda: b"")


def _platform_json(p: Platform) -> dict[str, str]:
    out = {"architecture": p.architecture, "os": p.os}
    if p.variant:
        out["variant"] = p.variant
    return out


def _manifest_bytes(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, indent=3).encode()


def _derive_seed(seed: int, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{salt}".encode()).digest()[:7], "big")


@dataclass
class ImageFactory:
    """Builds images into OCI layouts under `root` and pushes them with skopeo.

    Layers are cached by LayerSpec for the whole session: asking twice for the same spec costs
    nothing and gives byte-identical blobs (how tests get images that share layers).
    """

    root: Path
    skopeo: Skopeo = field(init=False)
    _layers: dict[LayerSpec, BuiltLayer] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.blob_dir = self.root / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.skopeo = Skopeo(self.root / "skopeo")

    # ---- blobs -------------------------------------------------------------------------

    def _put_blob(self, data: bytes) -> str:
        digest = sha256_digest(data)
        path = self.blob_dir / digest.split(":", 1)[1]
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(path)
        return digest

    def layer(self, spec: LayerSpec) -> BuiltLayer:
        """The layer blob for `spec`, generated once per session."""
        with self._lock:
            cached = self._layers.get(spec)
        if cached is not None:
            return cached
        compress, flush = _compressor(spec)
        tar_hash, blob_hash = hashlib.sha256(), hashlib.sha256()
        tmp = self.blob_dir / f".layer-{os.getpid()}-{threading.get_ident()}.tmp"
        size = 0
        with tmp.open("wb") as out:
            for raw in _tar_stream(spec):
                tar_hash.update(raw)
                packed = compress(raw)
                if packed:
                    blob_hash.update(packed)
                    out.write(packed)
                    size += len(packed)
            tail = flush()
            blob_hash.update(tail)
            out.write(tail)
            size += len(tail)
        digest = "sha256:" + blob_hash.hexdigest()
        path = self.blob_dir / blob_hash.hexdigest()
        tmp.replace(path)
        built = BuiltLayer(spec, digest, size, "sha256:" + tar_hash.hexdigest(), path)
        with self._lock:
            self._layers[spec] = built
        return built

    # ---- images ------------------------------------------------------------------------

    def _new_layout(self, top: Descriptor) -> Path:
        with self._lock:
            self._count += 1
            n = self._count
        layout = self.root / "layouts" / f"{n:04d}-{top.hex[:12]}"
        layout.mkdir(parents=True)
        (layout / "blobs").symlink_to(self.blob_dir.parent, target_is_directory=True)
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        entry = top.to_json()
        entry["annotations"] = {REF_NAME: LAYOUT_TAG}
        index = {"schemaVersion": 2, "manifests": [entry]}
        (layout / "index.json").write_text(json.dumps(index))
        return layout

    def _single(
        self,
        layers: Sequence[LayerSpec],
        format: ImageFormat,
        platform: Platform,
        labels: Mapping[str, str] | None,
        env: Sequence[str] | None,
        created: str,
        annotations: Mapping[str, str] | None,
    ) -> tuple[bytes, str, bytes, Descriptor, tuple[Descriptor, ...], tuple[str, ...]]:
        built = [self.layer(spec) for spec in layers]
        config_obj: dict[str, Any] = {
            **_platform_json(platform),
            "created": created,
            "author": "bale test bed",
            "config": {
                "Env": list(env) if env is not None else ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/",
                "Labels": dict(labels or {}),
            },
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in built]},
            "history": [
                {"created": created, "created_by": "ENV PATH=/usr/local/bin", "empty_layer": True},
                *(
                    {
                        "created": created,
                        "created_by": f"ADD layer seed={b.spec.seed} size={b.spec.size}",
                    }
                    for b in built
                ),
            ],
        }
        config = json.dumps(config_obj, separators=(",", ":"), sort_keys=True).encode()
        config_desc = Descriptor(
            OCI_CONFIG if format == "oci" else DOCKER_CONFIG, self._put_blob(config), len(config)
        )
        layer_descs = tuple(
            Descriptor(_layer_media_type(b.spec, format), b.digest, b.size) for b in built
        )
        manifest_obj: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if format == "oci" else DOCKER_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layer_descs],
        }
        if annotations:
            if format != "oci":
                raise ValueError("annotations need format='oci'")
            manifest_obj["annotations"] = dict(annotations)
        manifest = _manifest_bytes(manifest_obj)
        digest = self._put_blob(manifest)
        return (
            manifest,
            digest,
            config,
            config_desc,
            layer_descs,
            tuple(b.diff_id for b in built),
        )

    def image(
        self,
        layers: Sequence[LayerSpec] = (LayerSpec(1024),),
        *,
        format: ImageFormat = "oci",
        platform: str | Platform = "linux/amd64",
        labels: Mapping[str, str] | None = None,
        env: Sequence[str] | None = None,
        created: str = DEFAULT_CREATED,
        annotations: Mapping[str, str] | None = None,
    ) -> BuiltImage:
        """One single-platform image (OCI manifest, or Docker schema2 with format='docker')."""
        plat = Platform.parse(platform) if isinstance(platform, str) else platform
        manifest, digest, config, cdesc, ldescs, diff_ids = self._single(
            layers, format, plat, labels, env, created, annotations
        )
        mtype = OCI_MANIFEST if format == "oci" else DOCKER_MANIFEST
        layout = self._new_layout(Descriptor(mtype, digest, len(manifest)))
        return BuiltImage(layout, digest, mtype, manifest, config, cdesc, ldescs, diff_ids, (plat,))

    def index(
        self,
        platforms: Sequence[str | Platform] = ("linux/amd64", "linux/arm64"),
        layers: Sequence[LayerSpec] | Mapping[str, Sequence[LayerSpec]] = (LayerSpec(1024),),
        *,
        format: ImageFormat = "oci",
        shared_layers: bool = False,
        labels: Mapping[str, str] | None = None,
        env: Sequence[str] | None = None,
        created: str = DEFAULT_CREATED,
        annotations: Mapping[str, str] | None = None,
    ) -> BuiltImage:
        """A multi-platform OCI index (or Docker manifest list with format='docker').

        With a plain sequence of specs, each platform gets layers of the same sizes but its
        own content (seeds mixed with the platform) unless `shared_layers`; a mapping from
        platform string to specs gives each platform exactly those layers.
        """
        plats = [Platform.parse(p) if isinstance(p, str) else p for p in platforms]
        if len(plats) < 1:
            raise ValueError("an index needs at least one platform")
        children: list[BuiltImage] = []
        for plat in plats:
            if isinstance(layers, Mapping):
                specs = list(layers[str(plat)])
            elif shared_layers:
                specs = list(layers)
            else:
                specs = [replace(s, seed=_derive_seed(s.seed, str(plat))) for s in layers]
            manifest, digest, config, cdesc, ldescs, diff_ids = self._single(
                specs, format, plat, labels, env, created, None
            )
            mtype = OCI_MANIFEST if format == "oci" else DOCKER_MANIFEST
            children.append(
                BuiltImage(
                    Path(), digest, mtype, manifest, config, cdesc, ldescs, diff_ids, (plat,)
                )
            )
        index_type = OCI_INDEX if format == "oci" else DOCKER_LIST
        index_obj: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [
                Descriptor(c.media_type, c.digest, len(c.manifest), c.platforms[0]).to_json()
                for c in children
            ],
        }
        if annotations:
            if format != "oci":
                raise ValueError("annotations need format='oci'")
            index_obj["annotations"] = dict(annotations)
        manifest = _manifest_bytes(index_obj)
        digest = self._put_blob(manifest)
        layout = self._new_layout(Descriptor(index_type, digest, len(manifest)))
        kids = tuple(replace(c, layout=layout) for c in children)
        return BuiltImage(
            layout, digest, index_type, manifest, None, None, (), (), tuple(plats), kids
        )

    # ---- push --------------------------------------------------------------------------

    def push(
        self,
        image: BuiltImage,
        reference: str,
        registry: PushTarget | None = None,
    ) -> BuiltImage:
        """Push with `skopeo copy --all --preserve-digests`; returns the image with `reference`.

        `reference` is `repo:tag` (the registry's host is prefixed) or `host/repo:tag`.
        Credentials come from `registry` when it has any. The pushed digest is checked
        against the layout's; children of a pushed index get `repo@digest` references.
        """
        if registry is not None and not reference.startswith(registry.host + "/"):
            reference = f"{registry.host}/{reference}"
        if "@" in reference:
            raise ValueError("push needs a tag reference, not a digest")
        digest_file = self.skopeo.tmpdir / f"digest-{threading.get_ident()}-{image.digest[7:19]}"
        args = ["--all", "--preserve-digests", "--dest-tls-verify=false"]
        args += Skopeo.creds_args("--dest-creds", registry)
        args += ["--digestfile", str(digest_file)]
        self.skopeo.copy(image.oci_ref, f"docker://{reference}", *args)
        pushed = digest_file.read_text().strip()
        digest_file.unlink()
        if pushed != image.digest:
            raise SkopeoError(f"pushed {reference} as {pushed}, layout has {image.digest}")
        repo = reference.rsplit(":", 1)[0]
        kids = tuple(replace(c, reference=f"{repo}@{c.digest}") for c in image.children)
        return replace(image, reference=reference, children=kids)

    def build_and_push(
        self, reference: str, registry: PushTarget | None = None, **image_args: Any
    ) -> BuiltImage:
        """`image(**image_args)` pushed to `reference` in one call."""
        return self.push(self.image(**image_args), reference, registry)


def _layer_media_type(spec: LayerSpec, format: ImageFormat) -> str:
    if format == "oci":
        return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}[spec.compression]
    if spec.compression == "zstd":
        raise ValueError("Docker schema2 has no zstd layer type: use format='oci'")
    return DOCKER_LAYER_GZIP if spec.compression == "gzip" else DOCKER_LAYER


def podman_load(tar: Path, root: Path) -> str:
    """`podman load` of `tar` into a throwaway storage under `root`; the images it then lists."""
    runroot = tempfile.mkdtemp(prefix="bale-prr-")  # podman caps runroot at 50 characters
    podman = ["podman", "--storage-driver", "vfs", "--root", str(root), "--runroot", runroot]
    try:
        proc = subprocess.run([*podman, "load", "-i", str(tar)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return subprocess.run(
            [*podman, "images", "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(runroot, ignore_errors=True)

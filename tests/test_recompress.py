"""`--dest-compress-format zstd`: compression detected by magic bytes, gzip streamed into zstd
with bounded memory and checked diff_ids, manifests converted (configs kept), and the result
pulled by podman with every file of every layer intact."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from pipeline.compression import (
    CHUNK,
    GzipReader,
    PeekableReader,
    detect_compression,
    open_decompressed,
)
from pipeline.errors import DigestMismatch, TransferError, UsageError
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
    ImageIndex,
    ImageManifest,
    Platform,
    RawManifest,
    sha256_digest,
)
from pipeline.refs import Reference
from pipeline.transfer.digest_stream import VerifyingReader
from pipeline.transfer.recompress import (
    CompressOptions,
    RecompressedSource,
    ZstdTranscoder,
    transcode_to_zstd,
)
from tests.bed.cli import run_bale
from tests.bed.images import LayerSpec

# ---- detection and decompression -----------------------------------------------------------


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1704067200, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _noise(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class Chunky:
    """A reader that hands out pseudo-random amounts (as a network does), counting reads."""

    def __init__(self, data: bytes, seed: int = 1, largest: int = 3 * CHUNK) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.rng = random.Random(seed)
        self.largest = largest
        self.closed = False

    def read(self, n: int = -1, /) -> bytes:
        if n is None or n < 0:
            n = len(self.data)
        n = min(n, self.rng.randint(1, self.largest))
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += len(out)
        return out

    def close(self) -> None:
        self.closed = True


def test_detect_compression_by_magic_bytes():
    plain = _tar({"a": b"x"})
    assert detect_compression(gzip.compress(plain)[:6]) == "gzip"
    assert detect_compression(zstandard.ZstdCompressor().compress(plain)[:6]) == "zstd"
    import bz2
    import lzma

    assert detect_compression(bz2.compress(plain)[:6]) == "bzip2"
    assert detect_compression(lzma.compress(plain)[:6]) == "xz"
    assert detect_compression(plain[:6]) == "none"
    assert detect_compression(b"") == "none"
    assert detect_compression(b"\x1f") == "none"


@pytest.mark.parametrize("kind", ["gzip", "zstd", "bzip2", "xz", "none"])
def test_open_decompressed_round_trips_each_format(kind):
    import bz2
    import lzma

    plain = _tar({"f": _noise(300_000), "g": b"z" * 500_000})
    packed = {
        "gzip": gzip.compress,
        "zstd": zstandard.ZstdCompressor().compress,
        "bzip2": bz2.compress,
        "xz": lzma.compress,
        "none": lambda b: b,
    }[kind](plain)
    peek = PeekableReader(Chunky(packed))
    assert detect_compression(peek.peek(6)) == kind
    reader = open_decompressed(kind, peek)
    out = b"".join(iter(lambda: reader.read(65536), b""))
    assert out == plain


def test_gzip_reader_reads_every_member_and_ignores_zero_padding():
    parts = [_noise(100_000, 1), b"hello" * 1000, _noise(5, 2)]
    stream = b"".join(gzip.compress(p) for p in parts) + b"\0" * 3000
    reader = GzipReader(Chunky(stream, largest=7000))
    assert b"".join(iter(lambda: reader.read(4096), b"")) == b"".join(parts)


def test_gzip_reader_refuses_truncated_and_corrupt_streams():
    packed = gzip.compress(_noise(200_000))
    reader = GzipReader(io.BytesIO(packed[:-100]))
    with pytest.raises(EOFError):
        while reader.read(CHUNK):
            pass
    corrupt = bytearray(packed)
    corrupt[-6] ^= 0xFF  # the CRC-32 in the trailer
    reader = GzipReader(io.BytesIO(bytes(corrupt)))
    with pytest.raises(zlib.error):
        while reader.read(CHUNK):
            pass
    reader = GzipReader(io.BytesIO(packed + b"garbage!"))
    with pytest.raises(zlib.error):
        while reader.read(CHUNK):
            pass


def test_gzip_reader_output_per_read_is_bounded_for_a_bomb():
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), 9)  # 64 MiB in ~64 KiB
    assert len(bomb) < 100_000
    reader = GzipReader(io.BytesIO(bomb))
    biggest = total = 0
    while data := reader.read(65536):
        biggest = max(biggest, len(data))
        total += len(data)
    assert total == 64 * 1024 * 1024
    assert biggest <= 65536


# ---- the transcoder ------------------------------------------------------------------------


def test_transcoder_output_is_zstd_of_the_same_tar_with_digests():
    plain = _tar({"bin": _noise(2_500_000), "text": b"line\n" * 200_000})
    transcoder = ZstdTranscoder(Chunky(gzip.compress(plain, 6)))
    out = b"".join(iter(lambda: transcoder.read(100_000), b""))
    result = transcoder.result
    transcoder.close()
    assert out[:4] == b"\x28\xb5\x2f\xfd"
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out) == plain
    assert result.digest == sha256_digest(out)
    assert result.size == len(out)
    assert result.diff_id == sha256_digest(plain)
    assert result.uncompressed_size == len(plain)
    assert result.compression == "gzip"


def test_transcoder_output_does_not_depend_on_how_input_arrives():
    """What makes two passes possible: pass two reproduces pass one byte for byte."""
    packed = gzip.compress(_tar({"a": _noise(3_000_000), "b": b"ab" * 900_000}), 1)
    digests = set()
    for seed, largest in ((1, 10), (2, 70_000), (3, 5 * CHUNK)):
        result, _ = transcode_to_zstd(Chunky(packed, seed=seed, largest=largest))
        digests.add(result.digest)
    assert len(digests) == 1


def test_transcoder_reads_are_bounded_and_buffer_stays_small():
    plain = _tar({"zeros": b"\0" * (40 * 1024 * 1024), "noise": _noise(6 * 1024 * 1024)})
    transcoder = ZstdTranscoder(io.BytesIO(gzip.compress(plain, 1)))
    peak = 0
    while data := transcoder.read(8192):
        assert len(data) <= 8192
        peak = max(peak, transcoder._buffered)
    transcoder.close()
    assert peak <= 2 * CHUNK


def test_transcoder_fails_on_a_corrupt_layer():
    packed = bytearray(gzip.compress(_noise(500_000)))
    packed[len(packed) // 2] ^= 0xFF
    with pytest.raises(TransferError, match="does not decompress as gzip"):
        transcode_to_zstd(io.BytesIO(bytes(packed)))


def test_transcode_memory_is_bounded_for_a_large_layer(tmp_path):
    """256 MiB of tar through gzip → zstd in a fresh process: its peak RSS stays small."""
    script = tmp_path / "big.py"
    script.write_text(
        "import hashlib, resource, zlib\n"
        "from pipeline.transfer.recompress import ZstdTranscoder\n"
        "class Gz:\n"
        "    def __init__(self):\n"
        "        self.z = zlib.compressobj(0, zlib.DEFLATED, 31); self.i = 0; self.done = False\n"
        "    def read(self, n=-1):\n"
        "        while not self.done:\n"
        "            if self.i == 256:\n"
        "                self.done = True; return self.z.flush()\n"
        "            chunk = hashlib.shake_256(str(self.i).encode()).digest(1 << 20)\n"
        "            self.i += 1\n"
        "            out = self.z.compress(chunk)\n"
        "            if out: return out\n"
        "        return b''\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = ZstdTranscoder(Gz(), level=1)\n"
        "while t.read(1 << 20): pass\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(t.result.uncompressed_size, (after - before) // 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=True
    )
    size, grown_mib = map(int, proc.stdout.split())
    assert size == 256 * 1024 * 1024
    assert grown_mib < 64, f"peak RSS grew by {grown_mib} MiB for a 256 MiB layer"


# ---- RecompressedSource on an in-memory image ----------------------------------------------


@dataclass
class MemorySource:
    """An ImageSource over dicts, counting blob opens."""

    top: RawManifest
    manifests: dict[str, RawManifest] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    opens: dict[str, int] = field(default_factory=dict)
    reference: Reference = field(default_factory=lambda: Reference.parse("example.com/m/img:1"))

    def manifest(self, digest: str | None = None) -> RawManifest:
        return self.top if digest is None else self.manifests[digest]

    def blob(self, descriptor: Descriptor) -> bytes:
        return self.blobs[descriptor.digest]

    def open_blob(self, descriptor: Descriptor):
        self.opens[descriptor.digest] = self.opens.get(descriptor.digest, 0) + 1
        data = self.blobs[descriptor.digest]
        return VerifyingReader(io.BytesIO(data), descriptor.digest, len(data), what="mem")


def _put(source: MemorySource, data: bytes, media_type: str) -> Descriptor:
    source.blobs[sha256_digest(data)] = data
    return Descriptor(media_type, sha256_digest(data), len(data))


def _manifest_bytes(obj: dict) -> RawManifest:
    return RawManifest.from_bytes(json.dumps(obj, indent=3).encode())


def _image(
    source: MemorySource,
    layers: list[tuple[bytes, str, str]],
    *,
    docker: bool = False,
    diff_ids: list[str] | None = None,
    platform: str = "linux/amd64",
) -> RawManifest:
    """`layers` = (uncompressed tar, compression, media type)."""
    descs, ids = [], []
    for plain, kind, media_type in layers:
        packed = {
            "gzip": lambda b: gzip.compress(b, 6),
            "zstd": zstandard.ZstdCompressor().compress,
            "none": lambda b: b,
        }[kind](plain)
        descs.append(_put(source, packed, media_type))
        ids.append(sha256_digest(plain))
    os_, arch = platform.split("/")
    config = json.dumps(
        {"architecture": arch, "os": os_, "rootfs": {"type": "layers", "diff_ids": diff_ids or ids}}
    ).encode()
    cfg = _put(source, config, DOCKER_CONFIG if docker else OCI_CONFIG)
    raw = _manifest_bytes(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": cfg.to_json(),
            "layers": [d.to_json() for d in descs],
        }
    )
    source.manifests[raw.digest] = raw
    return raw


def _memory(**kwargs) -> MemorySource:
    placeholder = RawManifest(b"{}", OCI_MANIFEST, sha256_digest(b"{}"))
    return MemorySource(placeholder, **kwargs)


def _read_all(source, desc: Descriptor) -> bytes:
    reader = source.open_blob(desc)
    try:
        return b"".join(iter(lambda: reader.read(CHUNK), b""))
    finally:
        getattr(reader, "close", lambda: None)()


def test_docker_image_becomes_an_oci_image_with_zstd_layers_and_the_same_config():
    mem = _memory()
    tars = [_tar({"a": _noise(200_000, 3)}), _tar({"b": b"b" * 70_000}), _tar({"c": b"c"})]
    mem.top = _image(
        mem,
        [
            (tars[0], "gzip", DOCKER_LAYER_GZIP),
            (tars[1], "none", "application/vnd.docker.image.rootfs.diff.tar"),
            (tars[2], "gzip", DOCKER_LAYER_GZIP),
        ],
        docker=True,
    )
    view = RecompressedSource(mem)
    top = view.manifest()
    parsed = top.parse()
    original = mem.top.parse()
    assert isinstance(parsed, ImageManifest) and isinstance(original, ImageManifest)
    assert top.media_type == OCI_MANIFEST and top.digest != mem.top.digest
    assert parsed.config.digest == original.config.digest
    assert parsed.config.media_type == OCI_CONFIG
    assert [d.media_type for d in parsed.layers] == [OCI_LAYER_ZSTD] * 3
    assert view.digest_map == {mem.top.digest: top.digest}
    config = json.loads(view.blob(parsed.config))
    for layer, plain, diff_id in zip(
        parsed.layers, tars, config["rootfs"]["diff_ids"], strict=True
    ):
        data = _read_all(view, layer)
        assert sha256_digest(data) == layer.digest and len(data) == layer.size
        assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == plain
        assert sha256_digest(plain) == diff_id


def test_small_layers_come_from_memory_large_ones_are_transcoded_again(monkeypatch):
    import pipeline.transfer.recompress as recompress

    monkeypatch.setattr(recompress, "SMALL_LAYER", 100_000)
    mem = _memory()
    small, large = _tar({"s": b"s" * 1000}), _tar({"l": _noise(400_000, 9)})
    mem.top = _image(mem, [(small, "gzip", OCI_LAYER_GZIP), (large, "gzip", OCI_LAYER_GZIP)])
    view = RecompressedSource(mem)
    layers = view.manifest().parse().layers  # type: ignore[union-attr]
    originals = mem.top.parse().layers  # type: ignore[union-attr]
    assert all(mem.opens[d.digest] == 1 for d in originals)  # pass one
    for layer in layers:
        _read_all(view, layer)
    assert mem.opens[originals[0].digest] == 1  # served from pass one's bytes
    assert mem.opens[originals[1].digest] == 2  # transcoded again, verified


def test_zstd_layers_and_artifacts_are_left_alone():
    mem = _memory()
    plain = _tar({"z": b"zz" * 5000})
    mem.top = _image(mem, [(plain, "zstd", OCI_LAYER_ZSTD)])
    view = RecompressedSource(mem)
    assert view.manifest().digest == mem.top.digest  # nothing to change: bytes kept
    layer = view.manifest().parse().layers[0]  # type: ignore[union-attr]
    assert _read_all(view, layer) == mem.blobs[layer.digest]

    sig = _memory()
    payload = _put(sig, b'{"critical":{}}', "application/vnd.dev.cosign.simplesigning.v1+json")
    cfg = _put(sig, b"{}", "application/vnd.oci.empty.v1+json")
    sig.top = _manifest_bytes(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cfg.to_json(),
            "layers": [payload.to_json()],
        }
    )
    assert RecompressedSource(sig).manifest().digest == sig.top.digest


def test_a_layer_that_does_not_match_its_diff_id_is_refused():
    mem = _memory()
    plain = _tar({"a": b"a" * 10_000})
    mem.top = _image(mem, [(plain, "gzip", OCI_LAYER_GZIP)], diff_ids=["sha256:" + "0" * 64])
    with pytest.raises(DigestMismatch, match="diff_id"):
        RecompressedSource(mem).manifest()


def _index(mem: MemorySource, children: list[tuple[RawManifest, str | None]], docker: bool):
    entries = []
    for raw, platform in children:
        desc = raw.descriptor(Platform.parse(platform) if platform else None).to_json()
        if platform is None:
            desc["annotations"] = {
                "vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": children[0][0].digest,
            }
        entries.append(desc)
    raw = _manifest_bytes(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST if docker else OCI_INDEX,
            "manifests": entries,
        }
    )
    mem.manifests[raw.digest] = raw
    return raw


def test_index_is_converted_whole_or_to_the_chosen_platform():
    mem = _memory()
    amd = _image(mem, [(_tar({"amd": b"1" * 3000}), "gzip", OCI_LAYER_GZIP)])
    arm = _image(
        mem, [(_tar({"arm": b"2" * 3000}), "gzip", OCI_LAYER_GZIP)], platform="linux/arm64"
    )
    att_cfg = _put(mem, b"{}", "application/vnd.oci.image.config.v1+json")
    att_layer = _put(mem, b'{"_type":"intoto"}', "application/vnd.in-toto+json")
    attestation = _manifest_bytes(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": att_cfg.to_json(),
            "layers": [att_layer.to_json()],
        }
    )
    mem.manifests[attestation.digest] = attestation
    mem.top = _index(mem, [(amd, "linux/amd64"), (arm, "linux/arm64"), (attestation, None)], True)

    view = RecompressedSource(mem, all_platforms=True)
    top = view.manifest()
    assert top.media_type == OCI_INDEX
    index = top.parse()
    assert isinstance(index, ImageIndex)
    new_amd, new_arm, att = index.manifests
    assert new_amd.digest == view.digest_map[amd.digest] != amd.digest
    assert new_arm.digest == view.digest_map[arm.digest] != arm.digest
    assert str(new_amd.platform) == "linux/amd64" and str(new_arm.platform) == "linux/arm64"
    assert att.digest == attestation.digest  # in-toto layers are not tar layers
    assert att.annotations["vnd.docker.reference.digest"] == new_amd.digest
    for desc in (new_amd, new_arm):
        child = view.manifest(desc.digest)
        assert child.digest == desc.digest and child.media_type == OCI_MANIFEST
    assert view.manifest(attestation.digest) == attestation

    one = RecompressedSource(mem, platform=Platform.parse("linux/arm64"))
    assert one.manifest().digest == new_arm.digest  # same bytes as in the whole conversion


def test_only_the_chosen_platform_is_transcoded():
    mem = _memory()
    amd = _image(mem, [(_tar({"amd": b"1" * 3000}), "gzip", OCI_LAYER_GZIP)])
    arm = _image(
        mem, [(_tar({"arm": b"2" * 3000}), "gzip", OCI_LAYER_GZIP)], platform="linux/arm64"
    )
    mem.top = _index(mem, [(amd, "linux/amd64"), (arm, "linux/arm64")], False)
    RecompressedSource(mem).manifest()
    arm_layer = arm.parse().layers[0]  # type: ignore[union-attr]
    amd_layer = amd.parse().layers[0]  # type: ignore[union-attr]
    assert mem.opens.get(amd_layer.digest) == 1
    assert arm_layer.digest not in mem.opens


def test_compress_options_are_checked():
    assert CompressOptions().level == 3
    with pytest.raises(UsageError):
        CompressOptions("gzip")
    with pytest.raises(UsageError):
        CompressOptions("zstd", 30)


def test_uncompressed_oci_layers_are_compressed_too():
    mem = _memory()
    plain = _tar({"p": b"p" * 50_000})
    mem.top = _image(mem, [(plain, "none", OCI_LAYER)])
    view = RecompressedSource(mem, level=19)
    layer = view.manifest().parse().layers[0]  # type: ignore[union-attr]
    assert layer.media_type == OCI_LAYER_ZSTD and layer.size < len(plain) // 10
    data = _read_all(view, layer)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == plain


# ---- registries and podman -----------------------------------------------------------------


def _layer_files(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


LAYERS = (LayerSpec(1_500_000, seed=7301), LayerSpec(300_000, seed=7302), LayerSpec(0, seed=7303))


@pytest.mark.integration
@pytest.mark.parametrize("command", ["copy", "sync"])
def test_podman_pulls_the_zstd_image_with_identical_files(
    command, registry, image_factory, unique_repo, podman, skopeo
):
    built = image_factory.image(layers=LAYERS, format="docker")
    pushed = image_factory.push(built, f"{unique_repo}:v1", registry)
    src = f"docker://{registry.host}/{unique_repo}:v1"
    if command == "copy":
        dest = f"{registry.host}/{unique_repo}-zstd:v1"
        args = ["copy", src, f"docker://{dest}"]
    else:
        dest = f"{registry.host}/zsync-{unique_repo.split('/')[-1]}/{unique_repo.split('/')[-1]}:v1"
        args = ["sync", src, f"docker://{dest.rsplit('/', 1)[0]}"]
    proc = run_bale(
        *args,
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--dest-compress-format",
        "zstd",
    )
    assert proc.returncode == 0, proc.stderr

    raw = json.loads(skopeo.inspect(f"docker://{dest}", raw=True))
    assert raw["mediaType"] == OCI_MANIFEST
    assert [layer["mediaType"] for layer in raw["layers"]] == [OCI_LAYER_ZSTD] * 3
    assert raw["config"]["digest"] == pushed.config_descriptor.digest  # config unchanged
    config = json.loads(skopeo.inspect(f"docker://{dest}", raw=True, config=True))
    assert config["rootfs"]["diff_ids"] == list(pushed.diff_ids)

    podman("pull", "-q", "--tls-verify=false", f"docker://{dest}")
    inspected = json.loads(podman("image", "inspect", dest))[0]
    assert inspected["RootFS"]["Layers"] == list(pushed.diff_ids)
    mount = Path(podman("image", "mount", dest).strip())
    try:
        expected: dict[str, bytes] = {}
        for layer in pushed.layers:
            expected.update(_layer_files(pushed.read_blob(layer.digest)))
        assert expected  # the bed's layers each hold one file
        for name, data in expected.items():
            got = (mount / name).read_bytes()
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), name
    finally:
        podman("image", "unmount", dest)


@pytest.mark.integration
def test_restore_with_zstd_and_a_second_sync_skips(
    registry, image_factory, unique_repo, tmp_path, skopeo
):
    pushed = image_factory.push(
        image_factory.index(layers=(LayerSpec(200_000, seed=7311),)), f"{unique_repo}:m", registry
    )
    src = f"docker://{registry.host}/{unique_repo}:m"
    store = tmp_path / "store"
    proc = run_bale("archive", src, "--to", str(store), "--src-tls-verify=false")
    assert proc.returncode == 0, proc.stderr
    dest = f"{registry.host}/{unique_repo}-restored:m"
    proc = run_bale(
        "restore",
        src,
        f"docker://{dest}",
        "--from",
        str(store),
        "--dest-tls-verify=false",
        "--dest-compress-format=zstd",
    )
    assert proc.returncode == 0, proc.stderr
    index = json.loads(skopeo.inspect(f"docker://{dest}", raw=True))
    assert index["mediaType"] == OCI_INDEX
    assert len(index["manifests"]) == 2  # restore keeps the whole index
    for entry, child in zip(index["manifests"], pushed.children, strict=True):
        manifest = json.loads(
            skopeo.inspect(f"docker://{dest.split(':m')[0]}@{entry['digest']}", raw=True)
        )
        assert manifest["config"]["digest"] == child.config_descriptor.digest
        assert [la["mediaType"] for la in manifest["layers"]] == [OCI_LAYER_ZSTD]

    # sync with --all into the same place twice: the second run sees the same configs and skips
    prefix = f"docker://{registry.host}/zskip-{unique_repo.split('/')[-1]}"
    for expected in ("copied", "skipped"):
        proc = run_bale(
            "sync",
            src,
            prefix,
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd",
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[0] == expected, proc.stdout


@pytest.mark.integration
def test_copy_into_a_tar_with_zstd_reads_back_with_skopeo(
    registry, image_factory, unique_repo, tmp_path, skopeo
):
    pushed = image_factory.push(
        image_factory.image(layers=LAYERS[:2]), f"{unique_repo}:t", registry
    )
    tar = tmp_path / "z.tar"
    proc = run_bale(
        "copy",
        f"docker://{registry.host}/{unique_repo}:t",
        f"oci-archive:{tar}",
        "--src-tls-verify=false",
        "--dest-compress-format=zstd",
    )
    assert proc.returncode == 0, proc.stderr
    digest = proc.stderr.split("(", 1)[1].split(",", 1)[0]
    raw = json.loads(skopeo.run("inspect", "--raw", f"oci-archive:{tar}").stdout)
    assert [la["mediaType"] for la in raw["layers"]] == [OCI_LAYER_ZSTD] * 2
    assert raw["config"]["digest"] == pushed.config_descriptor.digest
    back = f"docker://{registry.host}/{unique_repo}-back:t"
    skopeo.copy(f"oci-archive:{tar}", back, "--dest-tls-verify=false", "--preserve-digests")
    assert skopeo.inspect(back)["Digest"] == digest != pushed.digest

"""`bale inspect` and `bale list-tags`: skopeo's JSON, key for key and value for value.

The semantics are read from skopeo (`cmd/skopeo/inspect.go`, `inspect/output.go`) and
containers/image (`manifest/{oci,docker_schema2,docker_schema1}.go` `Inspect`,
`internal/manifest/*` `ChooseInstance`, `internal/pkg/platform`):
- for an index, the instance is chosen as containers/image does (wanted platforms in order,
  OCI entries without a platform last, zstd instances preferred on ties, then position); the
  `Digest` stays the index's own;
- `Created` is the config's time re-printed the way Go prints a `time.Time` (RFC 3339 with
  trailing zeros of the fraction dropped, `Z` for UTC); for Docker schema2 a missing time is
  Go's zero time, for OCI it is `null`;
- maps and lists are `null` when the config lacks them and `{}`/`[]` when they are empty;
- `Variant` is not printed (skopeo's output type has no such field), `Tag` only for schema1;
- `--config` is the config decoded into the OCI image-spec `Image` type and encoded again, so
  Docker-only fields disappear, exactly as skopeo shows it.
Output is encoded as Go's `json.MarshalIndent(v, "", "    ")` does, HTML escaping included.

Everything works from an `ImageSource`-shaped object (`manifest(digest)`, `blob(descriptor)`),
so `--from STORE` only needs a source for archived images.
"""

from __future__ import annotations

import json
import logging
import platform as _host
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.errors import AuthError, ManifestError
from pipeline.oci import (
    DOCKER_MANIFEST,
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_TYPES,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    RawManifest,
    choose_platform,
    verify_digest,
)
from pipeline.refs import Reference
from pipeline.registry.client import RegistryClient

log = logging.getLogger("bale.inspect")

ZSTD_INSTANCE_ANNOTATION = "io.github.containers.compression.zstd"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "armv5tel": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
}
_ARM_VARIANTS = {"arm": ["v8", "v7", "v6", "v5"], "arm64": ["v8"]}


class ManifestSource(Protocol):
    """What inspect reads from: the same shape as `pipeline.image.ImageSource`."""

    def manifest(self, digest: str | None = None) -> RawManifest: ...

    def blob(self, descriptor: Descriptor) -> bytes: ...


# ---- platform choice (containers/image internal/pkg/platform) ---------------------------------


def _host_arch() -> str:
    machine = _host.machine().lower()
    return _GOARCH.get(machine, machine)


def _host_variant(arch: str) -> str:
    if arch == "arm64":
        return "v8"
    if arch != "arm":
        return ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "CPU architecture":
                    number = value.strip()
                    return {"8": "v8", "7": "v7", "6": "v6", "5": "v5"}.get(number[:1], "")
    except OSError:
        pass
    return ""


def wanted_platforms(choice: Platform | None = None) -> list[Platform]:
    """The platforms an index entry may match, most wanted first (`WantedPlatforms`)."""
    os_name = choice.os if choice is not None else "linux"
    if choice is not None:
        arch = choice.architecture
        variant = choice.variant or ""
    else:
        arch = _host_arch()
        variant = _host_variant(arch)
    order = _ARM_VARIANTS.get(arch)
    variants: list[str]
    if variant:
        if order is not None and variant in order:
            variants = order[order.index(variant) :]
        else:
            variants = [variant]
        variants.append("")
    else:
        variants = ["", *(order or [])]
    return [Platform(os_name, arch, v or None) for v in variants]


def choose_instance(index: ImageIndex, choice: Platform | None = None) -> Descriptor:
    """The index entry skopeo would inspect (`ChooseInstance`): wanted platforms in order
    (variants exactly), then for an OCI index entries without a platform, zstd instances
    preferred on ties, then position."""
    wanted = wanted_platforms(choice)
    oci = index.media_type == OCI_INDEX
    position = choose_platform(
        [d.platform for d in index.manifests],
        wanted,
        exact_variant=True,
        unplatformed=oci,
        preferred=[
            oci and d.annotations.get(ZSTD_INSTANCE_ANNOTATION) == "true" for d in index.manifests
        ],
    )
    if position is not None:
        return index.manifests[position]
    first = wanted[0]
    kind = "image index" if oci else "manifest list"
    raise ManifestError(
        f"no image found in {kind} for architecture {first.architecture!r}, "
        f"variant {first.variant or ''!r}, OS {first.os!r}"
    )


# ---- Go decoding and encoding ------------------------------------------------------------------

_TIME_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def go_time(value: Any, what: str) -> str:
    """An RFC 3339 time as Go's `time.Time` marshals it after parsing it."""
    if not isinstance(value, str):
        raise ManifestError(f"{what}: time {value!r} is not a string")
    match = _TIME_RE.match(value)
    if match is None:
        raise ManifestError(f"{what}: time {value!r} is not RFC 3339")
    date, clock, fraction, zone = match.groups()
    out = f"{date}T{clock}"
    fraction = (fraction or "")[:9].rstrip("0")
    if fraction:
        out += "." + fraction
    if zone in ("Z", "z") or zone[1:] == "00:00":
        return out + "Z"
    return out + zone


def _go_field(obj: dict[str, Any] | None, name: str) -> Any:
    """`obj[name]` matched as Go's decoder matches keys to a field: case-insensitively, the
    last matching key of the document winning."""
    if not obj:
        return None
    value = None
    lower = name.lower()
    for key, item in obj.items():
        if key.lower() == lower:
            value = item
    return value


def _object(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return value


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ManifestError(f"{what} is not a string")
    return value


def _strings(value: Any, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{what} is not a list of strings")
    return list(value)


def _string_map(value: Any, what: str) -> dict[str, str] | None:
    obj = _object(value, what)
    if obj is None:
        return None
    if not all(isinstance(v, str) for v in obj.values()):
        raise ManifestError(f"{what} has non-string values")
    return {k: obj[k] for k in sorted(obj)}


def _set_map(value: Any, what: str) -> dict[str, dict[str, Any]] | None:
    """`map[string]struct{}` (ExposedPorts, Volumes): keys kept, values become `{}`."""
    obj = _object(value, what)
    if obj is None:
        return None
    return {k: {} for k in sorted(obj)}


def render_json(value: Any) -> str:
    """`json.MarshalIndent(value, "", "    ")` plus the newline skopeo prints after it."""
    text = json.dumps(value, indent=4, ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text + "\n"


# ---- the image behind a reference -------------------------------------------------------------


@dataclass(frozen=True)
class InspectedImage:
    """The manifest skopeo reports on: `top` as fetched, `image` the chosen instance."""

    top: RawManifest
    image: RawManifest
    document: dict[str, Any]

    @property
    def is_schema1(self) -> bool:
        return self.image.media_type in SCHEMA1_TYPES


def resolve(source: ManifestSource, *, platform: Platform | None = None) -> InspectedImage:
    top = source.manifest()
    image = top
    if top.media_type in INDEX_TYPES:
        index = top.parse()
        assert isinstance(index, ImageIndex)
        entry = choose_instance(index, platform)
        image = source.manifest(entry.digest)
        verify_digest(image.data, entry.digest, "index entry")
        if image.media_type in INDEX_TYPES:
            raise ManifestError(f"index entry {entry.digest} is itself an index")
    document = json.loads(image.data)
    if not isinstance(document, dict):  # pragma: no cover - RawManifest checked it
        raise ManifestError("manifest is not a JSON object")
    return InspectedImage(top, image, document)


def _config_descriptor(image: InspectedImage) -> Descriptor:
    parsed = image.image.parse()
    if not isinstance(parsed, ImageManifest):
        raise ManifestError(f"{image.image.media_type} has no config")
    return parsed.config


def config_bytes(source: ManifestSource, image: InspectedImage) -> bytes:
    """The config blob, verified (what `--config --raw` prints)."""
    if image.is_schema1:
        raise ManifestError("Docker schema1 images have no config blob to show")
    return source.blob(_config_descriptor(image))


def _load_config(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError("image config is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ManifestError("image config is not a JSON object")
    return obj


def _layers_data(
    document: dict[str, Any], media_type: str
) -> tuple[list[str], list[dict[str, Any]]]:
    layers = _go_field(document, "layers") or []
    digests: list[str] = []
    data: list[dict[str, Any]] = []
    for layer in layers:
        entry = _object(layer, "layer descriptor") or {}
        digest = _string(_go_field(entry, "digest"), "layer digest")
        size = _go_field(entry, "size")
        annotations = None
        if media_type != DOCKER_MANIFEST:  # schema2 descriptors have no annotations field
            annotations = _string_map(_go_field(entry, "annotations"), "layer annotations")
        digests.append(digest)
        data.append(
            {
                "MIMEType": _string(_go_field(entry, "mediaType"), "layer mediaType"),
                "Digest": digest,
                "Size": size if isinstance(size, int) else 0,
                "Annotations": annotations,
            }
        )
    return digests, data


def _inspect_info(source: ManifestSource, image: InspectedImage) -> dict[str, Any]:
    """containers/image `ImageInspectInfo`, the fields skopeo prints."""
    if image.is_schema1:
        return _schema1_info(image.document)
    media_type = image.image.media_type
    config_desc = _config_descriptor(image)
    if media_type == OCI_MANIFEST and config_desc.media_type != OCI_CONFIG:
        raise ManifestError(
            f"not an image: an artifact with config type {config_desc.media_type!r}"
        )
    config = _load_config(source.blob(config_desc))
    inner = _object(_go_field(config, "config"), "config.config")
    created_value = _go_field(config, "created")
    if media_type == OCI_MANIFEST:
        created = None if created_value is None else go_time(created_value, "config created")
    else:
        created = (
            GO_ZERO_TIME if created_value is None else go_time(created_value, "config created")
        )
    layers, layers_data = _layers_data(image.document, media_type)
    return {
        "Tag": "",
        "Created": created,
        "DockerVersion": _string(_go_field(config, "docker_version"), "docker_version"),
        "Labels": _string_map(_go_field(inner, "Labels"), "Labels") if inner else None,
        "Architecture": _string(_go_field(config, "architecture"), "architecture"),
        "Os": _string(_go_field(config, "os"), "os"),
        "Layers": layers,
        "LayersData": layers_data,
        "Env": _strings(_go_field(inner, "Env"), "Env") if inner else None,
    }


def _schema1_info(document: dict[str, Any]) -> dict[str, Any]:
    history = _go_field(document, "history") or []
    if not history:
        raise ManifestError("schema1 manifest has no history")
    compat = _object(history[0], "schema1 history") or {}
    v1 = json.loads(_string(_go_field(compat, "v1Compatibility"), "v1Compatibility") or "{}")
    if not isinstance(v1, dict):
        raise ManifestError("schema1 v1Compatibility is not a JSON object")
    inner = _object(_go_field(v1, "config"), "v1Compatibility config")
    created_value = _go_field(v1, "created")
    fs_layers = [_object(x, "fsLayers entry") or {} for x in _go_field(document, "fsLayers") or []]
    layers = [_string(_go_field(x, "blobSum"), "blobSum") for x in reversed(fs_layers)]
    return {
        "Tag": _string(_go_field(document, "tag"), "tag"),
        "Created": GO_ZERO_TIME if created_value is None else go_time(created_value, "created"),
        "DockerVersion": _string(_go_field(v1, "docker_version"), "docker_version"),
        "Labels": _string_map(_go_field(inner, "Labels"), "Labels") if inner else None,
        "Architecture": _string(_go_field(v1, "architecture"), "architecture"),
        "Os": _string(_go_field(v1, "os"), "os"),
        "Layers": layers,
        "LayersData": [
            {"MIMEType": "", "Digest": d, "Size": -1, "Annotations": None} for d in layers
        ],
        "Env": _strings(_go_field(inner, "Env"), "Env") if inner else None,
    }


def inspect_source(
    source: ManifestSource,
    *,
    name: str,
    tags: Callable[[], list[str]] | None = None,
    platform: Platform | None = None,
) -> dict[str, Any]:
    """skopeo inspect's output for any source; `tags` lists the repository's tags (None: `[]`,
    as skopeo prints for transports without tags)."""
    image = resolve(source, platform=platform)
    info = _inspect_info(source, image)
    repo_tags: list[str] | None = []
    if tags is not None:
        try:
            repo_tags = tags()
        except AuthError:
            log.warning("registry disallows tag list retrieval; skipping")
            repo_tags = None  # skopeo assigns the failed call's nil slice
    out: dict[str, Any] = {}
    if name:
        out["Name"] = name
    if info["Tag"]:
        out["Tag"] = info["Tag"]
    out["Digest"] = image.top.digest
    out["RepoTags"] = repo_tags
    for key in ("Created", "DockerVersion", "Labels", "Architecture", "Os", "Layers"):
        out[key] = info[key]
    out["LayersData"] = info["LayersData"]
    out["Env"] = info["Env"]
    return out


def raw_manifest(source: ManifestSource) -> bytes:
    """The top manifest's exact bytes (`--raw`)."""
    return source.manifest().data


def raw_config(source: ManifestSource, *, platform: Platform | None = None) -> bytes:
    """The chosen image's config blob, exact bytes (`--raw --config`)."""
    return config_bytes(source, resolve(source, platform=platform))


def image_config(source: ManifestSource, *, platform: Platform | None = None) -> dict[str, Any]:
    """The config as skopeo's `--config` shows it (decoded into OCI's `Image`, re-encoded)."""
    return oci_config(config_bytes(source, resolve(source, platform=platform)))


def oci_config(data: bytes) -> dict[str, Any]:
    """image-spec v1.1 `Image` round-trip: only its fields survive, in its order."""
    config = _load_config(data)
    out: dict[str, Any] = {}
    created = _go_field(config, "created")
    if created is not None:
        out["created"] = go_time(created, "config created")
    author = _string(_go_field(config, "author"), "author")
    if author:
        out["author"] = author
    out["architecture"] = _string(_go_field(config, "architecture"), "architecture")
    out["os"] = _string(_go_field(config, "os"), "os")
    os_version = _string(_go_field(config, "os.version"), "os.version")
    if os_version:
        out["os.version"] = os_version
    features = _strings(_go_field(config, "os.features"), "os.features")
    if features:
        out["os.features"] = features
    variant = _string(_go_field(config, "variant"), "variant")
    if variant:
        out["variant"] = variant
    inner = _image_config(_object(_go_field(config, "config"), "config.config"))
    if inner is not None:
        out["config"] = inner
    rootfs = _object(_go_field(config, "rootfs"), "rootfs") or {}
    out["rootfs"] = {
        "type": _string(_go_field(rootfs, "type"), "rootfs.type"),
        "diff_ids": _strings(_go_field(rootfs, "diff_ids"), "rootfs.diff_ids"),
    }
    history = _go_field(config, "history")
    if history:
        if not isinstance(history, list):
            raise ManifestError("history is not a list")
        out["history"] = [_history(_object(h, "history entry") or {}) for h in history]
    return out


def _image_config(inner: dict[str, Any] | None) -> dict[str, Any] | None:
    """`ImageConfig` with `omitempty` fields; None when it is Go's zero value (`omitzero`)."""
    if inner is None:
        return None
    out: dict[str, Any] = {}
    fields: list[tuple[str, Callable[[Any, str], Any]]] = [
        ("User", _string),
        ("ExposedPorts", _set_map),
        ("Env", _strings),
        ("Entrypoint", _strings),
        ("Cmd", _strings),
        ("Volumes", _set_map),
        ("WorkingDir", _string),
        ("Labels", _string_map),
        ("StopSignal", _string),
    ]
    zero = True
    for key, decode in fields:
        value = decode(_go_field(inner, key), key)
        if value is not None and value != "":
            zero = False  # a non-nil empty map or list is not Go's zero value
        if value:
            out[key] = value
    escaped = _go_field(inner, "ArgsEscaped")
    if escaped is not None and not isinstance(escaped, bool):
        raise ManifestError("ArgsEscaped is not a boolean")
    if escaped:
        out["ArgsEscaped"] = True
        zero = False
    return None if zero else out


def _history(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    created = _go_field(entry, "created")
    if created is not None:
        out["created"] = go_time(created, "history created")
    for key in ("created_by", "author", "comment"):
        value = _string(_go_field(entry, key), f"history {key}")
        if value:
            out[key] = value
    empty = _go_field(entry, "empty_layer")
    if empty is not None and not isinstance(empty, bool):
        raise ManifestError("history empty_layer is not a boolean")
    if empty:
        out["empty_layer"] = True
    return out


def tag_list(ref: Reference, client: RegistryClient) -> dict[str, Any]:
    """`skopeo list-tags docker://REPO`: the repository's name and every tag."""
    return {"Repository": ref.name, "Tags": client.list_tags(ref.repository)}

"""Where things live in the store: the registry's own storage layout, plus `images/`.

The content-addressed area copies distribution's `registry/storage/paths.go` exactly, so a
stock registry given the same bucket and `rootdirectory: <prefix>` serves what bale archived.
Link files hold the bare digest (`sha256:<hex>`, no newline), as distribution's
`blobStore.link` writes them. distribution also keeps `_uploads/` under each repository for
uploads in progress; bale never writes there (its uploads are the store's own multipart
uploads), but gc may find leftovers of a registry that shared the bucket.

Every function here validates the names it is given (repository, tag, digest) with the rules
of `pipeline.refs`, so a key is only ever built from a validated name: never `..`, never an
absolute path, never an empty segment. The parsers going the other way ignore keys that do
not fit rather than raise, because listing a bucket finds whatever else lives there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.errors import InvalidReference
from pipeline.oci import Descriptor
from pipeline.refs import Reference, is_valid_digest, is_valid_repository, is_valid_tag

REGISTRY_ROOT = "docker/registry/v2/"
BLOBS_PREFIX = REGISTRY_ROOT + "blobs/"
REPOSITORIES_PREFIX = REGISTRY_ROOT + "repositories/"
IMAGES_PREFIX = "images/"

TAR_SUFFIX = ".tar"
RECORD_SUFFIX = ".json"

_DIGEST_STEM_RE = re.compile(r"^sha256-([a-f0-9]{64})$")
_HISTORY_STEM_RE = re.compile(r"^(.+)@sha256-([a-f0-9]{64})$")
_BLOB_KEY_RE = re.compile(r"^docker/registry/v2/blobs/sha256/([a-f0-9]{2})/([a-f0-9]{64})/data$")
_LINK_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def _check_repo(repo: str) -> str:
    if not isinstance(repo, str) or not is_valid_repository(repo):
        raise InvalidReference(f"invalid store repository {repo!r}")
    return repo


def _check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not is_valid_tag(tag):
        raise InvalidReference(f"invalid tag {tag!r}")
    return tag


def _digest_parts(digest: str) -> tuple[str, str]:
    """`(algorithm, hex)` of a valid digest; only sha256 is stored (distribution's default)."""
    if not isinstance(digest, str) or not is_valid_digest(digest) or ":" not in digest:
        raise InvalidReference(f"invalid digest {digest!r}")
    algorithm, hex_ = digest.split(":", 1)
    if algorithm != "sha256":
        raise InvalidReference(f"unsupported digest algorithm in {digest!r}: only sha256")
    return algorithm, hex_


# --- the content-addressed area ------------------------------------------------------------


def blob_key(digest: str) -> str:
    """`docker/registry/v2/blobs/sha256/<hex[0:2]>/<hex>/data`: the blob's exact bytes."""
    algorithm, hex_ = _digest_parts(digest)
    return f"{BLOBS_PREFIX}{algorithm}/{hex_[:2]}/{hex_}/data"


def blob_key_for(descriptor: Descriptor) -> str:
    """`blob_key` of a descriptor: the shape `tarplan.to_compose_pieces` asks for."""
    return blob_key(descriptor.digest)


def digest_from_blob_key(key: str) -> str | None:
    """The digest a blob key stores, or None for any other key (gc walks `blobs/`)."""
    m = _BLOB_KEY_RE.match(key)
    if not m or not m.group(2).startswith(m.group(1)):
        return None
    return f"sha256:{m.group(2)}"


def repository_prefix(repo: str) -> str:
    """`docker/registry/v2/repositories/<repo>/`, the root of one repository's links."""
    return f"{REPOSITORIES_PREFIX}{_check_repo(repo)}/"


def layers_prefix(repo: str) -> str:
    return repository_prefix(repo) + "_layers/"


def revisions_prefix(repo: str) -> str:
    return repository_prefix(repo) + "_manifests/revisions/"


def tags_prefix(repo: str) -> str:
    return repository_prefix(repo) + "_manifests/tags/"


def uploads_prefix(repo: str) -> str:
    """distribution's in-progress uploads; bale reads it only to report or clean leftovers."""
    return repository_prefix(repo) + "_uploads/"


def layer_link_key(repo: str, digest: str) -> str:
    """Links a blob (layer or config) into a repository, as distribution's `linkBlob` does."""
    algorithm, hex_ = _digest_parts(digest)
    return f"{layers_prefix(repo)}{algorithm}/{hex_}/link"


def revision_link_key(repo: str, digest: str) -> str:
    """Makes a manifest (or index) fetchable by digest in the repository."""
    algorithm, hex_ = _digest_parts(digest)
    return f"{revisions_prefix(repo)}{algorithm}/{hex_}/link"


def tag_current_link_key(repo: str, tag: str) -> str:
    """What the tag points at now; its presence is what makes the tag exist."""
    return f"{tags_prefix(repo)}{_check_tag(tag)}/current/link"


def tag_index_link_key(repo: str, tag: str, digest: str) -> str:
    """Every digest the tag ever pointed at (distribution deletes by walking these)."""
    algorithm, hex_ = _digest_parts(digest)
    return f"{tags_prefix(repo)}{_check_tag(tag)}/index/{algorithm}/{hex_}/link"


def link_body(digest: str) -> bytes:
    """The content of every link file: the digest itself, no trailing newline."""
    _digest_parts(digest)
    return digest.encode("ascii")


def parse_link_body(data: bytes) -> str | None:
    """The digest in a link file, or None when it holds anything else.

    distribution parses the content with `digest.Parse` and so tolerates nothing around it;
    surrounding whitespace is accepted here only so that a hand-edited link still reads.
    """
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return text if _LINK_RE.match(text) else None


def tags_from_keys(repo: str, keys: Iterable[str]) -> list[str]:
    """Tags of `repo` from keys listed under `tags_prefix(repo)`, sorted.

    A tag exists when its `current/link` exists, as in distribution's tag store; keys of an
    `index/` alone (a half-deleted tag) do not make one.
    """
    prefix = tags_prefix(repo)
    tags = set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :].split("/")
        if len(rest) == 3 and rest[1:] == ["current", "link"] and is_valid_tag(rest[0]):
            tags.add(rest[0])
    return sorted(tags)


# --- images/: per-image tars and records -----------------------------------------------------


def _image_stem(repo: str, tag: str | None, digest: str | None) -> str:
    _check_repo(repo)
    if digest is not None:
        _, hex_ = _digest_parts(digest)
        return f"{IMAGES_PREFIX}{repo}/sha256-{hex_}"
    if tag is not None:
        return f"{IMAGES_PREFIX}{repo}/{_check_tag(tag)}"
    raise InvalidReference(f"image in {repo!r} needs a tag or a digest")


def tar_key(repo: str, tag: str | None = None, digest: str | None = None) -> str:
    """`images/<repo>/<tag>.tar`, or `images/<repo>/sha256-<hex>.tar` for a digest reference.

    A reference pinned by digest (`repo:tag@sha256:...` too) is named by its digest: what was
    archived is that exact manifest, and a later archive of the moving tag must not replace it.
    """
    return _image_stem(repo, tag, digest) + TAR_SUFFIX


def record_key(repo: str, tag: str | None = None, digest: str | None = None) -> str:
    """`images/<repo>/<tag>.json` (or `sha256-<hex>.json`), next to the tar it describes."""
    return _image_stem(repo, tag, digest) + RECORD_SUFFIX


def history_tar_key(repo: str, tag: str, digest: str) -> str:
    """`images/<repo>/<tag>@sha256-<hex>.tar`: the tag's image of that digest, kept when the
    tag moved on (docs/layout.md). `@` is never in a tag, so no current tar has this name."""
    return _history_stem(repo, tag, digest) + TAR_SUFFIX


def history_record_key(repo: str, tag: str, digest: str) -> str:
    """`images/<repo>/<tag>@sha256-<hex>.json`, the record beside `history_tar_key`."""
    return _history_stem(repo, tag, digest) + RECORD_SUFFIX


def _history_stem(repo: str, tag: str, digest: str) -> str:
    _, hex_ = _digest_parts(digest)
    return f"{IMAGES_PREFIX}{_check_repo(repo)}/{_check_tag(tag)}@sha256-{hex_}"


def tar_key_for(ref: Reference) -> str:
    return tar_key(ref.store_repo, ref.tag, ref.digest)


def record_key_for(ref: Reference) -> str:
    return record_key(ref.store_repo, ref.tag, ref.digest)


def record_key_of_tar(key: str) -> str:
    """The record that sits next to a tar key."""
    if not key.startswith(IMAGES_PREFIX) or not key.endswith(TAR_SUFFIX):
        raise InvalidReference(f"not a tar key: {key!r}")
    return key[: -len(TAR_SUFFIX)] + RECORD_SUFFIX


@dataclass(frozen=True)
class ImageKey:
    """A key under `images/` taken apart.

    A name of the form `sha256-<64 hex>` is read as a digest reference. A tag can be spelt
    that way too (cosign's referrers fallback tags are), so the record, which holds both the
    tag and the digest, is what settles it.
    """

    key: str
    repo: str
    kind: str
    """`"tar"` or `"record"`."""
    tag: str | None = None
    digest: str | None = None
    history: bool = False
    """A tag's earlier image (`<tag>@sha256-<hex>`): both `tag` and `digest` are set."""


def parse_image_key(key: str) -> ImageKey | None:
    """The parts of a tar or record key, or None for any other key under `images/`."""
    if not key.startswith(IMAGES_PREFIX):
        return None
    if key.endswith(TAR_SUFFIX):
        kind, stem = "tar", key[len(IMAGES_PREFIX) : -len(TAR_SUFFIX)]
    elif key.endswith(RECORD_SUFFIX):
        kind, stem = "record", key[len(IMAGES_PREFIX) : -len(RECORD_SUFFIX)]
    else:
        return None
    repo, slash, name = stem.rpartition("/")
    if not slash or not is_valid_repository(repo):
        return None
    m = _DIGEST_STEM_RE.match(name)
    if m:
        return ImageKey(key=key, repo=repo, kind=kind, digest=f"sha256:{m.group(1)}")
    if is_valid_tag(name):
        return ImageKey(key=key, repo=repo, kind=kind, tag=name)
    m = _HISTORY_STEM_RE.match(name)
    if m and is_valid_tag(m.group(1)):
        digest = f"sha256:{m.group(2)}"
        return ImageKey(key=key, repo=repo, kind=kind, tag=m.group(1), digest=digest, history=True)
    return None

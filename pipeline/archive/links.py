"""The registry's link files read back from a listing: which repository, which kind, which digest.

`layout` builds link keys; `verify` and `gc` walk a bucket and need the other direction. A key
is accepted only if `layout` would build exactly that key from the parts found in it, so what
comes out is as validated as what goes in, and anything else under `repositories/` (a
registry's `_uploads/`, stray files) is ignored rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.archive import layout
from pipeline.errors import InvalidReference

LinkKind = Literal["layer", "revision", "tag-current", "tag-index"]


@dataclass(frozen=True)
class LinkKey:
    """One link file's key taken apart."""

    key: str
    repo: str
    kind: LinkKind
    digest: str | None
    """The digest the path names (its body must hold the same); None for a tag's current link,
    whose body alone says what the tag points at."""
    tag: str | None = None

    @property
    def describe(self) -> str:
        """How a fault or a gc line names this link: `layer link in docker.io/library/nginx`."""
        what = {
            "layer": "layer link",
            "revision": "revision link",
            "tag-current": f"tag {self.tag}",
            "tag-index": f"tag {self.tag} history",
        }[self.kind]
        return f"{what} in {self.repo}"


def parse_link_key(key: str) -> LinkKey | None:
    """The parts of a link key, or None for any other key under `repositories/`."""
    if not key.startswith(layout.REPOSITORIES_PREFIX) or not key.endswith("/link"):
        return None
    parts = key[len(layout.REPOSITORIES_PREFIX) :].split("/")
    split = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
    if not split:
        return None
    repo, tail = "/".join(parts[:split]), parts[split:]
    found: LinkKey | None = None
    try:
        if len(tail) == 4 and tail[0] == "_layers":
            digest = f"{tail[1]}:{tail[2]}"
            found = LinkKey(layout.layer_link_key(repo, digest), repo, "layer", digest)
        elif len(tail) == 5 and tail[:2] == ["_manifests", "revisions"]:
            digest = f"{tail[2]}:{tail[3]}"
            found = LinkKey(layout.revision_link_key(repo, digest), repo, "revision", digest)
        elif len(tail) == 5 and tail[:2] == ["_manifests", "tags"] and tail[3] == "current":
            built = layout.tag_current_link_key(repo, tail[2])
            found = LinkKey(built, repo, "tag-current", None, tail[2])
        elif len(tail) == 7 and tail[:2] == ["_manifests", "tags"] and tail[3] == "index":
            digest = f"{tail[4]}:{tail[5]}"
            built = layout.tag_index_link_key(repo, tail[2], digest)
            found = LinkKey(built, repo, "tag-index", digest, tail[2])
    except InvalidReference:
        return None
    if found is None or found.key != key:
        return None
    return found

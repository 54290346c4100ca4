"""Image references, parsed and normalised the way docker/distribution does.

One place decides what a reference means, so that keys in the store (built from the repository
and tag) can only ever come from validated names: no `..`, no absolute paths, no surprises.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from pipeline.errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z", re.ASCII)
_DOMAIN_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z", re.ASCII)
DIGEST_RE = re.compile(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_MAX_NAME = 255


def is_valid_tag(tag: str) -> bool:
    return bool(TAG_RE.match(tag))


def is_valid_digest(digest: str) -> bool:
    return bool(DIGEST_RE.match(digest))


def is_valid_repository(path: str) -> bool:
    return len(path) <= _MAX_NAME and bool(_PATH_RE.match(path))


def _looks_like_domain(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or (component.startswith("["))
    )


@dataclass(frozen=True)
class Reference:
    """A parsed image reference: `registry/repository[:tag][@digest]`.

    `registry` is the domain as users write it (`docker.io`, `127.0.0.1:5000`, `[::1]:5000`).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: str | None = "latest") -> Reference:
        """Parse `[docker://]name[:tag][@digest]`; a name with neither gets `default_tag`."""
        original = text
        if text.startswith("docker://"):
            text = text[len("docker://") :]
        if not text or text != text.strip() or any(c.isspace() for c in text):
            raise InvalidReference(f"invalid image reference {original!r}: empty or has spaces")
        digest: str | None = None
        if "@" in text:
            text, digest = text.split("@", 1)
            if not is_valid_digest(digest):
                raise InvalidReference(f"invalid image reference {original!r}: bad digest")
        tag: str | None = None
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > slash:
            text, tag = text[:colon], text[colon + 1 :]
            if not is_valid_tag(tag):
                raise InvalidReference(f"invalid image reference {original!r}: bad tag {tag!r}")
        first, _, rest = text.partition("/")
        if rest and _looks_like_domain(first):
            registry, path = first, rest
            if not _DOMAIN_RE.match(registry) or (
                registry.startswith("[") and _ipv6_address(registry) is None
            ):
                raise InvalidReference(
                    f"invalid image reference {original!r}: bad registry {registry!r}"
                )
        else:
            registry, path = DOCKER_HUB, text
        if registry.lower() in _HUB_ALIASES:
            registry = DOCKER_HUB
            if "/" not in path:
                path = f"library/{path}"
        if not is_valid_repository(path):
            raise InvalidReference(
                f"invalid image reference {original!r}: repository {path!r} must be lower-case "
                "components of letters, digits and separators"
            )
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """`registry/repository`, as skopeo prints it in `Name`."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def store_repo(self) -> str:
        """The repository path inside the store: `store_host(registry)`, then the path."""
        return f"{store_host(self.registry)}/{self.repository}"

    def with_tag(self, tag: str | None) -> Reference:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str | None) -> Reference:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _ipv6_address(registry: str) -> ipaddress.IPv6Address | None:
    """The address of a bracketed registry (`[::1]:5000`), None for a name or a bad literal."""
    if not registry.startswith("["):
        return None
    try:
        return ipaddress.IPv6Address(registry[1:].partition("]")[0])
    except ValueError:
        return None


def store_host(registry: str) -> str:
    """The registry as the first component of a store repository.

    A name or IPv4 host is lower-cased with its port's `:` as `-` (`127.0.0.1-5000`). An IPv6
    literal is written as its eight groups in lower-case hex without leading zeros, joined by
    `_`, brackets dropped (`[::1]:5000` → `0_0_0_0_0_0_0_1-5000`): a valid repository
    component (a `-` or `::` at either end is not), one per address however it was spelt, and
    unambiguous, because a DNS name never holds `_`. The address reads back by splitting the
    groups on `_`.
    """
    address = _ipv6_address(registry)
    if address is None:
        return registry.lower().replace(":", "-")
    groups = "_".join(f"{int(group, 16):x}" for group in address.exploded.split(":"))
    return groups + registry.rpartition("]")[2].replace(":", "-")


def parse_repository(text: str) -> Reference:
    """A repository without tag or digest (`docker://host/repo`), as `list-tags` takes."""
    ref = Reference.parse(text, default_tag=None)
    if ref.tag or ref.digest:
        raise InvalidReference(f"expected a repository without tag or digest, got {text!r}")
    return ref

"""Push events into images to archive: distribution envelopes, Harbor webhooks, generic lists.

Parsing is strict about shape (a body that is not what its endpoint expects is a 400, so a
misconfigured sender shows up at once) and lenient about events that are not pushes of a
manifest (pulls, blob pushes, deletes, scans): those are ignored, not refused. A push for a
registry outside the allow-list is refused: the service never fetches from a host that a
caller chooses.

    distribution: {"events": [{"action": "push", "target": {"mediaType", "digest",
                   "repository", "tag"}, "request": {"host"}}]}
    harbor:       {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"digest", "tag",
                   "resource_url": "HOST/PROJECT/REPO:TAG"}], "repository": {...}}}
                  or CloudEvents (structured: {"specversion", "type":
                   "harbor.artifact.pushed", "data": {...}}; binary: `ce-type` header)
    generic:      {"image": REF} | {"image": [REF, ...]} | [REF | {"image": REF}, ...]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import BaleError
from pipeline.refs import Reference, is_valid_digest, is_valid_repository, is_valid_tag

MANIFEST_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    }
)
HARBOR_PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed"})


class BadEvent(BaleError):
    """The body is not an event of the kind its endpoint takes (answered 400)."""


@dataclass(frozen=True)
class Push:
    """One pushed image: registry host as the sender names it, repository, tag and/or digest."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> Reference:
        """What is archived: the tag when there is one (its tar and record are per tag), else
        the digest."""
        if self.tag:
            return Reference(self.registry, self.repository, tag=self.tag)
        return Reference(self.registry, self.repository, digest=self.digest)

    @property
    def key(self) -> str:
        return str(self.reference)


@dataclass(frozen=True)
class Refused:
    what: str
    reason: str


@dataclass(frozen=True)
class Parsed:
    pushes: list[Push]
    refused: list[Refused]
    ignored: int


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadEvent(f"body is not JSON: {exc}") from None


def _push(registry: str, repository: str, tag: str | None, digest: str | None, what: str) -> Push:
    """A push checked the way `Reference.parse` checks a name; `registry` normalised too."""
    if not repository or not is_valid_repository(repository):
        raise BadEvent(f"{what}: bad repository {repository!r}")
    if tag is not None and not is_valid_tag(tag):
        raise BadEvent(f"{what}: bad tag {tag!r}")
    if digest is not None and not is_valid_digest(digest):
        raise BadEvent(f"{what}: bad digest {digest!r}")
    if tag is None and digest is None:
        raise BadEvent(f"{what}: neither tag nor digest")
    try:
        ref = Reference.parse(f"{registry}/{repository}@sha256:{'0' * 64}")
    except BaleError:
        raise BadEvent(f"{what}: bad registry {registry!r}") from None
    if ref.repository != repository:  # a host that parses as a path component (no . or :)
        raise BadEvent(f"{what}: bad registry {registry!r}")
    return Push(ref.registry, repository, tag, digest)


def parse_distribution(body: bytes) -> tuple[list[Push], int]:
    """Manifest pushes of a notification envelope; other events are counted as ignored."""
    data = _json(body)
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list):
        raise BadEvent("not a distribution envelope: no 'events' list")
    pushes: list[Push] = []
    ignored = 0
    for n, event in enumerate(events):
        if not isinstance(event, dict):
            raise BadEvent(f"events[{n}] is not an object")
        target = event.get("target") or {}
        request = event.get("request") or {}
        if not isinstance(target, dict) or not isinstance(request, dict):
            raise BadEvent(f"events[{n}]: target/request are not objects")
        if event.get("action") != "push" or target.get("mediaType") not in MANIFEST_TYPES:
            ignored += 1
            continue
        host = request.get("host")
        if not isinstance(host, str) or not host:
            raise BadEvent(f"events[{n}]: no request.host")
        pushes.append(
            _push(
                host,
                str(target.get("repository") or ""),
                target.get("tag") or None,
                target.get("digest") or None,
                f"events[{n}]",
            )
        )
    return pushes, ignored


def _split_resource_url(url: str, what: str) -> tuple[str, str]:
    """`harbor.example.com/library/alpine:1.0` (or `@sha256:…`) → host, repository."""
    host, _, rest = url.partition("/")
    if not rest:
        raise BadEvent(f"{what}: resource_url {url!r} names no repository")
    repository = rest.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    return host, repository


def parse_harbor(body: bytes, headers: Mapping[str, str]) -> tuple[list[Push], int]:
    """Harbor's Default JSON or its CloudEvents (structured or binary mode)."""
    data = _json(body)
    if not isinstance(data, dict):
        raise BadEvent("not a Harbor webhook: body is not an object")
    if "specversion" in data:
        kind, payload = data.get("type"), data.get("data")
    elif "ce-type" in headers:
        kind, payload = headers["ce-type"], data
    else:
        kind, payload = data.get("type"), data.get("event_data")
    if not isinstance(kind, str):
        raise BadEvent("not a Harbor webhook: no event type")
    if kind not in HARBOR_PUSH_TYPES:
        return [], 1
    if not isinstance(payload, dict) or not isinstance(payload.get("resources"), list):
        raise BadEvent("Harbor push event without event_data.resources")
    pushes: list[Push] = []
    for n, resource in enumerate(payload["resources"]):
        what = f"resources[{n}]"
        if not isinstance(resource, dict) or not isinstance(resource.get("resource_url"), str):
            raise BadEvent(f"{what}: no resource_url")
        host, repository = _split_resource_url(resource["resource_url"], what)
        pushes.append(
            _push(host, repository, resource.get("tag") or None, resource.get("digest"), what)
        )
    return pushes, 0


def parse_generic(body: bytes) -> list[Push]:
    data = _json(body)
    items: list[Any]
    if isinstance(data, dict) and "image" in data:
        items = data["image"] if isinstance(data["image"], list) else [data["image"]]
    elif isinstance(data, list):
        items = [i.get("image") if isinstance(i, dict) else i for i in data]
    else:
        raise BadEvent('expected {"image": REF}, {"image": [REF, ...]} or a list')
    pushes: list[Push] = []
    for n, item in enumerate(items):
        if not isinstance(item, str):
            raise BadEvent(f"image {n} is not a string")
        try:
            ref = Reference.parse(item)
        except BaleError as exc:
            raise BadEvent(str(exc)) from None
        pushes.append(Push(ref.registry, ref.repository, ref.tag, ref.digest))
    return pushes


def parse(kind: str, body: bytes, headers: Mapping[str, str]) -> tuple[list[Push], int]:
    """The pushes an endpoint's body names, and how many of its events were ignored."""
    if kind == "distribution":
        return parse_distribution(body)
    if kind == "harbor":
        return parse_harbor(body, headers)
    return parse_generic(body), 0


def screen(pushes: list[Push], allowed: frozenset[str]) -> Parsed:
    """Split by the allow-list (registry hosts as written, compared without case)."""
    ok: list[Push] = []
    refused: list[Refused] = []
    for push in pushes:
        if push.registry.lower() in allowed:
            ok.append(push)
        else:
            refused.append(Refused(push.key, f"registry {push.registry} is not allowed"))
    return Parsed(ok, refused, 0)

"""Spec files: skopeo's `sync --src yaml` format, read unchanged, expanded to a list of images.

The format and its meaning follow skopeo's `cmd/skopeo/sync.go` (and `docs/skopeo-sync.1.md`):

    registry.example.com:            # a registry host (may carry a path prefix, as in skopeo)
      images:                        # repository -> tags and/or digests; [] = every tag
        busybox: []
        redis: ["1.0", "2.0", "sha256:0000…1111"]
      images-by-tag-regex:           # repository -> Go RE2 regex, unanchored (`MatchString`)
        nginx: ^1\\.13\\.[12]-alpine-perl$
      images-by-semver:              # repository -> Masterminds/semver constraint
        alpine: ">= 3.12.0"
      credentials: {username: john, password: secret}   # skopeo also reads `identitytoken`
      tls-verify: true               # absent = leave the command line's setting alone
      cert-dir: /home/john/certs
      immutable: true                # bale's own: or [redis, nginx]; see `bale run --immutable`
      storage-class: blobs=DEEP_ARCHIVE,tars=GLACIER_IR   # bale's own; as --storage-class

What skopeo does and bale keeps: a repository is `<registry key>/<repository>` normalised the
docker way (`docker.io/busybox` → `docker.io/library/busybox`); an entry of `images` is tried as
a digest first, then as a tag; tag values are the scalar's text (`1.0` stays `"1.0"`, as Go's
yaml.v3 decodes a scalar into a string); `tls-verify` takes YAML booleans and yaml.v3's extra
spellings (`y`, `yes`, `on`, `n`, `no`, `off` in their three cases); a regex or semver entry
lists the repository's tags and keeps, in the registry's order, those whose tag matches (tags that
do not parse as a version never match a constraint); YAML anchors and `<<` merges work.

Where bale is deliberately stricter, so that a typo fails the run before any transfer instead of
being logged and skipped: unknown keys, duplicate keys, wrong types, bad repository names, bad
tags or digests, invalid regexes and invalid constraints are `UsageError`s naming `file:line`.
And where skopeo walks Go maps in random order, bale is deterministic: registries in file order;
within a registry `images`, then `images-by-tag-regex`, then `images-by-semver` (skopeo's order);
repositories in file order; tags in the order written or listed. An image selected twice is
kept once, at its first place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipeline.archive.classes import StorageClasses
from pipeline.errors import BaleError, InvalidReference, UsageError
from pipeline.refs import Reference, is_valid_digest, parse_repository
from pipeline.registry.credentials import Credentials
from pipeline.retention import Retention
from pipeline.semver import Constraints
from pipeline.tagmatch import compile_tag_regex

SelectorKind = Literal["images", "images-by-tag-regex", "images-by-semver"]

_REGISTRY_KEYS = (
    "images",
    "images-by-tag-regex",
    "images-by-semver",
    "credentials",
    "tls-verify",
    "cert-dir",
    "immutable",
    "retention",
    "storage-class",
)
_RETENTION_KEYS = (
    "keep-last",
    "keep-tags",
    "keep-semver",
    "keep-within",
    "exclude-tags",
    "repositories",
)
_CREDENTIAL_KEYS = ("username", "password", "identitytoken")

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_NULL_WORDS = frozenset({"", "~", "null", "Null", "NULL"})
# yaml.v3 decodes YAML 1.2 booleans, and these YAML 1.1 words too when the target is a bool.
_TRUE_PLAIN = frozenset({"true", "True", "TRUE"})
_FALSE_PLAIN = frozenset({"false", "False", "FALSE"})
_TRUE_WORDS = frozenset({"y", "Y", "yes", "Yes", "YES", "on", "On", "ON"})
_FALSE_WORDS = frozenset({"n", "N", "no", "No", "NO", "off", "Off", "OFF"})


_MERGER = yaml.constructor.SafeConstructor()  # only its stateless `flatten_mapping` is used


@dataclass(frozen=True)
class RepoSelector:
    """One repository of a registry entry and how its images are chosen.

    `kind == "images"` with `refs` names the images outright (no tag listing); with no `refs`
    it means every tag. The other kinds list the tags and keep those matching `pattern`.
    """

    kind: SelectorKind
    repository: Reference
    line: int
    refs: tuple[Reference, ...] = ()
    pattern: str | None = None
    _matcher: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)

    @property
    def lists_tags(self) -> bool:
        return not self.refs

    def matches(self, tag: str) -> bool:
        """Whether a listed tag is selected: always for `images: []`, else by the pattern."""
        return self._matcher is None or self._matcher(tag)


@dataclass(frozen=True)
class RegistrySpec:
    """One top-level entry: a registry key and its options, which apply to all its images."""

    name: str
    line: int
    selectors: tuple[RepoSelector, ...] = ()
    credentials: Credentials | None = None
    tls_verify: bool | None = None
    """None when the spec does not say: the command line's `--src-tls-verify` applies."""
    cert_dir: str | None = None
    immutable: bool = False
    """`immutable: true`: every image of the entry (archive's `--immutable`)."""
    immutable_repos: frozenset[str] = frozenset()
    """`immutable: [repo, ...]`: those repositories' images (full names, `host/path`)."""

    def is_immutable(self, ref: Reference) -> bool:
        return self.immutable or ref.name in self.immutable_repos

    retention: Retention | None = None
    """`bale prune`'s rules for every repository under this registry key."""
    repository_retention: tuple[tuple[Reference, Retention], ...] = ()
    """Rules for single repositories (`retention: repositories:`), instead of `retention`."""
    storage_class: str | None = None
    """`--storage-class` for this registry's images (None: the command line's)."""


@dataclass(frozen=True)
class Spec:
    source: str
    registries: tuple[RegistrySpec, ...] = ()


@dataclass(frozen=True)
class SpecImage:
    """One image a spec selects, with the options of the registry entry it came from."""

    ref: Reference
    credentials: Credentials | None = None
    tls_verify: bool | None = None
    cert_dir: str | None = None
    immutable: bool = False
    storage_class: str | None = None


ListTags = Callable[[str, str, RegistrySpec], list[str]]
"""`list_tags(registry, repository, registry_spec)` → the repository's tags, registry order."""

OnListError = Callable[[RepoSelector, RegistrySpec, BaleError], None]


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; every problem is a `UsageError` naming `file:line`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot read spec file {str(path)!r}: {reason}") from None
    return parse_spec(text, str(path))


def parse_spec(text: str, source: str = "<spec>") -> Spec:
    """Validate spec text; `source` names it in error messages."""
    return _Parser(source).parse(text)


def expand(
    spec: Spec, list_tags: ListTags, *, on_error: OnListError | None = None
) -> list[SpecImage]:
    """The images a spec selects, in the deterministic order described in the module doc.

    `list_tags` is called at most once per repository of a registry entry, only for `[]`, regex
    and semver selectors. A `BaleError` it raises propagates, unless `on_error` is given: then
    `on_error(selector, registry_spec, error)` is told and that selector contributes nothing,
    as skopeo logs and skips a repository whose tags it cannot list.
    """
    images: list[SpecImage] = []
    seen: set[str] = set()
    for registry in spec.registries:
        tag_cache: dict[str, list[str]] = {}
        for selector in registry.selectors:
            try:
                refs = list(_select(registry, selector, list_tags, tag_cache))
            except BaleError as exc:
                if on_error is None:
                    raise
                on_error(selector, registry, exc)
                continue
            for ref in refs:
                key = str(ref)
                if key in seen:
                    continue
                seen.add(key)
                images.append(
                    SpecImage(
                        ref,
                        registry.credentials,
                        registry.tls_verify,
                        registry.cert_dir,
                        registry.is_immutable(ref),
                        registry.storage_class,
                    )
                )
    return images


def _select(
    registry: RegistrySpec,
    selector: RepoSelector,
    list_tags: ListTags,
    cache: dict[str, list[str]],
) -> Iterator[Reference]:
    if selector.refs:
        yield from selector.refs
        return
    repo = selector.repository
    if repo.repository not in cache:
        cache[repo.repository] = list(list_tags(repo.registry, repo.repository, registry))
    for tag in cache[repo.repository]:
        try:
            ref = Reference.parse(f"{repo.name}:{tag}")
        except InvalidReference:
            continue  # skopeo logs "Error creating a tagged reference" and skips the tag
        if selector.matches(tag):
            yield ref


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        # Aliased nodes are visited once per alias; flattening mutates them, so remember results.
        self._mappings: dict[int, list[tuple[yaml.ScalarNode, yaml.Node]]] = {}

    def error(self, node: yaml.Node | None, message: str) -> UsageError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return UsageError(f"{self.source}{line}: {message}")

    def parse(self, text: str) -> Spec:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = exc.problem or exc.context or "invalid YAML"
            raise UsageError(f"{self.source}{where}: invalid YAML: {problem}") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{self.source}: invalid YAML: {exc}") from None
        finally:
            loader.dispose()
        if root is None or self.is_null(root):
            return Spec(self.source)
        registries = tuple(
            self.registry(key, value)
            for key, value in self.mapping(root, "the spec", "registry hosts")
        )
        return Spec(self.source, registries)

    # --- YAML node helpers -------------------------------------------------------------

    @staticmethod
    def is_null(node: yaml.Node) -> bool:
        if not isinstance(node, yaml.ScalarNode):
            return False
        if node.tag == "tag:yaml.org,2002:null":
            return True
        return node.style is None and node.tag != _STR and node.value in _NULL_WORDS

    def mapping(
        self, node: yaml.Node, what: str, expected: str
    ) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        """A mapping's pairs (null = empty), duplicate keys refused, `<<` merges applied."""
        if self.is_null(node):
            return []
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping of {expected}")
        if id(node) in self._mappings:
            return self._mappings[id(node)]
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if key.tag == _MERGE:
                continue
            if not isinstance(key, yaml.ScalarNode):
                raise self.error(key, f"{what}: keys must be plain strings")
            if key.value in seen:
                raise self.error(
                    key, f"mapping key {key.value!r} already defined at line {seen[key.value]}"
                )
            seen[key.value] = key.start_mark.line + 1
        try:
            _MERGER.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            raise self.error(node, f"{what}: bad merge: {exc.problem}") from None
        merged: dict[str, tuple[yaml.ScalarNode, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.error(key, f"{what}: keys must be plain strings")
            merged.pop(key.value, None)
            merged[key.value] = (key, value)  # later wins: own keys override merged ones
        self._mappings[id(node)] = pairs = list(merged.values())
        return pairs

    def string(self, node: yaml.Node, what: str, *, allow_null: bool = False) -> str:
        if self.is_null(node):
            if allow_null:
                return ""
            raise self.error(node, f"{what} must not be empty (null)")
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{what} must be a string")
        return str(node.value)

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        if self.is_null(node):
            return None
        if isinstance(node, yaml.ScalarNode):
            plain = node.style is None and node.tag != _STR
            if (plain and node.value in _TRUE_PLAIN) or node.value in _TRUE_WORDS:
                return True
            if (plain and node.value in _FALSE_PLAIN) or node.value in _FALSE_WORDS:
                return False
        shown = node.value if isinstance(node, yaml.ScalarNode) else getattr(node, "id", "node")
        raise self.error(node, f"{what} must be true or false, not {shown!r}")

    # --- the format ----------------------------------------------------------------------

    def registry(self, key: yaml.ScalarNode, node: yaml.Node) -> RegistrySpec:
        name = key.value
        if not name or "://" in name or name != name.strip():
            raise self.error(key, f"invalid registry {name!r}: expected a host such as quay.io")
        selectors: list[RepoSelector] = []
        by_kind: dict[str, list[RepoSelector]] = {k: [] for k in _REGISTRY_KEYS[:3]}
        credentials: Credentials | None = None
        tls_verify: bool | None = None
        cert_dir: str | None = None
        immutable, immutable_repos = False, frozenset[str]()
        retention: Retention | None = None
        per_repo: list[tuple[Reference, Retention]] = []
        storage_class: str | None = None
        for opt_key, value in self.mapping(node, f"registry {name!r}", "options"):
            option = opt_key.value
            where = f"{name} {option}"
            if option == "images":
                for repo_key, refs in self.mapping(value, where, "repository: [tags]"):
                    by_kind["images"].append(self.images(name, repo_key, refs))
            elif option in ("images-by-tag-regex", "images-by-semver"):
                for repo_key, pattern in self.mapping(value, where, "repository: text"):
                    by_kind[option].append(self.filtered(option, name, repo_key, pattern))
            elif option == "credentials":
                credentials = self.credentials(value, f"{name} credentials")
            elif option == "tls-verify":
                tls_verify = self.boolean(value, f"{name} tls-verify")
            elif option == "cert-dir":
                cert_dir = self.string(value, f"{name} cert-dir", allow_null=True) or None
            elif option == "immutable":
                immutable, immutable_repos = self.immutable(name, value)
            elif option == "retention":
                retention = self.retention(value, f"{name} retention", opt_key, top=True)
                for repo_key, rules in self.retention_repositories(value, name):
                    found = self.retention(rules, f"{name} {repo_key.value} retention", repo_key)
                    if found is not None:
                        per_repo.append((self.repository(name, repo_key), found))
            elif option == "storage-class":
                storage_class = self.string(value, f"{name} storage-class")
                try:
                    StorageClasses.parse(storage_class)
                except UsageError as exc:
                    raise self.error(value, str(exc).replace("--storage-class", option)) from None
            else:
                raise self.error(
                    opt_key,
                    f"unknown key {option!r} in registry {name!r} "
                    f"(expected one of: {', '.join(_REGISTRY_KEYS)})",
                )
        for kind in _REGISTRY_KEYS[:3]:
            selectors.extend(by_kind[kind])
        return RegistrySpec(
            name=name,
            line=key.start_mark.line + 1,
            selectors=tuple(selectors),
            credentials=credentials,
            tls_verify=tls_verify,
            cert_dir=cert_dir,
            immutable=immutable,
            immutable_repos=immutable_repos,
            retention=retention,
            repository_retention=tuple(per_repo),
            storage_class=storage_class,
        )

    def immutable(self, registry: str, node: yaml.Node) -> tuple[bool, frozenset[str]]:
        """`immutable: true|false`, or a list of the entry's repositories."""
        if isinstance(node, yaml.SequenceNode):
            repos = []
            for item in node.value:
                if not isinstance(item, yaml.ScalarNode) or self.is_null(item):
                    raise self.error(item, f"{registry} immutable: entries must be repositories")
                repos.append(self.repository(registry, item).name)
            return False, frozenset(repos)
        return bool(self.boolean(node, f"{registry} immutable")), frozenset()

    def retention_repositories(
        self, node: yaml.Node, registry: str
    ) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        for key, value in self.mapping(node, f"{registry} retention", "rules"):
            if key.value == "repositories":
                return self.mapping(value, f"{registry} retention repositories", "rules")
        return []

    def retention(
        self, node: yaml.Node, what: str, at: yaml.Node, *, top: bool = False
    ) -> Retention | None:
        """A `retention:` block's rules (None when it only holds `repositories:`)."""
        values: dict[str, yaml.Node] = {}
        for key, value in self.mapping(node, what, "rules"):
            allowed = _RETENTION_KEYS if top else _RETENTION_KEYS[:-1]
            if key.value not in allowed:
                raise self.error(
                    key,
                    f"unknown key {key.value!r} in {what} (expected one of: {', '.join(allowed)})",
                )
            if key.value != "repositories":
                values[key.value] = value
        if not values and top:
            return None
        keep_last = None
        if "keep-last" in values:
            number = self.string(values["keep-last"], f"{what} keep-last")
            if not number.isdigit():
                raise self.error(values["keep-last"], f"{what} keep-last must be a number")
            keep_last = int(number)
        exclude: list[str] = []
        if "exclude-tags" in values:
            item = values["exclude-tags"]
            if isinstance(item, yaml.SequenceNode):
                exclude = [self.string(x, f"{what} exclude-tags entry") for x in item.value]
            else:
                exclude = self.string(item, f"{what} exclude-tags").split(",")

        def text(name: str) -> str | None:
            return self.string(values[name], f"{what} {name}") if name in values else None

        try:
            return Retention.build(
                keep_last=keep_last,
                keep_tags=text("keep-tags"),
                keep_semver=text("keep-semver"),
                keep_within=text("keep-within"),
                exclude_tags=tuple(t.strip() for t in exclude),
                where=f"{self.source}:{at.start_mark.line + 1}",
            )
        except UsageError as exc:
            raise UsageError(f"{exc} ({what})") from None

    def repository(self, registry: str, key: yaml.ScalarNode) -> Reference:
        try:
            return parse_repository(f"{registry}/{key.value}")
        except InvalidReference:
            raise self.error(
                key,
                f"invalid repository {key.value!r} in registry {registry!r}: expected a name "
                "without tag or digest, lower-case components of letters, digits and separators",
            ) from None

    def images(self, registry: str, key: yaml.ScalarNode, node: yaml.Node) -> RepoSelector:
        repo = self.repository(registry, key)
        line = key.start_mark.line + 1
        if self.is_null(node):
            return RepoSelector("images", repo, line)
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"images of {key.value!r} must be a list of tags or digests")
        refs: list[Reference] = []
        for item in node.value:
            text = self.string(item, f"an image of {key.value!r}")
            # skopeo: "first try as digest", then as a tag.
            spelled = f"{repo.name}@{text}" if is_valid_digest(text) else f"{repo.name}:{text}"
            try:
                ref = Reference.parse(spelled)
            except InvalidReference:
                raise self.error(
                    item, f"{text!r} in {key.value!r} is neither a valid tag nor a digest"
                ) from None
            if ref not in refs:
                refs.append(ref)
        return RepoSelector("images", repo, line, refs=tuple(refs))

    def filtered(
        self, kind: SelectorKind, registry: str, key: yaml.ScalarNode, node: yaml.Node
    ) -> RepoSelector:
        repo = self.repository(registry, key)
        pattern = self.string(node, f"{kind} of {key.value!r}")
        matcher: Callable[[str], bool]
        try:
            if kind == "images-by-tag-regex":
                matcher = compile_tag_regex(pattern)
            else:
                matcher = Constraints(pattern).matches_tag
        except UsageError as exc:
            noun = "regular expression" if kind == "images-by-tag-regex" else "semver constraint"
            raise self.error(node, f"invalid {noun} {pattern!r} for {key.value!r}: {exc}") from None
        return RepoSelector(kind, repo, key.start_mark.line + 1, pattern=pattern, _matcher=matcher)

    def credentials(self, node: yaml.Node, what: str) -> Credentials | None:
        values = dict.fromkeys(_CREDENTIAL_KEYS, "")
        for key, value in self.mapping(node, what, "username, password"):
            if key.value not in values:
                raise self.error(
                    key,
                    f"unknown key {key.value!r} in {what} "
                    f"(expected one of: {', '.join(_CREDENTIAL_KEYS)})",
                )
            values[key.value] = self.string(value, f"{what} {key.value}", allow_null=True)
        if not any(values.values()):
            return None  # skopeo: an all-empty block means "use the auth files"
        return Credentials(values["username"], values["password"], values["identitytoken"] or None)


def retention_scopes(spec: Spec) -> list[tuple[str, Retention]]:
    """`bale prune`'s rule sets by scope, most specific first: a repository's full name, then
    a registry key with a trailing `/` (every repository under it)."""
    scoped: list[tuple[str, Retention]] = []
    for registry in spec.registries:
        for repo, rules in registry.repository_retention:
            scoped.append((repo.name, rules))
    for registry in spec.registries:
        if registry.retention is not None:
            scoped.append((registry.name.rstrip("/") + "/", registry.retention))
    return scoped

"""Retention rules: which archived images `bale prune` keeps, as Harbor and ECR users know them.

A rule set keeps an image when any of its keep rules does: the N most recently archived images
of the repository (`keep-last`), tags matching a regex (`keep-tags`, Go RE2, unanchored, as the
spec's `images-by-tag-regex`), tags inside a semver range (`keep-semver`, the spec's
`images-by-semver` dialect), anything archived within a duration (`keep-within`). `exclude-tags`
lists tags that are always kept (exceptions, not a keep rule). A rule set with no keep rule
would delete everything and is refused. Pinned images are kept whatever the rules say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.errors import UsageError


@dataclass(frozen=True)
class Retention:
    """One rule set; `where` names its origin in the plan (`command line`, `spec.yaml:12`)."""

    keep_last: int | None = None
    keep_tags: str | None = None
    keep_semver: str | None = None
    keep_within: float | None = None
    """Seconds."""
    keep_within_text: str | None = None
    """`keep_within` as the user wrote it (`90d`), for the plan."""
    exclude_tags: tuple[str, ...] = ()
    where: str = "command line"
    _tag_match: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    _semver_match: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        *,
        keep_last: int | None = None,
        keep_tags: str | None = None,
        keep_semver: str | None = None,
        keep_within: str | None = None,
        exclude_tags: tuple[str, ...] = (),
        where: str = "command line",
    ) -> Retention:
        """Validated rules; every problem is a UsageError (exit 2) naming the rule."""
        from pipeline.semver import Constraints
        from pipeline.tagmatch import compile_tag_regex
        from pipeline.units import parse_duration

        if keep_last is not None and keep_last < 1:
            raise UsageError(f"{where}: keep-last must be 1 or more, not {keep_last}")
        tag_match = semver_match = None
        if keep_tags is not None:
            try:
                tag_match = compile_tag_regex(keep_tags)
            except UsageError as exc:
                raise UsageError(f"{where}: invalid keep-tags regex {keep_tags!r}: {exc}") from None
        if keep_semver is not None:
            try:
                semver_match = Constraints(keep_semver).matches_tag
            except UsageError as exc:
                raise UsageError(f"{where}: invalid keep-semver {keep_semver!r}: {exc}") from None
        within = None
        if keep_within is not None:
            try:
                within = parse_duration(keep_within)
            except UsageError as exc:
                raise UsageError(f"{where}: keep-within: {exc}") from None
        rules = cls(
            keep_last=keep_last,
            keep_tags=keep_tags,
            keep_semver=keep_semver,
            keep_within=within,
            keep_within_text=keep_within,
            exclude_tags=tuple(t for t in exclude_tags if t),
            where=where,
            _tag_match=tag_match,
            _semver_match=semver_match,
        )
        if not rules.has_keep_rule:
            raise UsageError(
                f"{where}: no keep rule (keep-last, keep-tags, keep-semver or keep-within): "
                "this rule set would delete every image"
            )
        return rules

    @property
    def has_keep_rule(self) -> bool:
        return any(
            rule is not None
            for rule in (self.keep_last, self.keep_tags, self.keep_semver, self.keep_within)
        )

    def tag_rules(self, tag: str | None) -> list[str]:
        """The rules that keep an image by its tag alone (exceptions first)."""
        if tag is None:
            return []
        kept = []
        if tag in self.exclude_tags:
            kept.append(f"exclude-tags {tag}")
        if self._tag_match is not None and self._tag_match(tag):
            kept.append(f"keep-tags {self.keep_tags}")
        if self._semver_match is not None and self._semver_match(tag):
            kept.append(f"keep-semver {self.keep_semver}")
        return kept

"""Semantic-version constraints exactly as skopeo's `images-by-semver` applies them.

skopeo matches tags with Masterminds/semver v3 (v3.5.0 vendored in skopeo): `NewConstraint`
on the spec's string, `NewVersion` on each tag (tags that do not parse are skipped), then
`Constraints.Check`. That library has its own dialect (x-ranges, hyphen ranges, `~`, `^`, `,`
or space for AND, `||` for OR, a leading `v`, coerced leading zeros, and prereleases excluded
unless the AND group names one), which no PyPI package reproduces: `semver` does not parse
ranges and `packaging` is PEP 440. So this module is a line-by-line port of `version.go` and
`constraints.go`, keeping their regular expressions verbatim and running them on RE2, the
engine Go's `regexp` mirrors (leftmost-first, linear time, ASCII `\\s`, `$` only at the end).
A spec that parses and selects tags here parses and selects the same tags in skopeo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import re2

from pipeline.errors import UsageError

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def _go_regexp(pattern: str) -> re2._Regexp:
    return re2.compile(pattern, _RE2_OPTIONS)


MAX_VERSION_LEN = 256
MAX_CONSTRAINT_LEN = 512
MAX_CONSTRAINT_GROUPS = 32
_UINT64_MAX = 2**64 - 1

_LOOSE_SEMVER = (
    r"v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
)
_LOOSE_VERSION_RE = _go_regexp("^" + _LOOSE_SEMVER + "$")

_CV = (
    r"v?([0-9|x|X|\*]+)(\.[0-9|x|X|\*]+)?(\.[0-9|x|X|\*]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
)
_OPS = r"=||!=|>|<|>=|=>|<=|=<|~|~>|\^"
_CONSTRAINT_RE = _go_regexp(rf"^\s*({_OPS})\s*({_CV})\s*$")
_RANGE_RE = _go_regexp(rf"\s*({_CV})\s+-\s+({_CV})\s*")
_FIND_CONSTRAINT_RE = _go_regexp(rf"({_OPS})\s*({_CV})")
_VALID_CONSTRAINT_RE = _go_regexp(
    rf"^(\s*({_OPS})\s*({_CV})\s*)((?:\s+|,\s*)({_OPS})\s*({_CV})\s*)*$"
)

_NUM = frozenset("0123456789")
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789")


def _parse_uint(text: str) -> int | None:
    """Go's `strconv.ParseUint(text, 10, 64)`: ASCII digits only, at most 2**64-1."""
    if not text or not set(text) <= _NUM:
        return None
    value = int(text)
    return value if value <= _UINT64_MAX else None


def _validate_prerelease(pre: str) -> bool:
    for part in pre.split("."):
        if not part:
            return False
        if set(part) <= _NUM:
            if len(part) > 1 and part[0] == "0":
                return False
        elif not set(part) <= _ALLOWED:
            return False
    return True


def _validate_metadata(meta: str) -> bool:
    return all(part and set(part) <= _ALLOWED for part in meta.split("."))


@dataclass(frozen=True)
class Version:
    """A parsed version; `original` is the text it came from (a tag, for skopeo)."""

    major: int
    minor: int
    patch: int
    pre: str = ""
    metadata: str = ""
    original: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        """`semver.NewVersion` with its default `CoerceNewVersion = true`.

        Accepts `v1`, `1.2`, `01.002.3` (leading zeros coerced) and rejects `latest`, `V1.0`,
        `1.0.0-01` (leading zero in a numeric prerelease identifier).
        """
        if len(text) > MAX_VERSION_LEN:
            raise UsageError(f"version {text[:40]!r}... is too long (max {MAX_VERSION_LEN})")
        match = _LOOSE_VERSION_RE.match(text)
        if match is None:
            raise UsageError(f"invalid semantic version {text!r}")
        groups = [g or "" for g in match.groups()]
        parts = [_parse_uint(groups[0])]
        parts.append(_parse_uint(groups[1][1:]) if groups[1] else 0)
        parts.append(_parse_uint(groups[2][1:]) if groups[2] else 0)
        major, minor, patch = parts
        if major is None or minor is None or patch is None:
            raise UsageError(f"invalid semantic version {text!r}: segment out of range")
        pre, meta = groups[4], groups[7]
        if pre and not _validate_prerelease(pre):
            raise UsageError(f"invalid semantic version {text!r}: bad prerelease {pre!r}")
        if meta and not _validate_metadata(meta):
            raise UsageError(f"invalid semantic version {text!r}: bad metadata {meta!r}")
        return cls(major, minor, patch, pre, meta, text)

    def compare(self, other: Version) -> int:
        """-1, 0, 1 by semver precedence; metadata is ignored, a prerelease sorts first."""
        for mine, theirs in (
            (self.major, other.major),
            (self.minor, other.minor),
            (self.patch, other.patch),
        ):
            if mine != theirs:
                return -1 if mine < theirs else 1
        if not self.pre and not other.pre:
            return 0
        if not self.pre:
            return 1
        if not other.pre:
            return -1
        return _compare_prerelease(self.pre, other.pre)

    def __str__(self) -> str:
        out = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            out += f"-{self.pre}"
        if self.metadata:
            out += f"+{self.metadata}"
        return out


def _compare_prerelease(mine: str, theirs: str) -> int:
    my_parts, their_parts = mine.split("."), theirs.split(".")
    for i in range(max(len(my_parts), len(their_parts))):
        a = my_parts[i] if i < len(my_parts) else ""
        b = their_parts[i] if i < len(their_parts) else ""
        d = _compare_pre_part(a, b)
        if d:
            return d
    return 0


def _compare_pre_part(s: str, o: str) -> int:
    if s == o:
        return 0
    if not s:
        return -1
    if not o:
        return 1
    si, oi = _parse_uint(s), _parse_uint(o)
    if si is None and oi is None:
        return 1 if s > o else -1
    if oi is None:
        return -1  # s is a number, o is not: numbers sort first
    if si is None:
        return 1
    return 1 if si > oi else -1


def _is_x(text: str) -> bool:
    return text in ("x", "*", "X")


@dataclass(frozen=True)
class _Constraint:
    op: str
    orig: str
    con: Version
    dirty: bool
    minor_dirty: bool
    patch_dirty: bool

    def check(self, v: Version, include_pre: bool) -> bool:
        return _OPS_TABLE[self.op](v, self, include_pre)


def _parse_constraint(text: str) -> _Constraint:
    match = _CONSTRAINT_RE.match(text)
    if match is None:
        raise UsageError(f"improper constraint: {text!r}")
    m = ["", *(g or "" for g in match.groups())]
    ver = m[2]
    dirty = minor_dirty = patch_dirty = False
    if _is_x(m[3]) or m[3] == "":
        ver = f"0.0.0{m[6]}"
        dirty = True
    elif _is_x(m[4].removeprefix(".")) or m[4] == "":
        minor_dirty = dirty = True
        ver = f"{m[3]}.0.0{m[6]}"
    elif _is_x(m[5].removeprefix(".")) or m[5] == "":
        dirty = patch_dirty = True
        ver = f"{m[3]}{m[4]}.0{m[6]}"
    try:
        con = Version.parse(ver)
    except UsageError:
        raise UsageError(f"improper constraint: {text!r}") from None
    return _Constraint(m[1], m[2], con, dirty, minor_dirty, patch_dirty)


def _excluded_pre(v: Version, include_pre: bool) -> bool:
    return bool(v.pre) and not include_pre


def _not_equal(v: Version, c: _Constraint, include_pre: bool) -> bool:
    if _excluded_pre(v, include_pre):
        return False
    if c.dirty:
        if c.con.major != v.major:
            return True
        if c.con.minor != v.minor and not c.minor_dirty:
            return True
        if c.minor_dirty:
            return False
        if c.con.patch != v.patch and not c.patch_dirty:
            return True
        if c.patch_dirty:
            if v.pre or c.con.pre:
                return _compare_prerelease(v.pre, c.con.pre) != 0
            return False
    return v.compare(c.con) != 0


def _greater_than(v: Version, c: _Constraint, include_pre: bool) -> bool:
    if _excluded_pre(v, include_pre):
        return False
    if not c.dirty:
        return v.compare(c.con) == 1
    if v.major > c.con.major:
        return True
    if v.major < c.con.major:
        return False
    if c.minor_dirty:
        return False
    if c.patch_dirty:
        return v.minor > c.con.minor
    return v.compare(c.con) == 1


def _less_than(v: Version, c: _Constraint, include_pre: bool) -> bool:
    if _excluded_pre(v, include_pre):
        return False
    return v.compare(c.con) < 0


def _greater_equal(v: Version, c: _Constraint, include_pre: bool) -> bool:
    if _excluded_pre(v, include_pre):
        return False
    return v.compare(c.con) >= 0


def _less_equal(v: Version, c: _Constraint, include_pre: bool) -> bool:
    if _excluded_pre(v, include_pre):
        return False
    if not c.dirty:
        return v.compare(c.con) <= 0
    if v.major > c.con.major:
        return False
    return not (v.major == c.con.major and v.minor > c.con.minor and not c.minor_dirty)


def _tilde(v: Version, c: _Constraint, include_pre: bool) -> bool:
    if _excluded_pre(v, include_pre):
        return False
    if v.compare(c.con) < 0:
        return False
    con = c.con
    if (con.major, con.minor, con.patch) == (0, 0, 0) and not c.minor_dirty and not c.patch_dirty:
        return True  # ~0.0.0 and ~* accept everything
    if v.major != con.major:
        return False
    return not (v.minor != con.minor and not c.minor_dirty)


def _tilde_or_equal(v: Version, c: _Constraint, include_pre: bool) -> bool:
    if _excluded_pre(v, include_pre):
        return False
    if c.dirty:
        return _tilde(v, c, include_pre)
    return v.compare(c.con) == 0


def _caret(v: Version, c: _Constraint, include_pre: bool) -> bool:
    if _excluded_pre(v, include_pre):
        return False
    if v.compare(c.con) < 0:
        return False
    con = c.con
    if con.major > 0 or c.minor_dirty:
        return v.major == con.major
    if v.major > 0:
        return False
    if con.minor > 0 or c.patch_dirty:
        return v.minor == con.minor
    if v.minor > 0:
        return False
    return con.patch == v.patch


_OPS_TABLE: dict[str, Callable[[Version, _Constraint, bool], bool]] = {
    "": _tilde_or_equal,
    "=": _tilde_or_equal,
    "!=": _not_equal,
    ">": _greater_than,
    "<": _less_than,
    ">=": _greater_equal,
    "=>": _greater_equal,
    "<=": _less_equal,
    "=<": _less_equal,
    "~": _tilde,
    "~>": _tilde,
    "^": _caret,
}


def _rewrite_range(text: str) -> str:
    """`1.2 - 1.4.5` → `>= 1.2, <= 1.4.5 `, substituting the first occurrence each time as Go does."""
    out = text
    for match in _RANGE_RE.finditer(text):
        low, high = match.group(1) or "", match.group(11) or ""
        out = out.replace(match.group(0), f">= {low}, <= {high} ", 1)
    return out


class Constraints:
    """A parsed constraint string: OR groups of AND-ed comparisons."""

    def __init__(self, text: str) -> None:
        """`semver.NewConstraint`; raises `UsageError` where it returns an error."""
        if len(text) > MAX_CONSTRAINT_LEN:
            raise UsageError(f"constraint is too long (max {MAX_CONSTRAINT_LEN} bytes)")
        self.text = text
        ors = _rewrite_range(text).split("||")
        if len(ors) > MAX_CONSTRAINT_GROUPS:
            raise UsageError(f"too many constraint groups (max {MAX_CONSTRAINT_GROUPS})")
        self._groups: list[tuple[list[_Constraint], bool]] = []
        for segment in ors:
            if _VALID_CONSTRAINT_RE.match(segment) is None:
                raise UsageError(f"improper constraint: {segment!r}")
            found = [m.group(0) for m in _FIND_CONSTRAINT_RE.finditer(segment)] or [segment]
            parsed = [_parse_constraint(s) for s in found]
            self._groups.append((parsed, any(c.con.pre for c in parsed)))

    def check(self, version: Version) -> bool:
        """True when any OR group accepts `version`; prereleases only where the group has one."""
        return any(all(c.check(version, has_pre) for c in group) for group, has_pre in self._groups)

    def matches_tag(self, tag: str) -> bool:
        """skopeo's filter: a tag that does not parse as a version never matches."""
        try:
            version = Version.parse(tag)
        except UsageError:
            return False
        return self.check(version)

    def __repr__(self) -> str:
        return f"Constraints({self.text!r})"

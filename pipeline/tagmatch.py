"""Tag patterns as skopeo's `images-by-tag-regex` reads them (Go's regexp: RE2, unanchored), for
the spec's tag selection and `bale prune`'s `--keep-tags` alike."""

from __future__ import annotations

from collections.abc import Callable

import re2

from pipeline.errors import UsageError

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def compile_tag_regex(pattern: str) -> Callable[[str], bool]:
    """A Go `regexp.MustCompile(pattern).MatchString`: RE2 syntax, unanchored search."""
    if _has_escape_c(pattern):
        raise UsageError("invalid escape sequence: \\C")
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        message = exc.args[0] if exc.args else "invalid regular expression"
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        raise UsageError(str(message)) from None
    return lambda tag: compiled.search(tag) is not None


def _has_escape_c(pattern: str) -> bool:
    """`\\C` (any byte) is valid RE2 but rejected by Go's regexp."""
    i = 0
    while i < len(pattern) - 1:
        if pattern[i] == "\\":
            if pattern[i + 1] == "C":
                return True
            i += 2
        else:
            i += 1
    return False

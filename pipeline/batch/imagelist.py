"""Image lists for `bale archive --from-file LIST`: the shape a CI step can produce with `echo`.

One image per line, in any form `bale archive` takes (`nginx:1.17.6`, `docker://host/repo:tag`,
`host/repo@sha256:…`). Blank lines are ignored; `#` starts a comment, on its own line or after an
image (`#` cannot occur in a reference, so this is unambiguous). `-` reads standard input. The
whole list is validated before anything runs: a bad line is a `UsageError` naming `file:line`.
An image listed twice is kept once, at its first place.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from pipeline.errors import InvalidReference, UsageError
from pipeline.refs import Reference

STDIN = "-"


def parse_image_list(text: str, source: str = "<list>") -> list[Reference]:
    """The references in `text`; `source` names it in error messages."""
    refs: list[Reference] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        image = line.split("#", 1)[0].strip()
        if not image:
            continue
        try:
            ref = Reference.parse(image)
        except InvalidReference as exc:
            raise UsageError(f"{source}:{number}: {exc}") from None
        if str(ref) not in seen:
            seen.add(str(ref))
            refs.append(ref)
    return refs


def read_image_list(path: str | Path, stdin: TextIO | None = None) -> list[Reference]:
    """Read a list file, or standard input when `path` is `-`."""
    if str(path) == STDIN:
        stream = stdin if stdin is not None else sys.stdin
        return parse_image_list(stream.read(), "<stdin>")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot read image list {str(path)!r}: {reason}") from None
    return parse_image_list(text, str(path))

"""Sizes and durations as people type them (`50M`, `1.5G`, `90m`, `7d`) and as bale prints them.

Sizes are powers of 1024 whatever the spelling (`M`, `MB`, `MiB`): a rate cap or part size is
never meant in SI units here, and accepting both spellings with one meaning avoids surprises.
Every parse error is a `UsageError` naming the bad value, so the CLI exits 2 before any work.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from pipeline.errors import UsageError

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)

_DURATION_UNITS: dict[str, Decimal | int] = {
    "ms": Decimal("0.001"),
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 365 * 86400,
}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION_PART_RE = re.compile(rf"({_NUMBER})\s*(ms|[smhdwy])", re.IGNORECASE)
_DURATION_RE = re.compile(rf"^(?:{_NUMBER}\s*(?:ms|[smhdwy])\s*)+$", re.IGNORECASE)
_PLAIN_RE = re.compile(rf"^{_NUMBER}$")

_SIZE_NAMES = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def parse_size(text: str) -> int:
    """Bytes from `100`, `512K`, `50M`, `1.5G`, `2TiB`; fractions round down to whole bytes."""
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise UsageError(
            f"invalid size {text!r}: expected a number with an optional K/M/G/T suffix"
        )
    number, unit = match.groups()
    try:
        value = Decimal(number) * _SIZE_UNITS[unit.lower()]
    except InvalidOperation:
        raise UsageError(f"invalid size {text!r}") from None
    return int(value)


def parse_duration(text: str) -> float:
    """Seconds from `30`, `0s`, `90m`, `24h`, `7d`, `1.5h`, `7y` (365 days each, as S3 Object
    Lock counts years) or a sum such as `1h30m`."""
    if not isinstance(text, str):
        raise UsageError(f"invalid duration {text!r}")
    stripped = text.strip()
    if _PLAIN_RE.match(stripped):
        return float(stripped)
    if not stripped or not _DURATION_RE.match(stripped):
        raise UsageError(
            f"invalid duration {text!r}: expected a number with an optional s/m/h/d/y suffix"
        )
    total = Decimal(0)
    for number, unit in _DURATION_PART_RE.findall(stripped):
        total += Decimal(number) * _DURATION_UNITS[unit.lower()]
    return float(total)


def format_size(n: int) -> str:
    """`512 B`, `1.5 KiB`, `1.0 GiB`: one decimal once past bytes, in powers of 1024."""
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1024:
        return f"{sign}{int(value)} B"
    index = 0
    while index < len(_SIZE_NAMES) - 1 and round(value, 1) >= 1024:
        value /= 1024
        index += 1
    return f"{sign}{value:.1f} {_SIZE_NAMES[index]}"


class SizeParam(click.ParamType):
    """A click option value parsed with `parse_size` (bad values are click usage errors)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return parse_size(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class DurationParam(click.ParamType):
    """A click option value parsed with `parse_duration`, in seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return parse_duration(str(value))
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeParam()
DURATION = DurationParam()

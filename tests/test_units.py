from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from pipeline.errors import UsageError
from pipeline.units import (
    DURATION,
    SIZE,
    DurationParam,
    SizeParam,
    format_size,
    parse_duration,
    parse_size,
)

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100", 100),
        ("0", 0),
        ("512K", 512 * KiB),
        ("512k", 512 * KiB),
        ("50M", 50 * MiB),
        ("50MB", 50 * MiB),
        ("50MiB", 50 * MiB),
        ("50mib", 50 * MiB),
        ("1.5G", 3 * GiB // 2),
        ("1.5g", 3 * GiB // 2),
        ("2T", 2 * TiB),
        ("100B", 100),
        ("100b", 100),
        (" 8 M ", 8 * MiB),
        (".5K", 512),
        ("1.", 1),
        ("1.1K", 1126),  # 1126.4 rounds down
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "M", "abc", "-1", "-5M", "5X", "5 MM", "1e3", "inf", "nan", "5KiBB", "1.2.3"]
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text)
    message = str(info.value)
    assert repr(text) in message
    assert "\n" not in message
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", 0.0),
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("45s", 45.0),
        ("90m", 5400.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("7y", 7 * 365 * 86400.0),
        ("1.5h", 5400.0),
        ("1H", 3600.0),
        ("1h30m", 5400.0),
        ("2w", 1209600.0),
        ("250ms", 0.25),
        (" 10 s ", 10.0),
    ],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "s", "h1", "-1s", "5x", "1yr", "abc", "1h-30m", "inf"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (MiB - 1, "1.0 MiB"),  # never "1024.0 KiB"
        (5 * TiB, "5.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_size(n: int, expected: str) -> None:
    assert format_size(n) == expected


def test_format_parse_round_trip() -> None:
    for n in (1, 100, 5 * MiB, 3 * GiB // 2):
        text = format_size(n).replace(" ", "")
        assert abs(parse_size(text) - n) <= n * 0.05


def _command() -> click.Command:
    @click.command()
    @click.option("--limit-rate", type=SizeParam())
    @click.option("--older-than", type=DurationParam(), default="0s")
    def cmd(limit_rate: int | None, older_than: float) -> None:
        click.echo(f"{limit_rate} {older_than}")

    return cmd


def test_click_params_convert() -> None:
    result = CliRunner().invoke(_command(), ["--limit-rate", "50M", "--older-than", "90m"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{50 * MiB} 5400.0"


def test_click_params_defaults_and_passthrough() -> None:
    result = CliRunner().invoke(_command(), [])
    assert result.exit_code == 0
    assert result.output.strip() == "None 0.0"
    assert SIZE.convert(123, None, None) == 123
    assert DURATION.convert(1.5, None, None) == 1.5


def test_click_params_usage_error() -> None:
    result = CliRunner().invoke(_command(), ["--limit-rate", "fast"])
    assert result.exit_code == 2
    assert "invalid size 'fast'" in result.output
    result = CliRunner().invoke(_command(), ["--older-than", "soon"])
    assert result.exit_code == 2
    assert "invalid duration 'soon'" in result.output

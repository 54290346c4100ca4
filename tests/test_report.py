"""The run report: totals, exit code, JSON for `--report`, JUnit XML for `--junit`, scrubbing."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.batch.report import BYTE_FIELDS, ImageResult, RunReport, scrub

T0 = datetime(2024, 5, 1, 2, 0, 0, tzinfo=UTC)
SECRET = "p@ss word/42"


def sample() -> RunReport:
    report = RunReport(started=T0)
    report.add(
        ImageResult(
            "docker.io/library/nginx:1.27",
            "archived",
            digest="sha256:" + "a" * 64,
            bytes_downloaded=1000,
            bytes_uploaded=1200,
            bytes_already_stored=300,
            bytes_copied_server_side=900,
            seconds=2.5,
            tar_key="images/docker.io/library/nginx/1.27.tar",
        )
    )
    report.add(
        ImageResult(
            "docker.io/library/redis:7",
            "skipped",
            digest="sha256:" + "b" * 64,
            bytes_already_stored=5000,
            seconds=0.1,
            tar_key="images/docker.io/library/redis/7.tar",
        )
    )
    report.add(
        ImageResult(
            "registry.example.com/team/missing:v1",
            "failed",
            error=f"registry.example.com/team/missing:v1: manifest unknown <&\"'> {SECRET}",
            bytes_downloaded=10,
            seconds=0.4,
        )
    )
    report.finish(T0 + timedelta(seconds=3))
    return report


def test_totals_add_up() -> None:
    report = sample()
    totals = report.totals()
    assert totals["images"] == 3
    assert (totals["archived"], totals["skipped"], totals["failed"]) == (1, 1, 1)
    assert totals["images"] == sum(
        totals[s] for s in ("archived", "restored", "copied", "skipped", "planned", "failed")
    )
    for name in BYTE_FIELDS:
        assert totals[name] == sum(getattr(r, name) for r in report.results)
    assert totals["bytes_downloaded"] == 1010 and totals["bytes_already_stored"] == 5300
    assert totals["seconds"] == 3.0
    assert [r.source for r in report.failures] == ["registry.example.com/team/missing:v1"]


def test_exit_code_follows_design() -> None:
    report = sample()
    assert report.exit_code() == 1
    report.results.pop()
    assert report.exit_code() == 0
    assert RunReport().exit_code() == 0


def test_json_report_fields_and_round_trip() -> None:
    report = sample()
    data = json.loads(report.to_json(secrets=[SECRET]))
    assert data["version"] == 1
    assert data["started"] == "2024-05-01T02:00:00.000Z"
    assert data["finished"] == "2024-05-01T02:00:03.000Z"
    assert data["totals"] == report.totals()
    assert list(data["images"][0]) == [
        "source",
        "digest",
        "status",
        "error",
        "bytes_downloaded",
        "bytes_uploaded",
        "bytes_already_stored",
        "bytes_copied_server_side",
        "seconds",
        "tar_key",
        "destination",
        "source_digest",
    ]
    failed = data["images"][2]
    assert failed["status"] == "failed" and failed["digest"] is None
    assert "manifest unknown" in failed["error"] and SECRET not in failed["error"]
    back = RunReport.from_json(report.to_json())
    assert back.to_json() == report.to_json()


def test_junit_is_well_formed_and_counts() -> None:
    xml = sample().to_junit(secrets=[SECRET])
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml.encode())
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    for element in (root, suite):
        assert element.attrib["tests"] == "3"
        assert element.attrib["failures"] == "1"
        assert element.attrib["errors"] == "0"
        assert element.attrib["skipped"] == "1"
        assert element.attrib["time"] == "3.000"
    assert suite.attrib["timestamp"] == "2024-05-01T02:00:00"
    cases = suite.findall("testcase")
    assert [c.attrib["name"] for c in cases] == [
        "docker.io/library/nginx:1.27",
        "docker.io/library/redis:7",
        "registry.example.com/team/missing:v1",
    ]
    assert [c.attrib["time"] for c in cases] == ["2.500", "0.100", "0.400"]
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    assert "tar_key=images/docker.io/library/nginx/1.27.tar" in (
        cases[0].findtext("system-out") or ""
    )
    assert cases[1].find("skipped") is not None
    failure = cases[2].find("failure")
    assert failure is not None
    assert failure.attrib["message"].endswith("manifest unknown <&\"'> ***")
    assert failure.text == failure.attrib["message"]
    assert SECRET not in xml


def test_junit_survives_characters_xml_cannot_carry() -> None:
    report = RunReport(started=T0)
    report.add(ImageResult("docker.io/library/x:1", "failed", error="bad \x1b[31mred\x00 \x07bell"))
    report.finish(T0)
    root = ET.fromstring(report.to_junit().encode())
    message = root.find("testsuite/testcase/failure").attrib["message"]  # type: ignore[union-attr]
    assert message == "bad \ufffd[31mred\ufffd \ufffdbell"


def test_scrub() -> None:
    assert scrub("user:hunter2@host", ["hunter2"]) == "user:***@host"
    assert scrub("a=p%40ss%20word%2F42 b=p%40ss+word%2F42", [SECRET]) == "a=*** b=***"
    assert scrub("token abcdef and abc", ["abc", "abcdef"]) == "token *** and ***"
    assert scrub("nothing here", ["", None]) == "nothing here"


def test_result_validation_and_defaults() -> None:
    with pytest.raises(ValueError, match="unknown status"):
        ImageResult("x", "done")  # type: ignore[arg-type]
    assert ImageResult("x", "failed").error == "failed (no error message)"
    assert not ImageResult("x", "planned").failed


def test_naive_datetimes_are_utc_and_unfinished_reports_serialise() -> None:
    report = RunReport(started=datetime(2024, 5, 1, 2, 0, 0))
    data = json.loads(report.to_json())
    assert data["started"] == "2024-05-01T02:00:00.000Z" and data["finished"] is None

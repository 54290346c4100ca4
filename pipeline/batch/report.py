"""The run report: what happened to each image, for people (`--report FILE`) and CI (`--junit`).

One `ImageResult` per image, collected into a `RunReport`. The JSON form is the contract for
scripts (field names below are stable; `version` changes if they do). The JUnit form has one
testcase per image so CI systems show failed images as failed tests (and images a signal
interrupted as errors): GitHub and GitLab test
reports, Jenkins' junit step and similar parsers read `testsuites/testsuite/testcase` with
`tests`, `failures`, `errors`, `skipped` and `time` attributes.

Errors arrive scrubbed by whoever raised them; `scrub` is a second, defensive pass the writers
apply with whatever secrets the run knows (passwords, tokens), so a report kept as a CI artifact
cannot leak one.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.copy.result import (  # noqa: F401 - re-exported: the report's vocabulary
    BYTE_FIELDS,
    REDACTED,
    STATUSES,
    ImageResult,
    Status,
    scrub,
)
from pipeline.transfer import cancel

REPORT_VERSION = 1


# Characters XML 1.0 cannot carry at all, even escaped (ElementTree would write them as-is).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


@dataclass
class RunReport:
    """A run: when it started and finished, and one result per image in run order. It only
    records: `batch/runner.py` runs the images."""

    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None
    results: list[ImageResult] = field(default_factory=list)
    store: dict[str, Any] = field(default_factory=dict)
    """What protects the store written to (`cli/protected.py`); {} when nothing does."""

    def add(self, result: ImageResult) -> None:
        self.results.append(result)

    def finish(self, when: datetime | None = None) -> None:
        self.finished = when or datetime.now(UTC)

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the run (images overlap, so not the sum of theirs)."""
        end = self.finished or datetime.now(UTC)
        return max(0.0, (_utc(end) - _utc(self.started)).total_seconds())

    @property
    def failures(self) -> list[ImageResult]:
        return [r for r in self.results if r.failed]

    def totals(self) -> dict[str, int | float]:
        """Image counts by status and byte sums; `images` equals the sum of the status counts."""
        totals: dict[str, int | float] = {"images": len(self.results)}
        for status in STATUSES:
            totals[status] = sum(1 for r in self.results if r.status == status)
        for name in BYTE_FIELDS:
            totals[name] = sum(getattr(r, name) for r in self.results)
        totals["seconds"] = round(self.seconds, 3)
        return totals

    def exit_code(self) -> int:
        """DESIGN's contract: 0 when every image is done, 1 when one or more failed; after
        Ctrl-C or SIGTERM, the shell's 128 + the signal's number (130, 143)."""
        if cancel.RUN.cancelled:
            return cancel.RUN.exit_code
        return 1 if any(r.failed for r in self.results) else 0

    def to_dict(self, secrets: Iterable[str | None] = ()) -> dict[str, Any]:
        secrets = tuple(secrets)
        return {
            "version": REPORT_VERSION,
            "started": _iso(self.started),
            "finished": _iso(self.finished) if self.finished else None,
            "totals": self.totals(),
            "images": [r.to_dict(secrets) for r in self.results],
        } | ({"store": self.store} if self.store else {})

    def to_json(self, secrets: Iterable[str | None] = ()) -> str:
        return json.dumps(self.to_dict(secrets), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunReport:
        """Read a report back (to merge shards' reports, or in tests)."""
        data = json.loads(text)
        finished = data.get("finished")
        return cls(
            started=datetime.fromisoformat(data["started"]),
            finished=datetime.fromisoformat(finished) if finished else None,
            results=[ImageResult.from_dict(r) for r in data.get("images", [])],
        )

    def to_junit(self, secrets: Iterable[str | None] = (), suite: str = "bale") -> str:
        """JUnit XML: one testcase per image; failed images are `<failure>`, skipped `<skipped>`."""
        secrets = tuple(secrets)
        totals = self.totals()
        counts = {
            "tests": str(len(self.results)),
            "failures": str(totals["failed"]),
            "errors": str(totals["interrupted"]),
            "skipped": str(totals["skipped"]),
            "time": f"{self.seconds:.3f}",
        }
        root = ET.Element("testsuites", {"name": suite, **counts})
        suite_el = ET.SubElement(
            root,
            "testsuite",
            {
                "name": suite,
                **counts,
                "timestamp": _utc(self.started).replace(tzinfo=None).isoformat(timespec="seconds"),
            },
        )
        for result in self.results:
            case = ET.SubElement(
                suite_el,
                "testcase",
                {
                    "classname": suite,
                    "name": _xml_text(result.source),
                    "time": f"{result.seconds:.3f}",
                },
            )
            if result.failed:
                message = _xml_text(scrub(result.error or "failed", secrets))
                failure = ET.SubElement(
                    case,
                    "failure",
                    {"message": message.splitlines()[0] if message else "failed", "type": "failed"},
                )
                failure.text = message
            elif result.status == "interrupted":
                message = _xml_text(result.error or "interrupted")
                ET.SubElement(case, "error", {"message": message, "type": "interrupted"})
            elif result.status == "skipped":
                ET.SubElement(case, "skipped", {"message": "nothing to do: already done"})
            out = ET.SubElement(case, "system-out")
            out.text = _xml_text(
                " ".join(
                    f"{k}={v}"
                    for k, v in (
                        ("status", result.status),
                        ("digest", result.digest),
                        ("source_digest", result.source_digest),
                        ("tar_key", result.tar_key),
                        ("destination", result.destination),
                        *((name, getattr(result, name)) for name in BYTE_FIELDS),
                    )
                    if v is not None
                )
            )
        ET.indent(root)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(root, encoding="unicode")
            + "\n"
        )

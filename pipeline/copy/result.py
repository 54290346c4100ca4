"""What one image's copy came to: the record every command's run keeps per image.

It lives with the engine because the engine and the transports fill it in; the batch
report (`pipeline.batch.report`) collects these and writes JSON and JUnit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, quote_plus

from pipeline.transfer import cancel

Status = Literal["archived", "restored", "copied", "skipped", "planned", "failed", "interrupted"]
STATUSES: tuple[str, ...] = (
    "archived",
    "restored",
    "copied",
    "skipped",
    "planned",
    "failed",
    "interrupted",
)
"""`skipped`: nothing to do (already archived with that digest); `planned`: `--dry-run`;
`interrupted`: Ctrl-C or SIGTERM stopped the image, or came before it started (nothing of it
is visible: a rerun does it)."""

BYTE_FIELDS = (
    "bytes_downloaded",
    "bytes_uploaded",
    "bytes_already_stored",
    "bytes_copied_server_side",
)

REDACTED = "***"


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every given secret (and its URL-encoded forms) replaced by `***`."""
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms.update((secret, quote(secret, safe=""), quote_plus(secret)))
    for form in sorted(forms, key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(form, REDACTED)
    return text


@dataclass
class ImageResult:
    """The outcome for one image. Byte counts are what actually moved, not image sizes."""

    source: str
    status: Status
    digest: str | None = None
    error: str | None = None
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    bytes_already_stored: int = 0
    bytes_copied_server_side: int = 0
    seconds: float = 0.0
    tar_key: str | None = None
    destination: str | None = None
    """Where the image went, in full: `s3://bucket/prefix/images/….tar`, a local file's
    absolute path (`tar_key` is the same tar as a key of the store)."""
    source_digest: str | None = None
    """The index the reference resolved to at the source, when `digest` (what was stored) is
    one platform's manifest taken from it (`--platform`); None when they are the same."""
    bytes_by_class: dict[str, int] | None = None
    """A planned archive: what it would keep, by storage class (docs/lifecycle.md)."""
    monthly_estimate: float | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if self.status == "failed" and not self.error:
            self.error = "failed (no error message)"

    def after_signal(self) -> ImageResult:
        """This result as a cancelled run leaves it: once a signal came, an image that did not
        finish is `interrupted` (whatever error its cut transfer became); others stay as is."""
        if self.status != "failed" or not cancel.RUN.cancelled:
            return self
        return dataclasses.replace(self, status="interrupted", error=cancel.RUN.error().args[0])

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def failure_line(self) -> str:
        """`SOURCE: ERROR` for a person, naming the image once: many errors already start with
        the reference they concern (`host/repo:tag: manifest unknown`)."""
        error = self.error or ""
        return error if error.startswith(f"{self.source}: ") else f"{self.source}: {error}"

    def to_dict(self, secrets: Iterable[str | None] = ()) -> dict[str, Any]:
        secrets = tuple(secrets)
        return {
            "source": self.source,
            "digest": self.digest,
            "status": self.status,
            "error": scrub(self.error, secrets) if self.error is not None else None,
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_uploaded": self.bytes_uploaded,
            "bytes_already_stored": self.bytes_already_stored,
            "bytes_copied_server_side": self.bytes_copied_server_side,
            "seconds": round(self.seconds, 3),
            "tar_key": self.tar_key,
            "destination": self.destination,
            "source_digest": self.source_digest,
        } | (
            {"bytes_by_class": self.bytes_by_class, "monthly_estimate": self.monthly_estimate}
            if self.bytes_by_class is not None
            else {}
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageResult:
        names = {"source", "status", "digest", "error", "seconds", "tar_key", *BYTE_FIELDS}
        names |= {"destination", "source_digest", "bytes_by_class", "monthly_estimate"}
        return cls(**{k: v for k, v in data.items() if k in names})

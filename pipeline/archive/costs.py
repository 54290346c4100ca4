"""Bytes per storage class and an estimated monthly storage figure (`ls --json`, `--dry-run`).

The figure is bytes times a price per GiB-month from a table the user gives (`--prices FILE`,
YAML or JSON: class name → price). The built-in table is an EXAMPLE with round numbers of
the right order of magnitude, for seeing the shape of a bill, not prices: docs/lifecycle.md.
Classes come from what the record says it was written in (no request per object), so a blob
shared with an image archived in another class is counted in this image's class.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.archive.classes import StorageClasses, is_small
from pipeline.archive.record import ImageRecord
from pipeline.errors import UsageError
from pipeline.store.classes import STANDARD

GIB = 1 << 30

EXAMPLE_PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "INTELLIGENT_TIERING": 0.023,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.001,
    "Standard": 0.02,
    "IA": 0.0125,
    "Archive": 0.0033,
    "ColdArchive": 0.0015,
    "DeepColdArchive": 0.001,
}
"""An example table (per GiB-month, one currency unit): NOT current prices of any provider."""

_MANIFEST_HINTS = ("manifest", "image.index", "distribution.manifest")


def load_prices(path: str | None) -> dict[str, float]:
    """The table at `path` (YAML or JSON mapping class → price), or the example table."""
    if path is None:
        return dict(EXAMPLE_PRICES)
    import yaml

    try:
        table = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--prices {path}: {exc}") from None
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in table.items()
    ):
        raise UsageError(f"--prices {path}: expected a mapping of class name to price per GiB")
    return {k: float(v) for k, v in table.items()}


def bytes_by_class(record: ImageRecord, scheme: str) -> dict[str, int]:
    """What `record` keeps, by the class it was written in: layers in the blobs' class, the
    tar in the tars', manifests and configs in the small objects'."""
    classes = record.storage_class or StorageClasses()
    default = STANDARD[scheme]
    found: dict[str, int] = {}

    def add(storage_class: str | None, size: int) -> None:
        name = storage_class or default
        found[name] = found.get(name, 0) + size

    for blob in record.blobs:
        small = is_small(blob.media_type) or any(h in blob.media_type for h in _MANIFEST_HINTS)
        add(classes.small if small else classes.blobs, blob.size)
    add(classes.tars, record.tar_size)
    return dict(sorted(found.items()))


def monthly(found: dict[str, int], prices: dict[str, float]) -> float | None:
    """The estimate for `found`, None when the table lacks one of its classes."""
    if any(c not in prices for c in found):
        return None
    return round(sum(size / GIB * prices[c] for c, size in found.items()), 6)


def add_up(parts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for name, size in part.items():
            total[name] = total.get(name, 0) + size
    return dict(sorted(total.items()))

"""How `ls` and the run report say what protects a store: its write-once configuration, the
lock this run writes with, the encryption asked for (never a key)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.store.base import ObjectStore
from pipeline.store.protection import NO_LOCK


def store_facts(store: ObjectStore) -> dict[str, Any]:
    """For JSON (report, `ls --json`): `protection` (the bucket's, as probed at start),
    `lock` (what this command writes with), `encryption`; {} when there is nothing to say."""
    facts: dict[str, Any] = {}
    protection = store.protection()
    if protection.protected:
        facts["protection"] = protection.describe()
    lock = getattr(store, "lock", NO_LOCK)
    if lock.any:
        facts["lock"] = lock.describe()
    if store.encryption.enabled:
        facts["encryption"] = store.encryption.describe()
    return facts


def store_line(store: ObjectStore, locks: Iterable[dict[str, str]] = ()) -> str | None:
    """One line for people: `protected: S3 Object Lock, default GOVERNANCE for 30 days; tars
    2 tar(s) retained until 2033-12-04`; None for an unprotected, unencrypted store. `locks`
    are the records' tar locks: the latest retain-until among them is said."""
    parts = []
    protection = store.protection()
    if protection.protected:
        parts.append(f"protected: {protection}")
        lock = getattr(store, "lock", NO_LOCK)
        if lock.any:
            written = ", ".join(f"{k}={v}" for k, v in lock.describe().items())
            parts.append(f"writing with {written}")
        said = list(locks)
        until = sorted(u[:10] for lock in said if (u := lock.get("retain_until")))
        held = sum(1 for lock in said if lock.get("legal_hold") == "ON")
        if until:
            span = until[0] if until[0] == until[-1] else f"{until[0]} to {until[-1]}"
            parts.append(f"{len(until)} tar(s) retained until {span}")
        if held:
            parts.append(f"{held} tar(s) under legal hold")
    if store.encryption.enabled:
        parts.append(f"encryption: {store.encryption}")
    return "; ".join(parts) or None

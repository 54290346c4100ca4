"""Storage class names, restore tiers and restore headers (pipeline/store/classes.py): what the
CLI can check before anything is written."""

from __future__ import annotations

import pytest

from pipeline.errors import UnknownStorageClass
from pipeline.store.base import ObjectInfo
from pipeline.store.classes import (
    RestoreState,
    check_storage_class,
    check_tier,
    parse_restore,
    restore_time,
)


@pytest.mark.parametrize(
    ("scheme", "name", "spelled"),
    [
        ("s3", "deep_archive", "DEEP_ARCHIVE"),
        ("s3", "GLACIER_IR", "GLACIER_IR"),
        ("oss", "coldarchive", "ColdArchive"),
        ("oss", "STANDARD", "Standard"),
        ("file", "Standard", "STANDARD"),
    ],
)
def test_names_are_matched_in_any_case_and_spelled_as_the_provider_does(
    scheme: str, name: str, spelled: str
) -> None:
    assert check_storage_class(scheme, name) == spelled


@pytest.mark.parametrize(
    ("scheme", "name"),
    [
        ("s3", "Archive"),
        ("s3", "COLD"),
        ("oss", "GLACIER"),
        ("oss", "DEEP_ARCHIVE"),
        ("file", "IA"),
    ],
)
def test_a_class_the_store_lacks_is_bad_input(scheme: str, name: str) -> None:
    with pytest.raises(UnknownStorageClass) as caught:
        check_storage_class(scheme, name)
    assert caught.value.exit_code == 2
    assert repr(name) in str(caught.value)


def test_tiers_and_restore_times() -> None:
    assert check_tier("bulk") == "Bulk"
    with pytest.raises(UnknownStorageClass):
        check_tier("Fast")
    assert restore_time("GLACIER", "Expedited") == "1-5 minutes"
    assert restore_time("DeepColdArchive", "standard") == "within 48 hours"
    assert restore_time("Archive", "Bulk") == "about 1 minute"  # one speed
    with pytest.raises(UnknownStorageClass, match="not offered for DEEP_ARCHIVE"):
        restore_time("DEEP_ARCHIVE", "Expedited")


def test_restore_headers() -> None:
    assert parse_restore(None) is None
    assert parse_restore('ongoing-request="true"') == RestoreState(ongoing=True)
    done = parse_restore('ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"')
    assert done == RestoreState(ongoing=False, expires="Fri, 21 Dec 2012 00:00:00 GMT")
    frozen = ObjectInfo("k", 1, archived=True)
    assert frozen.frozen
    assert ObjectInfo("k", 1, archived=True, restore=RestoreState(ongoing=True)).frozen
    assert not ObjectInfo("k", 1, archived=True, restore=done).frozen
    assert not ObjectInfo("k", 1).frozen

"""ColdGate: a blob's move to its cold class waits for the last tar composed from it."""

from __future__ import annotations

from pipeline.archive.coldgate import ColdGate


def test_a_move_waits_for_the_last_tar_using_the_blob() -> None:
    gate, moved = ColdGate(), list[str]()
    gate.enter(["a", "b"])  # one tar
    gate.enter(["a"])  # another, sharing a
    assert gate.leave(["a", "b"]) == []
    assert gate.move("b", lambda: moved.append("b")) is True  # no tar uses b any more
    assert gate.move("a", lambda: moved.append("a")) is False  # the other tar still copies a
    assert moved == ["b"]
    (due,) = gate.leave(["a"])
    due()
    assert moved == ["b", "a"]
    assert gate.move("a", lambda: moved.append("again")) is True


def test_an_abandoned_tar_releases_without_moving() -> None:
    gate, moved = ColdGate(), list[str]()
    gate.enter(["a"])
    assert gate.move("a", lambda: moved.append("a")) is False
    gate.leave(["a"])  # the caller may drop what is due: the blob stays hot
    assert moved == []

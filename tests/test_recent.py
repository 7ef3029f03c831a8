"""The per-process memory of credentials checked a moment ago: entries live `ttl` seconds by the clock
it is given, can be forgotten at once, and the memory stays bounded."""

from __future__ import annotations

from postkasse.committee.recent import Recent


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_ttl_seconds_then_the_store_must_be_asked_again() -> None:
    ticks = Ticks()
    remembered: Recent[str] = Recent(ttl=5.0, monotonic=ticks)
    remembered.put(b"k", "anna")
    ticks.now += 4.9
    assert remembered.get(b"k") == "anna"
    ticks.now += 0.1
    assert remembered.get(b"k") is None
    assert remembered.entries == {}


def test_forgetting_takes_effect_at_once() -> None:
    remembered: Recent[str] = Recent(monotonic=Ticks())
    remembered.put(b"a", "anna")
    remembered.put(b"b", "bo")
    remembered.forget(b"a")
    assert remembered.get(b"a") is None and remembered.get(b"b") == "bo"
    remembered.forget_where(lambda name: name == "bo")
    assert remembered.get(b"b") is None


def test_the_memory_is_bounded() -> None:
    remembered: Recent[int] = Recent(limit=3, monotonic=Ticks())
    for n in range(10):
        remembered.put(bytes([n]), n)
        assert len(remembered.entries) <= 3
    assert remembered.get(bytes([9])) == 9

"""``WatchedStore``: a store call that has not returned within its limit is said once, from the watchdog's
own thread, while the call still waits; a store it wraps keeps passing the byte store suite."""

from __future__ import annotations

import threading

import pytest

from crdtsync.relay.watchdog import WatchedStore
from crdtsync.store import Batch, MemoryStore
from crdtsync.store.base import ByteStore
from crdtsync.store.conformance import ByteStoreConformance, StoreFactory
from crdtsync.store.keys import Key

from .conftest import BOUND


def _never(what: str, seconds: float) -> None:
    raise AssertionError(f"no call should be stuck here: {what} after {seconds} s")


class TestWatchedStore(ByteStoreConformance):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        return StoreFactory(lambda name: WatchedStore(MemoryStore(), 60, _never))


class _Hanging(MemoryStore):
    """A store whose reads wait until ``release`` is set (a database that does not answer)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def load(self, key: Key) -> bytes | None:
        self.release.wait(BOUND)
        return super().load(key)


def test_a_call_stuck_past_the_limit_is_said_once_while_it_waits() -> None:
    inner = _Hanging()
    said: list[tuple[str, float]] = []
    noticed = threading.Event()

    def stuck(what: str, seconds: float) -> None:
        said.append((what, seconds))
        noticed.set()

    store: ByteStore = WatchedStore(inner, 0.2, stuck)
    try:
        b = Batch()
        b.save(("k",), b"v")
        store.commit(b)  # quick calls are not said
        reader = threading.Thread(target=store.load, args=(("k",),))
        reader.start()
        assert noticed.wait(BOUND)
        assert reader.is_alive()  # said while the call still waits
        inner.release.set()
        reader.join(BOUND)
        [(what, seconds)] = said
        assert what == "a read" and seconds > 0.2
    finally:
        inner.release.set()
        store.close()


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="over 0"):
        WatchedStore(MemoryStore(), 0)

"""The shared test suite every byte store must pass: ours, and the adapters users write.

Modelled on automerge-repo's exported storage adapter tests. Tell the suite how to open stores of your
backend with a :class:`StoreFactory`, then either

- call :func:`run_conformance` (plain Python, raises :class:`ConformanceError` on the first failure), or
- subclass :class:`ByteStoreConformance` in a pytest module and give it a ``store_factory`` fixture::

      class TestMyStore(ByteStoreConformance):
          @pytest.fixture
          def store_factory(self, tmp_path):
              return StoreFactory(lambda name: MyStore(tmp_path / name), persistent=True)

The checks hold the contract documented in ``docs/storage.md``: round trips of arbitrary bytes, key order
by segments (str before int at the same position, strings by code point, ints by value, a key before its
extensions), prefix ranges that match whole segments only, ``start``/``limit``/``reverse``, paging,
atomic batches (range removes, then removes, then saves; bad input changes nothing), persistence across
close and reopen, and ``StoreClosed`` after close. The suite ends with a Hypothesis state machine
(:mod:`crdtsync.store.agreement`) that checks the backend against a plain dict model.

This module imports neither pytest nor a backend: it only drives the ``ByteStore`` interface.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import StoreClosed
from .base import Batch, ByteStore
from .keys import Key

__all__ = ["CHECKS", "ByteStoreConformance", "ConformanceError", "StoreFactory", "as_factory", "key_order",
           "run_conformance", "shown"]


class ConformanceError(AssertionError):
    """A backend broke the byte store contract; the message says which rule and how."""


@dataclass(frozen=True)
class StoreFactory:
    """How the suite opens stores of one backend.

    ``open(name)`` returns an open store called ``name``; a name never opened before is empty, and two
    names never share data. With ``persistent``, opening a closed store's name again gives its data back.
    With ``thread_safe``, one store may be used from several threads at once.
    """

    open: Callable[[str], ByteStore]
    persistent: bool = False
    thread_safe: bool = False


def as_factory(factory: StoreFactory | Callable[[str], ByteStore]) -> StoreFactory:
    """``factory`` itself, or a bare callable taken as a non-persistent, single-threaded factory."""
    if isinstance(factory, StoreFactory):
        return factory
    if not callable(factory):
        raise TypeError(f"expected a StoreFactory or a callable name -> ByteStore, got {type(factory).__name__}")
    return StoreFactory(factory)


def key_order(key: Key) -> tuple[tuple[int, str | int], ...]:
    """The order every backend must keep, written independently of the byte encoding.

    At one position a str segment sorts before an int segment; strings compare by code point, ints by
    value; a key sorts before the keys that extend it.
    """
    return tuple((0, s) if isinstance(s, str) else (1, s) for s in key)


#: the most characters of a value a failure shows (a store holding megabytes made messages as long)
SHOWN = 600


def shown(value: object, limit: int = SHOWN) -> str:
    """``repr(value)``, cut to ``limit`` characters (saying how long it was) when longer."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters in all)"


def _fail(what: str, got: object, want: object) -> ConformanceError:
    return ConformanceError(f"{what}: got {shown(got)}, expected {shown(want)}")


def _eq(got: object, want: object, what: str) -> None:
    if got != want:
        raise _fail(what, got, want)


def _raises(exc: type[BaseException] | tuple[type[BaseException], ...], fn: Callable[[], object],
            what: str) -> None:
    try:
        fn()
    except exc:
        return
    except BaseException as e:
        raise ConformanceError(f"{what}: raised {type(e).__name__}: {str(e)[:SHOWN]}, expected {exc}") from e
    raise ConformanceError(f"{what}: did not raise, expected {exc}")


def _keys(rows: list[tuple[Key, bytes]]) -> list[Key]:
    return [k for k, _ in rows]


def _fill(store: ByteStore, keys: list[Key]) -> None:
    b = Batch()
    for i, k in enumerate(keys):
        b.save(k, f"v{i}".encode())
    store.commit(b)


# Keys that probe the encoding: mixed segment types, NUL and non-ASCII inside strings, extreme ints.
TRICKY_KEYS: list[Key] = [
    ("a",), ("a", 1), ("a", "b"), ("a", ""), ("a", "", 3), ("ab",), ("a\x00",), ("a\x00b",), ("a\x01",),
    ("",), ("é",), ("\U0001f600", "x"), ("z", -1), ("z", 0), ("z", 1), ("z", 255), ("z", 256),
    ("z", -(2**63)), ("z", 2**63 - 1), (0,), (-5, "x"), (2**40,), ("A",), ("_",),
]


def check_load_missing(f: StoreFactory) -> None:
    s = f.open("load_missing")
    try:
        _eq(s.load(("nope",)), None, "load of a missing key")
        _eq(s.load_range(()), [], "load_range(()) of an empty store")
        _eq(list(s.iter_range(())), [], "iter_range(()) of an empty store")
    finally:
        s.close()


def check_round_trip(f: StoreFactory) -> None:
    values = [b"", b"\x00", b"\x00" * 17, bytes(range(256)), b"\xff\xfe\x00x", os.urandom(3 << 20)]
    s = f.open("round_trip")
    try:
        for i, v in enumerate(values):
            s.save(("val", i), v)
        for i, v in enumerate(values):
            got = s.load(("val", i))
            if type(got) is not bytes:
                raise _fail(f"type of load(('val', {i}))", type(got), bytes)
            if got != v:
                raise ConformanceError(f"load(('val', {i})) returned {len(got)} bytes that differ from the "
                                       f"{len(v)} saved")
        _eq([(k, len(v)) for k, v in s.load_range(("val",))], [(("val", i), len(v)) for i, v in enumerate(values)],
            "load_range of the saved values")
    finally:
        s.close()


def check_overwrite_and_remove(f: StoreFactory) -> None:
    s = f.open("overwrite_and_remove")
    try:
        s.save(("k",), b"one")
        s.save(("k",), b"two")
        _eq(s.load(("k",)), b"two", "load after overwrite")
        _eq(s.load_range(("k",)), [(("k",), b"two")], "an overwrite keeps one entry")
        s.remove(("k",))
        _eq(s.load(("k",)), None, "load after remove")
        s.remove(("k",))  # removing a missing key is not an error
        s.remove(("never",))
        _eq(s.load_range(()), [], "store after removing everything")
    finally:
        s.close()


def check_key_segments(f: StoreFactory) -> None:
    s = f.open("key_segments")
    try:
        _fill(s, TRICKY_KEYS)
        for i, k in enumerate(TRICKY_KEYS):
            _eq(s.load(k), f"v{i}".encode(), f"load({k!r})")
        _eq(_keys(s.load_range(())), sorted(TRICKY_KEYS, key=key_order), "key order of load_range(())")
        _eq(_keys(list(s.iter_range((), batch=5))), sorted(TRICKY_KEYS, key=key_order), "key order of iter_range")
        _eq(_keys(s.load_range((), reverse=True)), sorted(TRICKY_KEYS, key=key_order, reverse=True),
            "key order of load_range((), reverse=True)")
        for bad in [("x", True), ("x", 2**63), ("x", -(2**63) - 1), ("x", 1.5), ("x", b"b")]:
            _raises((TypeError, ValueError), lambda bad=bad: s.save(bad, b""), f"save({bad!r})")  # type: ignore[misc]
            _raises((TypeError, ValueError), lambda bad=bad: s.load(bad), f"load({bad!r})")  # type: ignore[misc]
        _eq(len(s.load_range(())), len(TRICKY_KEYS), "entries after refused saves")
    finally:
        s.close()


def check_prefix_semantics(f: StoreFactory) -> None:
    s = f.open("prefix_semantics")
    try:
        _fill(s, TRICKY_KEYS)
        for prefix in [("a",), ("a", ""), ("ab",), ("a\x00",), ("z",), ("é",), (0,), (-5,), ("z", 1), ("q",),
                       ("a", 1), ("a", 1, 2)]:
            want = sorted((k for k in TRICKY_KEYS if k[:len(prefix)] == prefix), key=key_order)
            _eq(_keys(s.load_range(prefix)), want, f"load_range({prefix!r})")
        _eq(_keys(s.load_range(("a",))), [("a",), ("a", ""), ("a", "", 3), ("a", "b"), ("a", 1)],
            "load_range(('a',)) must not match ('ab',) or ('a\\x00',)")
        many: list[Key] = [("a", 1), ("a",), ("nothing",), ("a", 1), ("é",), ("z", 1)]
        got = s.load_ranges(many)
        _eq(len(got), len(many), "load_ranges gives one list per prefix")
        for prefix, rows in zip(many, got, strict=True):
            _eq(rows, s.load_range(prefix), f"load_ranges, for {prefix!r}, agrees with load_range")
    finally:
        s.close()


def check_start_limit_reverse(f: StoreFactory) -> None:
    s = f.open("start_limit_reverse")
    try:
        keys: list[Key] = [("r", i) for i in range(10)] + [("r", 3, "x"), ("q", 5), ("s", 0)]
        _fill(s, keys)
        fwd = [("r", i) for i in range(4)] + [("r", 3, "x")] + [("r", i) for i in range(4, 10)]
        _eq(_keys(s.load_range(("r",))), fwd, "forward range")
        _eq(_keys(s.load_range(("r",), start=("r", 3))), fwd[3:], "start is inclusive and keeps extensions")
        _eq(_keys(s.load_range(("r",), start=("r", 3, "a"))), fwd[4:], "start between keys")
        _eq(_keys(s.load_range(("r",), start=("r", 3), limit=2)), fwd[3:5], "start with limit")
        _eq(_keys(s.load_range(("r",), limit=0)), [], "limit=0")
        _eq(_keys(s.load_range(("r",), limit=100)), fwd, "a limit above the count")
        _eq(_keys(s.load_range(("r",), reverse=True)), fwd[::-1], "reverse range")
        _eq(_keys(s.load_range(("r",), reverse=True, limit=3)), fwd[::-1][:3], "reverse with limit: the last")
        _eq(_keys(s.load_range(("r",), reverse=True, start=("r", 3))), [("r", 3), ("r", 2), ("r", 1), ("r", 0)],
            "reverse start is inclusive and skips the keys after it, extensions included")
        _eq(_keys(s.load_range(("r",), reverse=True, start=("r", 3, "z"), limit=2)), [("r", 3, "x"), ("r", 3)],
            "reverse start between keys, with limit")
        _eq(_keys(s.load_range(("r",), start=("a",))), fwd, "a start before the prefix")
        _eq(_keys(s.load_range(("r",), start=("t",))), [], "a start after the prefix")
        _eq(_keys(s.load_range(("r",), start=("t",), reverse=True)), fwd[::-1], "reverse start after the prefix")
        _eq(_keys(s.load_range(("r",), start=("a",), reverse=True)), [], "reverse start before the prefix")
        _raises(ValueError, lambda: s.load_range(("r",), limit=-1), "a negative limit")
    finally:
        s.close()


def check_iter_range_paging(f: StoreFactory) -> None:
    s = f.open("iter_range_paging")
    try:
        keys: list[Key] = [("p", i) for i in range(2500)]
        b = Batch()
        for k in keys:
            b.save(k, str(k[1]).encode())
        b.save(("o",), b"before")
        b.save(("p\x00",), b"after")
        s.commit(b)
        got = list(s.iter_range(("p",)))
        _eq(len(got), 2500, "iter_range over 2500 keys: count")
        _eq(_keys(got), keys, "iter_range over 2500 keys: order, no duplicates")
        _eq(got[1234][1], b"1234", "iter_range value")
        _eq(_keys(list(s.iter_range(("p",), batch=7)))[-3:], keys[-3:], "iter_range with small pages")
        _raises(ValueError, lambda: next(iter(s.iter_range(("p",), batch=0))), "iter_range(batch=0)")
    finally:
        s.close()


def check_remove_range(f: StoreFactory) -> None:
    s = f.open("remove_range")
    try:
        _fill(s, TRICKY_KEYS)
        s.remove_range(("a",))
        _eq(sorted((k for k in _keys(s.load_range(())) if k[0] in ("a", "ab", "a\x00")), key=key_order),
            [("a\x00",), ("ab",)], "remove_range(('a',)) keeps ('ab',) and ('a\\x00',)")
        s.remove_range(("z", 1))
        _eq(_keys(s.load_range(("z",)))[:3], [("z", -(2**63)), ("z", -1), ("z", 0)], "remove_range of one key")
        _eq(len(s.load_range(("z",))), 6, "remove_range(('z', 1)) removes only ('z', 1)")
        s.remove_range(("nothing",))
        s.remove_range(())
        _eq(s.load_range(()), [], "remove_range(()) clears the store")
    finally:
        s.close()


def check_batch_semantics(f: StoreFactory) -> None:
    s = f.open("batch_semantics")
    try:
        _fill(s, [("p", 1), ("p", 2), ("q", 1)])
        # Built by hand, so the backend itself must apply range removes, then removes, then saves.
        s.commit(Batch(saves={("p", 2): b"new", ("q", 1): b"q"}, removes={("q", 1), ("p", 1)},
                       range_removes=[("p",)]))
        _eq(s.load_range(()), [(("p", 2), b"new"), (("q", 1), b"q")], "saves win over removes in one commit")
        b = Batch()
        b.save(("x",), b"1")
        b.remove(("x",))
        b.remove(("y",))
        b.save(("y",), b"2")
        b.save(("p", 9), b"3")
        b.remove_range(("p",))
        b.save(("p", 10), b"4")
        s.commit(b)
        _eq(s.load_range(()), [(("p", 10), b"4"), (("q", 1), b"q"), (("y",), b"2")],
            "Batch keeps the last write per key")
        s.commit(Batch())
        _eq(len(s.load_range(())), 3, "an empty commit changes nothing")
        bad = Batch()
        bad.remove_range(())
        bad.remove(("y",))
        bad.save(("fine",), b"x")
        bad.saves[("bad", 2**64)] = b"x"
        _raises((TypeError, ValueError), lambda: s.commit(bad), "commit of a batch with a bad key")
        _eq(s.load_range(()), [(("p", 10), b"4"), (("q", 1), b"q"), (("y",), b"2")],
            "a refused commit changes nothing")
    finally:
        s.close()


def check_two_step_commit(f: StoreFactory) -> None:
    s = f.open("two_step_commit")
    try:
        _fill(s, [("p", 1), ("q", 1)])
        b = Batch()
        b.save(("p", 2), b"two")
        b.remove(("q", 1))
        finish = s.begin_commit(b)
        if f.thread_safe:  # where it is meant to run: in a thread
            errors: list[BaseException] = []

            def run() -> None:
                try:
                    finish()
                except BaseException as e:
                    errors.append(e)

            t = threading.Thread(target=run)
            t.start()
            t.join()
            if errors:
                raise errors[0]
        else:
            finish()
        _eq(s.load_range(()), [(("p", 1), b"v0"), (("p", 2), b"two")], "begin_commit then its function commits")
        bad = Batch()
        bad.save(("fine",), b"x")
        bad.remove(("p", 1))
        bad.saves[("bad", 2**64)] = b"x"

        def both() -> None:
            s.begin_commit(bad)()

        _raises((TypeError, ValueError), both, "begin_commit of a batch with a bad key, or its function")
        _eq(s.load_range(()), [(("p", 1), b"v0"), (("p", 2), b"two")], "a refused two-step commit changes nothing")
    finally:
        s.close()


def check_isolation(f: StoreFactory) -> None:
    a, b = f.open("isolation_one"), f.open("isolation_two")
    try:
        a.save(("k",), b"a")
        b.save(("k",), b"b")
        b.save(("only-b",), b"b")
        _eq(a.load_range(()), [(("k",), b"a")], "stores of different names share nothing")
        a.remove_range(())
        _eq(b.load(("k",)), b"b", "remove_range in one store leaves another alone")
    finally:
        a.close()
        b.close()


def check_persistence(f: StoreFactory) -> None:
    if not f.persistent:
        return
    s = f.open("persistence")
    s.save(("gone",), b"x")
    b = Batch()
    for k in TRICKY_KEYS:
        b.save(k, repr(k).encode())
    b.remove(("gone",))
    s.commit(b)
    s.remove_range(("z",))
    s.close()
    s = f.open("persistence")
    try:
        want = sorted((k for k in TRICKY_KEYS if k[0] != "z"), key=key_order)
        _eq(s.load_range(()), [(k, repr(k).encode()) for k in want], "data after close and reopen")
        s.save(("again",), b"y")
    finally:
        s.close()
    s = f.open("persistence")
    try:
        _eq(s.load(("again",)), b"y", "a write after reopening, reopened again")
    finally:
        s.close()


def check_closed(f: StoreFactory) -> None:
    s = f.open("closed")
    s.save(("k",), b"v")
    s.close()
    ops: dict[str, Callable[[], object]] = {
        "load": lambda: s.load(("k",)),
        "load_range": lambda: s.load_range(()),
        "iter_range": lambda: next(iter(s.iter_range(()))),
        "save": lambda: s.save(("k",), b"w"),
        "remove": lambda: s.remove(("k",)),
        "remove_range": lambda: s.remove_range(()),
        "commit": lambda: s.commit(Batch(saves={("k",): b"w"})),
        "empty commit": lambda: s.commit(Batch()),
    }
    for name, op in ops.items():
        _raises(StoreClosed, op, f"{name} on a closed store")
    s.close()  # closing twice is fine


def check_threads(f: StoreFactory) -> None:
    if not f.thread_safe:
        return
    s = f.open("threads")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(100):
                b = Batch()
                b.save(("t", t, i), b"x")
                b.save(("last", t), str(i).encode())
                s.commit(b)
                if len(s.load_range(("t", t))) != i + 1:
                    raise ConformanceError(f"thread {t} does not see its own {i + 1} writes")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        if errors:
            raise errors[0]
        _eq(len(s.load_range(("t",))), 400, "writes from 4 threads")
        _eq([v for _, v in s.load_range(("last",))], [b"99"] * 4, "last writes from 4 threads")
    finally:
        s.close()


def check_agrees_with_model(f: StoreFactory) -> None:
    from .agreement import run_agreement

    run_agreement({"store": f}, max_examples=20, steps=20)


CHECKS: dict[str, Callable[[StoreFactory], None]] = {
    "load_missing": check_load_missing,
    "round_trip": check_round_trip,
    "overwrite_and_remove": check_overwrite_and_remove,
    "key_segments": check_key_segments,
    "prefix_semantics": check_prefix_semantics,
    "start_limit_reverse": check_start_limit_reverse,
    "iter_range_paging": check_iter_range_paging,
    "remove_range": check_remove_range,
    "batch_semantics": check_batch_semantics,
    "two_step_commit": check_two_step_commit,
    "isolation": check_isolation,
    "persistence": check_persistence,
    "closed": check_closed,
    "threads": check_threads,
    "agrees_with_model": check_agrees_with_model,
}


def run_conformance(factory: StoreFactory | Callable[[str], ByteStore], *,
                    skip: tuple[str, ...] = ()) -> list[str]:
    """Run every check in :data:`CHECKS` (but ``skip``) against a backend; returns the names run.

    A bare callable is taken as a non-persistent, single-threaded factory. Each check opens its stores under
    names of its own (the check's name), so none sees another's data; with a persistent factory, open them
    in a fresh directory for each run. Raises ConformanceError, its message cut to a bounded excerpt.
    """
    f = as_factory(factory)
    ran = []
    for name, check in CHECKS.items():
        if name in skip:
            continue
        try:
            check(f)
        except ConformanceError as e:
            message = str(e)
            if len(message) > 4 * SHOWN:
                message = f"{message[:4 * SHOWN]}... ({len(message)} characters in all)"
            raise ConformanceError(f"[{name}] {message}") from e
        ran.append(name)
    return ran


def _skip(reason: str) -> None:
    import pytest  # only ever reached under pytest

    pytest.skip(reason)


class ByteStoreConformance:
    """A pytest mixin: subclass it as ``TestSomething`` and provide a ``store_factory`` fixture.

    Each check becomes its own test, so a failure names the broken rule.
    """

    def test_load_missing(self, store_factory: StoreFactory) -> None:
        check_load_missing(store_factory)

    def test_round_trip(self, store_factory: StoreFactory) -> None:
        check_round_trip(store_factory)

    def test_overwrite_and_remove(self, store_factory: StoreFactory) -> None:
        check_overwrite_and_remove(store_factory)

    def test_key_segments(self, store_factory: StoreFactory) -> None:
        check_key_segments(store_factory)

    def test_prefix_semantics(self, store_factory: StoreFactory) -> None:
        check_prefix_semantics(store_factory)

    def test_start_limit_reverse(self, store_factory: StoreFactory) -> None:
        check_start_limit_reverse(store_factory)

    def test_iter_range_paging(self, store_factory: StoreFactory) -> None:
        check_iter_range_paging(store_factory)

    def test_remove_range(self, store_factory: StoreFactory) -> None:
        check_remove_range(store_factory)

    def test_batch_semantics(self, store_factory: StoreFactory) -> None:
        check_batch_semantics(store_factory)

    def test_two_step_commit(self, store_factory: StoreFactory) -> None:
        check_two_step_commit(store_factory)

    def test_isolation(self, store_factory: StoreFactory) -> None:
        check_isolation(store_factory)

    def test_persistence(self, store_factory: StoreFactory) -> None:
        if not store_factory.persistent:
            _skip("the factory does not reopen stores (persistent=False)")
        check_persistence(store_factory)

    def test_closed(self, store_factory: StoreFactory) -> None:
        check_closed(store_factory)

    def test_threads(self, store_factory: StoreFactory) -> None:
        if not store_factory.thread_safe:
            _skip("the factory does not claim thread safety (thread_safe=False)")
        check_threads(store_factory)

    def test_agrees_with_model(self, store_factory: StoreFactory) -> None:
        check_agrees_with_model(store_factory)

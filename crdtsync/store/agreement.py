"""A Hypothesis state machine that sends the same random operations to several byte stores.

After Hypothesis's own ``tests/nocover/test_database_agreement.py``: every operation (save, remove,
remove_range, batches built with the ``Batch`` methods and by hand, load, load_range with
start/limit/reverse, iter_range with small pages, close and reopen) goes to every backend, and each answer
must equal every other backend's answer and that of a plain dict model. The model knows nothing of the
byte encoding of keys: it orders keys with :func:`crdtsync.store.conformance.key_order`.

Keys come from a small alphabet so that operations keep hitting the same keys and prefixes, with the
segments that break naive encodings (``""``, NUL, non-ASCII, ``"a"`` beside ``"ab"``, extreme ints).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from .base import Batch, ByteStore
from .conformance import ConformanceError, StoreFactory, as_factory, key_order, shown
from .keys import Key

__all__ = ["agreement_machine", "model_range", "run_agreement"]

_SEGMENTS = st.one_of(
    # (``out`` and ``log``: names whose int keys a backend may keep apart, as SQLiteStore does)
    st.sampled_from(["", "a", "ab", "a\x00", "a\x00b", "b", "é", "\U0001f600", "out", "log", "o"]),
    st.integers(-2, 2),
    st.sampled_from([-(2**63), 2**63 - 1, 255, 256]),
    st.text(st.characters(codec="utf-8"), max_size=3),
)
_KEYS = st.lists(_SEGMENTS, min_size=1, max_size=3).map(tuple)
_PREFIXES = st.lists(_SEGMENTS, max_size=2).map(tuple)
_RANGES = st.lists(_SEGMENTS, min_size=1, max_size=2).map(tuple)  # () clears all: left to commit_raw
_VALUES = st.one_of(st.sampled_from([b"", b"\x00", b"\xff" * 3]), st.binary(max_size=24))
_LIMITS = st.one_of(st.none(), st.integers(0, 4))
_counter = itertools.count()


def model_range(model: Mapping[Key, bytes], prefix: Key, *, start: Key | None = None, limit: int | None = None,
                reverse: bool = False) -> list[tuple[Key, bytes]]:
    """What ``load_range`` must return, computed from a dict with no byte encoding involved."""
    keys = sorted((k for k in model if k[:len(prefix)] == prefix), key=key_order, reverse=reverse)
    if start is not None:
        s = key_order(start)
        keys = [k for k in keys if (key_order(k) <= s if reverse else key_order(k) >= s)]
    if limit is not None:
        keys = keys[:limit]
    return [(k, model[k]) for k in keys]


def agreement_machine(factories: Mapping[str, StoreFactory | Callable[[str], ByteStore]],
                      ) -> type[RuleBasedStateMachine]:
    """A state machine class over one store of each backend in ``factories`` (name -> factory; a bare
    callable is taken as a non-persistent, single-threaded factory, as by ``run_conformance``)."""
    if not factories:
        raise ValueError("agreement needs at least one backend")
    backends = {b: as_factory(f) for b, f in factories.items()}

    class StoreAgreement(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.name = f"agree{next(_counter)}"
            self.stores: dict[str, ByteStore] = {b: f.open(self.name) for b, f in backends.items()}
            self.model: dict[Key, bytes] = {}

        def _agree(self, what: str, answers: dict[str, Any], want: object) -> None:
            for backend, got in answers.items():
                if got != want:
                    raise ConformanceError(f"{backend}: {what}: got {shown(got)}, the model says {shown(want)}; "
                                           f"all answers: {shown(answers)}")

        def _key(self, data: st.DataObject) -> Key:
            known = sorted(self.model, key=key_order)
            if known:
                use_known: bool = data.draw(st.booleans(), label="known key")
                if use_known:
                    return data.draw(st.sampled_from(known), label="key")
            return data.draw(_KEYS, label="key")

        @rule(data=st.data(), value=_VALUES)
        def save(self, data: st.DataObject, value: bytes) -> None:
            key = self._key(data)
            for s in self.stores.values():
                s.save(key, value)
            self.model[key] = value

        @rule(data=st.data())
        def remove(self, data: st.DataObject) -> None:
            key = self._key(data)
            for s in self.stores.values():
                s.remove(key)
            self.model.pop(key, None)

        @rule(prefix=_RANGES)
        def remove_range(self, prefix: Key) -> None:
            for s in self.stores.values():
                s.remove_range(prefix)
            for k in [k for k in self.model if k[:len(prefix)] == prefix]:
                del self.model[k]

        @rule(ops=st.lists(st.tuples(st.sampled_from(["save", "remove", "remove_range"]), _KEYS, _VALUES),
                           max_size=8))
        def commit_batch(self, ops: list[tuple[str, Key, bytes]]) -> None:
            b = Batch()
            model = dict(self.model)
            for op, key, value in ops:
                if op == "save":
                    b.save(key, value)
                    model[key] = value
                elif op == "remove":
                    b.remove(key)
                    model.pop(key, None)
                else:
                    prefix = key[:-1] or key
                    b.remove_range(prefix)
                    model = {k: v for k, v in model.items() if k[:len(prefix)] != prefix}
            for s in self.stores.values():
                s.commit(b)
            self.model = model

        @rule(saves=st.dictionaries(_KEYS, _VALUES, max_size=4), removes=st.sets(_KEYS, max_size=4),
              range_removes=st.lists(_PREFIXES, max_size=2))
        def commit_raw(self, saves: dict[Key, bytes], removes: set[Key], range_removes: list[Key]) -> None:
            """A Batch filled by hand: the backend must apply range removes, then removes, then saves."""
            for s in self.stores.values():
                s.commit(Batch(saves=dict(saves), removes=set(removes), range_removes=list(range_removes)))
            for prefix in range_removes:
                self.model = {k: v for k, v in self.model.items() if k[:len(prefix)] != prefix}
            for k in removes:
                self.model.pop(k, None)
            self.model.update(saves)

        @rule(data=st.data())
        def load(self, data: st.DataObject) -> None:
            key = self._key(data)
            self._agree(f"load({key!r})", {b: s.load(key) for b, s in self.stores.items()}, self.model.get(key))

        @rule(data=st.data(), prefix=_PREFIXES, limit=_LIMITS, reverse=st.booleans())
        def load_range(self, data: st.DataObject, prefix: Key, limit: int | None, reverse: bool) -> None:
            start = self._key(data) if data.draw(st.booleans(), label="with start") else None
            answers = {b: s.load_range(prefix, start=start, limit=limit, reverse=reverse)
                       for b, s in self.stores.items()}
            want = model_range(self.model, prefix, start=start, limit=limit, reverse=reverse)
            self._agree(f"load_range({prefix!r}, start={start!r}, limit={limit}, reverse={reverse})", answers, want)

        @rule(prefix=_PREFIXES, page=st.integers(1, 3))
        def iter_range(self, prefix: Key, page: int) -> None:
            answers = {b: list(s.iter_range(prefix, batch=page)) for b, s in self.stores.items()}
            self._agree(f"iter_range({prefix!r}, batch={page})", answers, model_range(self.model, prefix))

        @precondition(lambda self: any(f.persistent for f in backends.values()))
        @rule()
        def reopen(self) -> None:
            for b, f in backends.items():
                if f.persistent:
                    self.stores[b].close()
                    self.stores[b] = f.open(self.name)

        @invariant()
        def everything_agrees(self) -> None:
            answers = {b: s.load_range(()) for b, s in self.stores.items()}
            self._agree("load_range(())", answers, model_range(self.model, ()))

        def teardown(self) -> None:
            for s in self.stores.values():
                s.close()

    return StoreAgreement


def run_agreement(factories: Mapping[str, StoreFactory | Callable[[str], ByteStore]], *, max_examples: int = 50,
                  steps: int = 30) -> None:
    """Run the machine, seeded and reproducible; raises on the first disagreement (shrunk)."""
    run_state_machine_as_test(
        agreement_machine(factories),
        settings=settings(max_examples=max_examples, stateful_step_count=steps, derandomize=True, database=None,
                          deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]),
    )

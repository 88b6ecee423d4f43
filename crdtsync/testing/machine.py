"""A Hypothesis state machine over 2 to 5 replicas of a schema: point it at your own ``Schema``.

::

    from crdtsync.testing import replica_machine
    from myapp.schema import SCHEMA

    TestSync = replica_machine(SCHEMA).TestCase        # a unittest TestCase pytest collects

Rules create, update, increment, delete, restore, resolve and discard on random replicas, and send, deliver
(in any order, more than once) and drop exported blobs between them; a rule also tries writes that break
the schema and checks that they change nothing. Another opens an edit form (keeps a record as shown) and,
later, saves it with some fields edited, through ``save_form``: override it with your app's code (and set
up app code in ``setup``, never by overriding ``start``); ``stale_form`` saves a form another replica's edit
made stale, in one step, so that a save without ``base=`` is caught at once (``Cluster.save_form`` checks
it). At the end of every run the machine exchanges everything, sending each replica only what it lacks
(``settle_since``), and asserts convergence and no lost write (see ``crdtsync.testing.cluster``).
``replica_machine(None)`` draws the schema itself, from ``crdtsync.testing.schemas()``;
``replica_machine(SCHEMA, store="sqlite")`` runs it on SQLite files.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from ..replica import Record, Replica
from ..schema import Schema
from ..store.base import ByteStore
from ..store.sqlite import SQLiteStore
from .cluster import Cluster, Form
from .strategies import DEFAULT_IDS, field_values, invalid_values, records, schemas, update_values

__all__ = ["ReplicaMachine", "replica_machine"]


class ReplicaMachine(RuleBasedStateMachine):
    """Subclass it (or call ``replica_machine``) with ``schema`` set; ``schema = None`` draws one."""

    schema: Schema | None = None
    min_replicas = 2
    max_replicas = 5
    ids: Sequence[str] = DEFAULT_IDS
    max_in_flight = 8
    #: ``"memory"`` (in-memory byte stores) or ``"sqlite"`` (one SQLite file per replica, in a temporary
    #: directory made per run and removed at its end)
    store: Literal["memory", "sqlite"] = "memory"
    #: settle (at the end of every run, and in ``settle_and_check``) by sending each replica only what it
    #: lacks, as a delta sync does, so that a partial export that loses something is caught; ``False``
    #: settles with full exports, which repair whatever partial exports lost
    settle_since = True

    #: edit forms open at once, at most (opening one more closes the oldest, unsaved)
    max_forms = 3

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        start = cls.__dict__.get("start")
        if start is not None and not hasattr(start, "hypothesis_stateful_initialize_rule"):
            raise TypeError(
                f"{cls.__name__}.start overrides the machine's @initialize rule without being one, so Hypothesis "
                "would never call it and no cluster would exist: set up app code in setup(self) instead (it runs "
                "once the cluster exists), or decorate start with @initialize(data=st.data()) and call "
                "super().start(data)")

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Cluster | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.forms: list[Form] = []
        # the exception being handled where the run started (if any): one other than it, in flight at
        # teardown, is a step's failure
        self._outer: BaseException | None = None

    @property
    def c(self) -> Cluster:
        if self.cluster is None:
            raise RuntimeError("the cluster is made by start(), the machine's @initialize rule, and it has not run: "
                               "a subclass sets up app code in setup(), not by overriding start()")
        return self.cluster

    # -- app code: override these ----------------------------------------------------------------------------

    def setup(self) -> None:
        """Set up app code once the cluster exists (``self.c.replicas``), at the start of every run: subscribe
        your listeners, wrap replicas in your app's objects. Does nothing by default."""

    def save_form(self, replica: Replica, collection: str, id: str, shown: Record, values: dict[str, Any]) -> None:
        """How the app saves an edit form: ``values`` hold every field of the form, the user's edits over
        ``shown`` (the record as ``get`` returned it when the form opened). By default
        ``replica.update(collection, id, values, base=shown)``; override it with your app's code. The oracle
        counts the save as made having seen only what ``shown`` showed."""
        replica.update(collection, id, values, base=shown)

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        self._outer = sys.exc_info()[1]
        schema = self.schema if self.schema is not None else data.draw(schemas(), label="schema")
        # values for every collection must be drawable: if they are not (a Str pattern Hypothesis cannot
        # satisfy within the field's limits), every run is rejected here and Hypothesis fails the test
        # (Unsatisfiable / FailedHealthCheck) instead of passing runs that never create a record
        for coll in schema:
            data.draw(records(coll, ids=self.ids), label=f"a valid {coll.name} record")
        n = data.draw(st.integers(self.min_replicas, self.max_replicas), label="replicas")
        skews = data.draw(st.lists(st.sampled_from([0, 0, 3, -3, 1000]), min_size=n, max_size=n), label="skews")
        cache = data.draw(st.sampled_from([1, 2, 100]), label="cache_size")
        # a few hundred bytes: records are evicted by weight, whatever the count
        weight = data.draw(st.sampled_from([None, 400, 64 * 2**20]), label="cache_bytes")
        store: Callable[[int], ByteStore] | None = None
        if self.store == "sqlite":
            self._dir = tempfile.TemporaryDirectory(prefix="crdtsync-machine-")
            base = Path(self._dir.name)
            store = lambda i: SQLiteStore(base / f"d{i}.db", synchronous="OFF")  # noqa: E731
        self.cluster = Cluster(schema, n, ids=self.ids, skews=skews, cache_size=cache, cache_bytes=weight,
                               compact_after=data.draw(st.sampled_from([2, 64]), label="compact_after"),
                               store=store)
        self.setup()

    def _pick(self, data: st.DataObject) -> tuple[int, str, str]:
        i = data.draw(st.integers(0, len(self.c.replicas) - 1), label="replica")
        coll = data.draw(st.sampled_from(sorted(c.name for c in self.c.schema)), label="collection")
        rid = data.draw(st.sampled_from(list(self.ids)), label="id")
        return i, coll, rid

    def _existing(self, data: st.DataObject) -> tuple[int, str, str] | None:
        """A record some replica has, and that replica (drawn among the replicas that hold records, so that
        edits seldom miss); ``None`` only while no replica holds any."""
        have: list[tuple[int, str, str]] = [(i, c.name, rec.id) for i, r in enumerate(self.c.replicas)
                                            for c in self.c.schema for rec in r.query(c.name, include_deleted=True)]
        if not have:
            return None
        picked: tuple[int, str, str] = data.draw(st.sampled_from(have), label="record")
        return picked

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        """Create the record if the replica does not have it, else update it (or, if deleted, try to)."""
        i, coll, rid = self._pick(data)
        c = self.c.schema[coll]
        if self.c.replicas[i].get(coll, rid) is None:
            self.c.create(i, coll, rid, data.draw(records(c, ids=self.ids), label="values"))
        else:
            self.c.update(i, coll, rid, data.draw(update_values(c, ids=self.ids), label="values"))

    @rule(data=st.data())
    def increment(self, data: st.DataObject) -> None:
        if (picked := self._existing(data)) is None:
            return
        i, coll, rid = picked
        counters = sorted(n for n, f in self.c.schema[coll].fields.items() if f.merge == "counter")
        if counters:
            name = data.draw(st.sampled_from(counters), label="counter")
            self.c.increment(i, coll, rid, name, data.draw(st.integers(-5, 5), label="by"))

    @rule(data=st.data())
    def delete_or_restore(self, data: st.DataObject) -> None:
        if (picked := self._existing(data)) is None:
            return
        i, coll, rid = picked
        rec = self.c.replicas[i].get(coll, rid)
        if rec is not None and (rec.deleted or any(c.field == "deleted" for c in rec.conflicts)) \
                and data.draw(st.booleans(), label="restore"):
            self.c.restore(i, coll, rid)
        else:
            self.c.delete(i, coll, rid)

    @rule(data=st.data())
    def resolve(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.c.replicas) - 1), label="replica")
        found = self.c.open_conflicts(i)
        if not found:
            return
        pick = data.draw(st.integers(0, len(found) - 1), label="conflict")
        rec, k = found[pick]
        c = rec.conflicts[k]
        choice = data.draw(st.integers(0, len(c.candidates) - 1), label="candidate")
        f = self.c.schema[rec.collection].fields.get(c.field)
        use_new = f is not None and c.kind == "concurrent-write" and data.draw(st.booleans(), label="new value")
        new = data.draw(field_values(f, ids=self.ids), label="value") if use_new and f is not None else None
        self.c.resolve(i, pick, choice, new, use_new=use_new)

    @rule(data=st.data())
    def edit_form(self, data: st.DataObject) -> None:
        """Open an edit form on a record a replica holds (it keeps the record as shown while other rules
        run; opening one more than ``max_forms`` closes the oldest, unsaved), or save an open one with one
        to three of its fields edited, through ``save_form``: often right after another replica edited the
        record and the form's replica received what the others have (it synced while the form was open)."""
        if not self.forms or data.draw(st.integers(0, 2), label="open another form (0) or save one") == 0:
            if (picked := self._existing(data)) is not None and (form := self.c.open_form(*picked)) is not None:
                self.forms = [*self.forms, form][-self.max_forms:]
            return
        form = self.forms.pop(data.draw(st.integers(0, len(self.forms) - 1), label="form"))
        theirs: dict[str, Any] = {}
        if data.draw(st.booleans(), label="edited elsewhere and synced while the form is open"):
            theirs = self._edit_elsewhere(form, data)
        self._save(form, theirs, data)

    @rule(data=st.data())
    def stale_form(self, data: st.DataObject) -> None:
        """The case a form saved without ``base=`` gets wrong, in one step: open an edit form on a record
        (made first if no replica holds any), have another replica edit that record and the form's
        replica receive the edit (the form is now stale), then save the form with one to three fields
        edited (sometimes one the other replica edited too) through ``save_form``. The oracle counts the
        save as made having seen only what the form showed, so a save that overwrites the other edit
        without a conflict fails the run."""
        if (picked := self._existing(data)) is None:
            i, coll, rid = self._pick(data)
            self.c.create(i, coll, rid, data.draw(records(self.c.schema[coll], ids=self.ids), label="values"))
        else:
            i, coll, rid = picked
        if (form := self.c.open_form(i, coll, rid)) is None:
            return
        self._save(form, self._edit_elsewhere(form, data), data)

    def _edit_elsewhere(self, form: Form, data: st.DataObject) -> dict[str, Any]:
        """Another replica edits the form's record (receiving it first if it lacks it), and the form's
        replica receives what that one has, as a device that synced while its form was open; returns the
        values written there."""
        coll, rid, n = form.shown.collection, form.shown.id, len(self.c.replicas)
        other = (form.replica + data.draw(st.integers(1, n - 1), label="edited on")) % n
        if self.c.replicas[other].get(coll, rid) is None:
            self.c.send(form.replica, other, since=True)
            self.c.deliver(len(self.c.in_flight) - 1)
        theirs: dict[str, Any] = data.draw(update_values(self.c.schema[coll], ids=self.ids), label="edited there")
        self.c.update(other, coll, rid, theirs)
        self.c.send(other, form.replica, since=True)
        self.c.deliver(len(self.c.in_flight) - 1)
        return theirs

    def _save(self, form: Form, theirs: dict[str, Any], data: st.DataObject) -> None:
        """Save ``form`` with one to three fields edited through ``save_form``; when ``theirs`` (another
        replica's edit the form did not show) is given, sometimes one of its fields too."""
        coll = self.c.schema[form.shown.collection]
        edits = data.draw(update_values(coll, ids=self.ids), label="edits")
        if len(theirs) > 0 and data.draw(st.booleans(), label="also edit a field edited there"):
            name = data.draw(st.sampled_from(sorted(theirs)), label="field edited on both")
            edits[name] = data.draw(field_values(coll.fields[name], ids=self.ids), label="edit")
        self.c.save_form(form, {**form.shown.fields, **edits}, self.save_form)

    @rule(data=st.data())
    def invalid_write(self, data: st.DataObject) -> None:
        i, coll, rid = self._pick(data)
        c = self.c.schema[coll]
        name = data.draw(st.sampled_from(sorted(c.fields)), label="field")
        bad = data.draw(invalid_values(c.fields[name]), label="bad value")
        self.c.expect_invalid(i, coll, rid, {name: bad})

    # no preconditions: with swarm testing, a run whose enabled rules all fail theirs is given up
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        if len(self.c.in_flight) >= self.max_in_flight:
            self.c.deliver(data.draw(st.integers(0, len(self.c.in_flight) - 1), label="deliver first"))
        n = len(self.c.replicas)
        src = data.draw(st.integers(0, n - 1), label="src")
        dst = (src + data.draw(st.integers(1, n - 1), label="dst after src")) % n  # never src, no filter
        how = data.draw(st.sampled_from(["full", "since", "delta"]), label="export")
        self.c.send(src, dst, since=how == "since", delta=how == "delta")

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        """Deliver a message in flight (any of them: reordering), keep a copy (duplication), or drop it."""
        if not self.c.in_flight:
            return
        pick = data.draw(st.integers(0, len(self.c.in_flight) - 1), label="message")
        how = data.draw(st.sampled_from(["deliver", "deliver", "duplicate", "drop"]), label="how")
        if how == "drop":
            self.c.drop(pick)
        else:
            self.c.deliver(pick, keep=how == "duplicate")

    @rule(data=st.data())
    def discard(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.c.replicas) - 1), label="replica")
        n = len(self.c.replicas[i].pending())
        if n:
            self.c.discard(i, data.draw(st.integers(0, n - 1), label="change"),
                           whole_record=data.draw(st.booleans(), label="whole record"))

    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        self.c.acknowledge(data.draw(st.integers(0, len(self.c.replicas) - 1), label="replica"))

    @rule(data=st.data())
    def settle_and_check(self, data: st.DataObject) -> None:
        """Now and then, exchange everything mid-run too: later writes then build on a converged state."""
        if data.draw(st.integers(0, 3), label="settle now") != 0:
            return
        self.c.settle(since=self.settle_since and data.draw(st.booleans(), label="only what the other lacks"))
        self.c.check()

    def teardown(self) -> None:
        if self.cluster is None:
            return
        # Hypothesis runs teardown in a ``finally``: after a step that raised, checking the state it left
        # would report a symptom (a write it left half recorded) in place of the step's own error
        failed = sys.exc_info()[1]
        try:
            if failed is None or failed is self._outer:
                # "only what the other lacks", as a delta sync does: a replica whose partial exports lose
                # something then differs here (full exports would repair it)
                self.c.settle(since=self.settle_since)
                self.c.check()
        finally:
            self.c.close()
            if self._dir is not None:
                self._dir.cleanup()


def replica_machine(schema: Schema | None, *, min_replicas: int = 2, max_replicas: int = 5,
                    ids: Sequence[str] = DEFAULT_IDS, store: Literal["memory", "sqlite"] = "memory",
                    settle_since: bool = True) -> type[ReplicaMachine]:
    """A ``ReplicaMachine`` subclass for ``schema`` (``None``: a schema drawn per run); ``store="sqlite"``
    runs every replica on its own SQLite file; ``settle_since=False`` settles with full exports."""
    if store not in ("memory", "sqlite"):
        raise ValueError(f"store must be 'memory' or 'sqlite', not {store!r}")
    attrs = {"schema": schema, "min_replicas": min_replicas, "max_replicas": max_replicas, "ids": tuple(ids),
             "store": store, "settle_since": settle_since}
    return type("ReplicaMachineFor" + ("Drawn" if schema is None else "Schema"), (ReplicaMachine,), attrs)

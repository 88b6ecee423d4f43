"""Forms saved on what the user saw (``update(..., base=)``) under random interleavings, and the testing kit's
form rule: ``Cluster.open_form``/``save_form``, ``ReplicaMachine.save_form`` and ``setup``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from crdtsync import Bool, Collection, Counter, DateTime, Int, Ref, Replica, Schema, Set, Str, Text
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.replica import Record
from crdtsync.testing import Cluster, ReplicaMachine, save_with_base

SCHEMA = Schema(Collection("accounts", {"name": Str(), "stage": Str(), "tags": Set(Str()), "visits": Counter(),
                                        "notes": Text()}))

NAMES = st.sampled_from(["A", "B", "C"])
TAGS = st.frozensets(st.sampled_from(["a", "b", "c"]))
NOTES = st.sampled_from(["call Ann", "call Ann today", "mail Ann", "call Bob", ""])


def _edit(data: st.DataObject, label: str) -> dict[str, Any]:
    fields = data.draw(st.lists(st.sampled_from(["name", "stage", "tags", "notes"]), min_size=1, max_size=3,
                                unique=True), label=f"{label} fields")
    out: dict[str, Any] = {}
    for name in fields:
        out[name] = data.draw(TAGS if name == "tags" else NOTES if name == "notes" else NAMES, label=name)
    return out


def _interleave(c: Cluster, data: st.DataObject, steps: int, label: str) -> None:
    """Writes on any replica, and exchanges between them (delivered at once, later, or never)."""
    for _ in range(steps):
        kind = data.draw(st.sampled_from(["write", "write", "increment", "send", "deliver"]), label=label)
        i = data.draw(st.integers(0, 2), label="replica")
        if kind == "write":
            c.update(i, "accounts", "r0", _edit(data, label))
        elif kind == "increment":
            c.increment(i, "accounts", "r0", "visits", data.draw(st.integers(-2, 3), label="by"))
        elif kind == "send":
            c.send(i, (i + data.draw(st.integers(1, 2), label="to")) % 3, since=data.draw(st.booleans()))
        elif c.in_flight:
            c.deliver(data.draw(st.integers(0, len(c.in_flight) - 1), label="message"))


@settings(derandomize=True, max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_form_saved_with_base_loses_no_write_the_user_had_not_seen(data: st.DataObject) -> None:
    """Three devices edit one record; d0 opens a form at a random point, the others (and d0 itself) go on
    writing and syncing, d0 receives some of it, and the user saves the form with some fields edited. Once
    everything is exchanged the oracle finds every write either in effect, an open conflict candidate, or
    overwritten by a write made after seeing it: the save, which counts as having seen only what the form
    showed (and d0's own writes), never made an unseen write disappear; and increments add up."""
    c = Cluster(SCHEMA, 3)
    c.create(0, "accounts", "r0", {"name": "A", "tags": frozenset({"a"}), "visits": 1, "notes": "call Ann"})
    c.settle()
    _interleave(c, data, data.draw(st.integers(0, 4), label="steps before"), "before")
    form = c.open_form(0, "accounts", "r0")
    assert form is not None
    _interleave(c, data, data.draw(st.integers(0, 8), label="steps while open"), "while open")
    if data.draw(st.booleans(), label="d0 syncs before saving"):
        for j in (1, 2):
            c.send(j, 0, since=True)
            c.deliver(len(c.in_flight) - 1)
    values = {**form.shown.fields, **_edit(data, "form")}
    values["visits"] = form.shown["visits"] + data.draw(st.integers(-2, 3), label="visits typed")
    c.save_form(form, values)
    c.settle(since=True)
    c.check()


SMALL = Schema(Collection("accounts", {"name": Str(max_length=4), "tags": Set(Str(max_length=2), max_items=4),
                                       "visits": Counter()}))


class FormMachine(ReplicaMachine):
    schema = SMALL
    ids = ("r0", "r1")
    max_replicas = 3


class SavesWithoutBase(FormMachine):
    """The planted bug: the app saves its stale form with every field, as a plain update."""

    def save_form(self, replica: Replica, collection: str, id: str, shown: Record, values: dict[str, Any]) -> None:
        replica.update(collection, id, values)


_CATCH = settings(derandomize=True, max_examples=200, stateful_step_count=30, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.reuse, Phase.generate],  # (shrinking the failure took 90 s)
                  report_multiple_bugs=False, suppress_health_check=list(HealthCheck))


def test_the_machine_passes_forms_saved_with_base() -> None:
    """And its form rule does save forms on records that changed elsewhere since they opened."""
    saved: list[bool] = []

    class Counting(FormMachine):
        def save_form(self, replica: Replica, collection: str, id: str, shown: Record,
                      values: dict[str, Any]) -> None:
            now = replica.get(collection, id)
            assert now is not None and shown.version is not None and now.version is not None
            saved.append(any(w != replica.device and n != shown.version.get(w) for w, n in now.version.items()))
            super().save_form(replica, collection, id, shown, values)

    # (Hypothesis draws constants from the modules loaded, so how many forms a run saves varies with the
    # tests run before: a larger budget than _CATCH's keeps this well clear of the bound)
    run_state_machine_as_test(Counting, settings=settings(_CATCH, max_examples=400, stateful_step_count=40))
    assert sum(saved) >= 5, (sum(saved), len(saved))


def test_the_machine_catches_a_form_saved_without_base() -> None:
    with pytest.raises(AssertionError, match=r"lost write|add-wins says|the increments add up"):
        run_state_machine_as_test(SavesWithoutBase, settings=_CATCH)


def test_setup_runs_app_code_once_the_cluster_exists() -> None:
    runs: list[int] = []

    class WithApp(FormMachine):
        def setup(self) -> None:
            events: list[object] = []
            for r in self.c.replicas:
                r.subscribe(events.append)
            runs.append(len(self.c.replicas))

    run_state_machine_as_test(WithApp, settings=settings(_CATCH, max_examples=5, stateful_step_count=5))
    assert runs and all(2 <= n <= 3 for n in runs)


def test_overriding_start_is_refused_unless_it_is_an_initialize_rule() -> None:
    """The obvious override (Hypothesis never calls it: the cluster never existed, and every run failed with
    a bare AssertionError) fails when the class is defined, saying what to do; an override that is an
    ``@initialize`` rule and calls ``super().start`` works."""
    with pytest.raises(TypeError, match="setup"):
        class Plain(FormMachine):
            def start(self, data: st.DataObject) -> None:
                super().start(data)

    started: list[bool] = []

    class Initialize(FormMachine):
        @initialize(data=st.data())
        def start(self, data: st.DataObject) -> None:
            super().start(data)
            started.append(True)

    run_state_machine_as_test(Initialize, settings=settings(_CATCH, max_examples=3, stateful_step_count=3))
    assert started


def test_a_form_save_leaving_a_set_over_its_limit_as_shown_is_counted() -> None:
    """The save checks only the user's edits (a set merged over ``max_items``, left as shown, does not stop
    it), so the oracle counts the form's counter edit too: it checked every field of the form, raised
    ``ValidationError`` after the save had gone through, and the machine's teardown then reported a counter
    off by the uncounted edit (``visits is 643, the increments add up to 689``)."""
    c = Cluster(SMALL, 2)
    c.create(0, "accounts", "r0", {"visits": 7})
    c.settle()
    c.update(0, "accounts", "r0", {"tags": frozenset({"a", "b", "c"})})
    c.update(1, "accounts", "r0", {"tags": frozenset({"x", "y", "z"})})
    c.settle()
    form = c.open_form(0, "accounts", "r0")
    assert form is not None and len(form.shown["tags"]) == 6  # merged over max_items=4
    c.increment(1, "accounts", "r0", "visits", 3)
    assert c.save_form(form, {**form.shown.fields, "visits": 2, "name": "N"})
    rec = c.replicas[0].get("accounts", "r0")
    assert rec is not None and rec["visits"] == 2 and rec["name"] == "N"
    c.settle(since=True)
    c.check()  # 7 + 3 + (2 - 7)
    assert [None if x is None else x["visits"] for x in (r.get("accounts", "r0") for r in c.replicas)] == [5, 5]


def test_a_step_that_raises_is_reported_not_the_state_it_left() -> None:
    """The teardown (run by Hypothesis in a ``finally``) does not check the state a failed step left: its
    report of that state (here a counter off by a write the oracle never recorded) used to replace the
    step's own error, as a form save's ``ValidationError`` once showed up as a counter that did not add up."""

    class Raising(FormMachine):
        @rule()
        def fail_half_recorded(self) -> None:
            if self.c.replicas[0].get("accounts", "r0") is None:
                self.c.create(0, "accounts", "r0", {"visits": 1})
            self.c.replicas[0].increment("accounts", "r0", "visits", 5)  # not recorded by the oracle
            raise RuntimeError("the step failed")

    with pytest.raises(RuntimeError, match="the step failed"):
        run_state_machine_as_test(Raising, settings=settings(_CATCH, max_examples=20, stateful_step_count=5))


# A multi-collection app schema (a field-service CRM an app developer tried the kit on)
WORK_ORDER_STATES = ["open", "scheduled", "in_progress", "done", "cancelled"]
APP_SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True, max_length=120), "owner": Str(), "city": Str(),
                            "tags": Set(Str()), "notes": Text()}),
    Collection("contacts", {"name": Str(required=True), "email": Str(), "phone": Str(),
                            "account": Ref("accounts")}),
    Collection("work_orders", {"title": Str(required=True, max_length=80), "account": Ref("accounts"),
                               "state": Str(choices=WORK_ORDER_STATES), "technician": Str(),
                               "priority": Int(min=1, max=5), "notes": Text(), "parts_used": Counter(),
                               "billable": Bool()}),
    Collection("visits", {"work_order": Ref("work_orders"), "technician": Str(), "started": DateTime(),
                          "minutes": Int(min=0)}),
)

#: the settings docs/testing.md recommends
DOCUMENTED = settings(max_examples=50, stateful_step_count=40, deadline=None, derandomize=True,
                      report_multiple_bugs=False, phases=[p for p in Phase if p is not Phase.explain])


def _no_base(replica: Replica, collection: str, id: str, shown: Record, values: dict[str, Any]) -> None:
    replica.update(collection, id, values)  # every field of the stale form, as a plain update


def _fresh_base(replica: Replica, collection: str, id: str, shown: Record, values: dict[str, Any]) -> None:
    replica.update(collection, id, values, base=replica.get(collection, id))  # re-read at save time


def _changed_no_base(replica: Replica, collection: str, id: str, shown: Record, values: dict[str, Any]) -> None:
    changed = {k: v for k, v in values.items() if v != shown.fields.get(k)}  # only the edits, but no base
    if changed:
        replica.update(collection, id, changed)


def _machine(schema: Schema, save: Any) -> type[ReplicaMachine]:
    def save_form(self: ReplicaMachine, replica: Replica, collection: str, id: str, shown: Record,
                  values: dict[str, Any]) -> None:
        save(replica, collection, id, shown, values)
    return type("App", (ReplicaMachine,), {"schema": schema, "save_form": save_form})


@pytest.mark.parametrize("save", [_no_base, _fresh_base, _changed_no_base])
@pytest.mark.parametrize("schema", [DEMO_SCHEMA, APP_SCHEMA], ids=["demo", "app"])
def test_the_documented_settings_catch_a_stale_form_save(schema: Schema, save: Any) -> None:
    """Each planted form-save bug fails the machine under the settings docs/testing.md recommends, at the
    save (the oracle checks it on its replica), in a few seconds: the rules used to reach a stale save a few
    times in 50 runs, and Hypothesis's explain phase (traced runs on Python < 3.12) made shrinking take
    minutes."""
    with pytest.raises(AssertionError, match=r"form save of .* \(saved without base=\?\)"):
        run_state_machine_as_test(_machine(schema, save), settings=DOCUMENTED)


@pytest.mark.parametrize("schema", [DEMO_SCHEMA, APP_SCHEMA], ids=["demo", "app"])
def test_the_documented_settings_pass_a_form_saved_with_base(schema: Schema) -> None:
    run_state_machine_as_test(_machine(schema, save_with_base), settings=DOCUMENTED)


def test_a_stale_save_without_base_fails_at_the_save() -> None:
    """``Cluster.save_form`` checks the save on its replica: a write the form did not show, overwritten
    without a conflict, fails there (not only at the next ``check()``), naming the write."""
    c = Cluster(APP_SCHEMA, 2)
    c.create(0, "work_orders", "r0", {"title": "Boiler", "priority": 2, "state": "open", "parts_used": 1})
    c.settle()
    form = c.open_form(0, "work_orders", "r0")
    assert form is not None
    c.update(1, "work_orders", "r0", {"priority": 5})
    c.increment(1, "work_orders", "r0", "parts_used", 2)
    c.send(1, 0)
    c.deliver(0)
    with pytest.raises(AssertionError, match=r"lost write .*'priority'.*overwrote it without a conflict"):
        c.save_form(form, {**form.shown.fields, "state": "done"}, save=_no_base)
    c2 = Cluster(APP_SCHEMA, 2)
    c2.create(0, "work_orders", "r0", {"title": "Boiler", "parts_used": 1})
    c2.settle()
    form = c2.open_form(0, "work_orders", "r0")
    assert form is not None
    c2.increment(1, "work_orders", "r0", "parts_used", 2)
    c2.send(1, 0)
    c2.deliver(0)
    with pytest.raises(AssertionError, match=r"made counter parts_used 1: it was 3"):
        c2.save_form(form, {**form.shown.fields, "state": "done"}, save=_no_base)

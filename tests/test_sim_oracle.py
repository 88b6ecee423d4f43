"""The lost-update oracle on tiny hand-made histories whose right answer is known."""

from __future__ import annotations

from dataclasses import replace

import pytest

from crdtsync.sim.oracle import DELETED, FinalRecord, Write, evaluate, same_value


def w(id: int, device: str, seq: int, field: str, value: object, seen: dict[str, int] | None = None,
      record: str = "r") -> Write:
    s = dict(seen or {})
    s[device] = seq
    return Write(id, device, seq, record, field, value, s)


def test_a_kept_value_is_not_lost() -> None:
    a = w(1, "A", 1, "name", "x")
    rep = evaluate([a], [{"r": FinalRecord(False, {"name": "x"})}])
    assert rep.verdicts == {1: "kept"}
    assert rep.lost_updates == 0


def test_concurrent_same_field_write_overwritten_silently_is_lost() -> None:
    a = w(1, "A", 1, "name", "x")
    b = w(2, "B", 1, "name", "y")  # B had not seen A
    rep = evaluate([a, b], [{"r": FinalRecord(False, {"name": "y"})}])
    assert rep.verdicts == {1: "lost", 2: "kept"}
    assert (rep.lost_updates, rep.silently_lost) == (1, 1)


def test_overwritten_by_someone_who_had_seen_it_is_not_lost() -> None:
    a = w(1, "A", 1, "name", "x")
    b = w(2, "B", 1, "name", "y", seen={"A": 1})
    rep = evaluate([a, b], [{"r": FinalRecord(False, {"name": "y"})}])
    assert rep.verdicts == {1: "superseded", 2: "kept"}
    assert rep.lost_updates == 0


def test_a_surfaced_conflict_is_not_lost() -> None:
    a = w(1, "A", 1, "name", "x")
    b = w(2, "B", 1, "name", "y")
    final = {"r": FinalRecord(False, {"name": "y"}, {"name": ["y", "x"]})}
    rep = evaluate([a, b], [final])
    assert rep.verdicts == {1: "surfaced", 2: "kept"}
    assert rep.lost_updates == 0 and rep.conflicts_open == 1 and rep.surfaced_writes == 1


def test_stale_whole_record_overwrite_loses_an_independent_field() -> None:
    a = w(1, "A", 1, "name", "x")
    b = w(2, "B", 1, "phone", "9")  # concurrent, other field: B's draft reverted name
    rep = evaluate([a, b], [{"r": FinalRecord(False, {"name": "old", "phone": "9"})}])
    assert rep.verdicts[1] == "lost"
    assert (rep.independent_writes, rep.independent_lost) == (2, 1)
    assert rep.independent_survival == 0.5


def test_an_author_who_was_told_makes_the_loss_not_silent() -> None:
    a = w(1, "A", 1, "name", "x")
    b = w(2, "B", 1, DELETED, True)
    rep = evaluate([a, b], [{"r": FinalRecord(True, {"name": "old"})}], notified=[1])
    assert rep.verdicts == {1: "lost", 2: "kept"}
    assert (rep.lost_updates, rep.silently_lost, rep.delete_update_losses) == (1, 0, 1)


def test_edit_hidden_by_a_concurrent_delete_is_a_delete_vs_update_loss_unless_surfaced() -> None:
    a = w(1, "A", 1, "name", "x")
    b = w(2, "B", 1, DELETED, True)
    lost = evaluate([a, b], [{"r": FinalRecord(True, {"name": "x"})}])
    assert (lost.lost_updates, lost.delete_update_losses) == (1, 1)
    shown = evaluate([a, b], [{"r": FinalRecord(True, {"name": "x"}, {"name": [True, "x"]})}])
    assert shown.verdicts[1] == "surfaced" and shown.lost_updates == 0
    knowing = evaluate([a, w(2, "B", 1, DELETED, True, seen={"A": 1})], [{"r": FinalRecord(True, {})}])
    assert knowing.verdicts[1] == "superseded"


def test_a_delete_offered_in_a_conflict_does_not_stand_for_the_int_1() -> None:
    """An edit-vs-delete conflict offers the delete as the candidate ``True``, and ``True == 1``: a lost write
    of ``amount`` 1 was judged surfaced by it, kept by a field showing ``True``, and overwritten knowingly by
    someone whose screen showed the delete's candidate."""
    lost = w(1, "A", 1, "amount", 1)
    d = w(2, "B", 1, DELETED, True)
    rep = evaluate([lost, d], [{"r": FinalRecord(True, {"amount": 5}, {"amount": [True, 7]})}])
    assert rep.verdicts[1] == "lost" and rep.lost_updates == 1
    assert evaluate([lost], [{"r": FinalRecord(False, {"amount": True})}]).verdicts[1] == "lost"
    later = replace(w(3, "C", 1, "amount", 9, seen={"A": 1}), shown=(("amount", True),))
    rep = evaluate([lost, later], [{"r": FinalRecord(False, {"amount": 9})}])
    assert rep.verdicts[1] == "lost"
    on_screen = replace(later, shown=(("amount", True), ("amount", 1)))
    assert evaluate([lost, on_screen], [{"r": FinalRecord(False, {"amount": 9})}]).verdicts[1] == "superseded"


def test_same_value_tells_types_apart_also_inside_containers() -> None:
    assert same_value(1, 1) and same_value("x", "x") and same_value(None, None) and same_value(True, True)
    assert not same_value(1, True) and not same_value(0, False) and not same_value(1, 1.0)
    assert same_value([1, "a"], [1, "a"]) and not same_value([1], [True]) and not same_value((1,), [1])
    assert same_value({"k": 1}, {"k": 1}) and not same_value({"k": 1}, {"k": True})
    assert same_value({1, 2}, {2, 1}) and not same_value({1}, {True}) and not same_value({1}, {1, 2})


def test_a_screen_shows_an_int_1_and_a_deletes_candidate_true_both() -> None:
    """A record deleted while ``amount`` was set to 1 elsewhere shows ``amount`` 1 and the conflict's
    candidates 1 and ``True`` (the delete): as a set, ``("amount", True)`` would vanish into ``("amount", 1)``."""
    from crdtsync import Replica
    from crdtsync.sim.device import on_screen
    from crdtsync.sim.workload import COLLECTION, workload_schema
    from crdtsync.store.memory import MemoryStore

    a, b = (Replica(MemoryStore(), workload_schema(), device=n, user=n) for n in ("a", "b"))
    a.create(COLLECTION, {"name": "n", "amount": 5}, id="r")
    b.import_updates(a.export_updates())
    a.update(COLLECTION, "r", {"amount": 1})
    b.delete(COLLECTION, "r")
    a.import_updates(b.export_updates())
    shown = on_screen(a.get(COLLECTION, "r"))
    amounts = [v for f, v in shown if f == "amount"]
    assert len(amounts) == 2 and any(v is True for v in amounts) and any(type(v) is int and v == 1 for v in amounts)
    assert (DELETED, True) in shown and len(shown) == len(set(map(repr, shown)))


def test_a_delete_undone_without_anyone_seeing_it_is_a_resurrection() -> None:
    d = w(1, "A", 1, DELETED, True)
    rep = evaluate([d], [{"r": FinalRecord(False, {"name": "x"})}])
    assert rep.verdicts == {1: "lost"} and rep.resurrections == 1
    surfaced = evaluate([d], [{"r": FinalRecord(False, {"name": "x"}, {DELETED: [False, True]})}])
    assert surfaced.verdicts == {1: "surfaced"} and surfaced.resurrections == 0


def test_lost_on_one_device_is_lost() -> None:
    a = w(1, "A", 1, "name", "x")
    finals = [{"r": FinalRecord(False, {"name": "x"})}, {"r": FinalRecord(False, {"name": "z"})}]
    assert evaluate([a], finals).verdicts == {1: "lost"}


def test_earlier_write_of_the_same_device_is_seen() -> None:
    a1 = w(1, "A", 1, "name", "x")
    a2 = w(2, "A", 2, "name", "y")
    rep = evaluate([a1, a2], [{"r": FinalRecord(False, {"name": "y"})}])
    assert rep.verdicts == {1: "superseded", 2: "kept"}


def test_an_overwrite_by_someone_who_never_had_the_value_on_screen_is_a_loss() -> None:
    """Under last-writer-wins, C can receive A's write after B's had already replaced it, and never see it:
    C's later edit does not overwrite A's value knowingly."""
    a = w(1, "A", 1, "name", "x")
    b = w(2, "B", 1, "name", "y")
    final = [{"r": FinalRecord(False, {"name": "z"})}]
    blind = replace(w(3, "C", 1, "name", "z", seen={"A": 1, "B": 1}), shown=frozenset({("name", "y")}))
    rep = evaluate([a, b, blind], final)
    assert rep.verdicts == {1: "lost", 2: "superseded", 3: "kept"}
    assert (rep.lost_updates, rep.silently_lost) == (1, 1)
    # shown as a candidate of a conflict counts as on screen
    both = replace(blind, shown=frozenset({("name", "y"), ("name", "x")}))
    assert evaluate([a, b, both], final).verdicts == {1: "superseded", 2: "superseded", 3: "kept"}
    # a screen shown but not recorded (None): having seen the write is enough, as before
    assert evaluate([a, b, replace(blind, shown=None)], final).lost_updates == 0
    # its author's own later edit supersedes a write, whatever the screen showed (here B's y had replaced x)
    mine = replace(w(3, "A", 2, "name", "z", seen={"B": 1}), shown=frozenset({("name", "y")}))
    assert evaluate([a, b, mine], final).verdicts == {1: "superseded", 2: "superseded", 3: "kept"}


def test_a_delete_supersedes_only_the_values_its_author_had_on_screen() -> None:
    a = w(1, "A", 1, "name", "x")
    b = w(2, "B", 1, "phone", "9")
    d = replace(w(3, "C", 1, DELETED, True, seen={"A": 1, "B": 1}), shown=frozenset({("name", "x")}))
    rep = evaluate([a, b, d], [{"r": FinalRecord(True, {"name": "x", "phone": "9"})}])
    assert rep.verdicts == {1: "superseded", 2: "lost", 3: "kept"}
    assert rep.delete_update_losses == 1


def _reference(ws: list[Write], finals: list[dict[str, FinalRecord]]) -> tuple[dict[int, str], set[int]]:
    """The definitions of docs/simulator.md computed the straightforward way (every pair of writes of a
    record): the verdicts, and the ids of the independent-field writes."""
    def saw(a: Write, b: Write) -> bool:
        return a.seen.get(b.device, 0) >= b.seq

    def knowingly(o: Write, w: Write) -> bool:
        return (o is not w and o.record == w.record and o.field in (w.field, DELETED) and saw(o, w)
                and (o.device == w.device or o.shown is None
                     or any(f == w.field and type(v) is type(w.value) and v == w.value for f, v in o.shown)))

    rank = ["lost", "superseded", "surfaced", "kept"]
    verdicts: dict[int, str] = {}
    independent: set[int] = set()
    for x in ws:
        sup = any(knowingly(o, x) for o in ws)
        worst = 3
        for final in finals:
            rec = final.get(x.record)
            if x.field == DELETED:
                v = 3 if rec is not None and rec.deleted else \
                    2 if rec is not None and True in rec.conflicts.get(DELETED, ()) else 1 if sup else 0
            else:
                kept = rec is not None and not rec.deleted and x.field in rec.fields \
                    and type(rec.fields[x.field]) is type(x.value) and rec.fields[x.field] == x.value
                offered = rec is not None and any(type(c) is type(x.value) and c == x.value
                                                  for c in rec.conflicts.get(x.field, ()))
                v = 3 if kept else 2 if offered else 1 if sup else 0
            worst = min(worst, v)
        verdicts[x.id] = rank[worst]
        if x.field != DELETED:
            conc = [o for o in ws if o.record == x.record and o.device != x.device
                    and not saw(o, x) and not saw(x, o)]
            if any(o.field not in (DELETED, x.field) for o in conc) \
                    and not any(o.field in (DELETED, x.field) for o in conc):
                independent.add(x.id)
    return verdicts, independent


def _history(seed: int, n: int, devices: int = 3, records: int = 2, fields: tuple[str, ...] = ("a", "b", "c"),
             seen_type: type[dict[str, int]] = dict) -> tuple[list[Write], list[dict[str, FinalRecord]]]:
    """A random history with consistent knowledge: devices write and now and then learn what another knew;
    each screen shows the latest write of each field the device knows, sometimes with a rival as a conflict."""
    import random
    rng = random.Random(seed)
    names = [f"D{i}" for i in range(devices)]
    know: dict[str, dict[str, int]] = {d: {} for d in names}
    made: dict[str, list[Write]] = {d: [] for d in names}
    ws: list[Write] = []
    for i in range(n):
        d = rng.choice(names)
        if rng.random() < 0.3:
            other = rng.choice(names)
            for k, v in know[other].items():
                know[d][k] = max(know[d].get(k, 0), v)
        seq = know[d].get(d, 0) + 1
        know[d][d] = seq
        rec = f"r{rng.randrange(records)}"
        field = DELETED if rng.random() < 0.05 else rng.choice(fields)
        known = [x for dev in names for x in made[dev][:know[d].get(dev, 0)] if x.record == rec]
        shown: set[tuple[str, object]] = set()
        for f in fields:
            of_f = [x for x in known if x.field == f]
            if of_f:
                shown.add((f, max(of_f, key=lambda x: x.id).value))
                if rng.random() < 0.2:
                    shown.add((f, rng.choice(of_f).value))
        value: object = True if field == DELETED else f"v{i}"
        x = Write(i, d, seq, rec, field, value, seen_type(know[d]), i,
                  None if rng.random() < 0.1 else frozenset(shown))
        made[d].append(x)
        ws.append(x)
    finals = []
    for _ in range(2):
        final = {}
        for r in {x.record for x in ws}:
            mine = [x for x in ws if x.record == r]
            vals = {f: rng.choice([x.value for x in mine if x.field == f] or [None]) for f in fields}
            conflicts = {f: [x.value for x in mine if x.field == f][-2:] for f in fields if rng.random() < 0.2}
            final[r] = FinalRecord(rng.random() < 0.1, vals, conflicts)
        finals.append(final)
    return ws, finals


def test_the_oracle_agrees_with_the_straightforward_computation() -> None:
    for seed in range(40):
        ws, finals = _history(seed, 120)
        rep = evaluate(ws, finals)
        verdicts, independent = _reference(ws, finals)
        assert rep.verdicts == verdicts, seed
        assert rep.independent_writes == len(independent), seed
        assert rep.independent_lost == sum(verdicts[i] == "lost" for i in independent), seed
        assert 0 < rep.lost_updates < rep.field_writes


def test_the_oracle_agrees_with_the_straightforward_computation_on_simulated_runs() -> None:
    from crdtsync.sim import Params, make_plan
    from crdtsync.sim.run import play

    p = Params(seed=5, devices=3, records=6, edits=150, hot_fraction=0.5, offline_mean_ms=40_000)
    for strategy in ("crdt", "lww-field", "lww-record", "lww-patch"):
        out = play(make_plan(p), strategy)
        rep = evaluate(out.writes, out.states, out.notified)
        verdicts, independent = _reference(out.writes, out.states)
        assert rep.verdicts == verdicts, strategy
        assert rep.independent_writes == len(independent), strategy


class _Budget(dict[str, int]):
    """A ``seen`` that counts how often the oracle reads it, and gives up past a budget."""

    reads = 0
    limit = 0

    def get(self, key: str, default: int | None = None) -> int | None:  # type: ignore[override]
        type(self).reads += 1
        if type(self).reads > type(self).limit:
            raise AssertionError("the oracle read the writes' knowledge more than the budget allows")
        return super().get(key, default)


def test_the_oracles_work_grows_about_linearly_with_the_history() -> None:
    """Judging pairs of writes took 4.7 s of a 54 s run at 20,000 edits, and grows with the square of a
    record's writes; now each write looks at each (device, field) lane of its record once, by bisection."""
    ws, finals = _history(1, 4_000, devices=3, records=1, seen_type=_Budget)
    _Budget.reads, _Budget.limit = 0, 100 * len(ws)
    rep = evaluate(ws, finals)
    assert rep.field_writes > 3_000


def test_a_history_whose_knowledge_shrinks_is_refused() -> None:
    """The oracle's bisections rely on a device never forgetting what it had seen."""
    later = w(2, "A", 2, "name", "y")  # had seen nothing of B, after a write that had
    with pytest.raises(ValueError, match="had seen less"):
        evaluate([w(1, "A", 1, "name", "x", seen={"B": 1}), later], [])

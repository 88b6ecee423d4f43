"""The lost-update oracle on tiny hand-made histories whose right answer is known."""

from __future__ import annotations

from crdtsync.sim.oracle import DELETED, FinalRecord, Write, evaluate


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

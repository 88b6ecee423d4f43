"""``crdtsync demo``: two devices edit one account offline and merge by exchanging update blobs.

Shows what users of offline field apps care about: edits to different fields both survive, a same-field
clash is surfaced with who and when (and resolved), text merges by character, counters add up.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .replica import Record, Replica
from .schema import Collection, Counter, Int, Ref, Schema, Set, Str, Text

__all__ = ["DEMO_SCHEMA", "add_arguments", "run"]

DEMO_SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True, max_length=120), "employees": Int(min=0),
                            "phone": Str(max_length=40), "notes": Text(), "tags": Set(Str()),
                            "visits": Counter(), "parent": Ref("accounts")}),
    Collection("contacts", {"name": Str(required=True), "email": Str(), "account": Ref("accounts")},
               delete_policy="delete-wins"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None, help="where to keep the devices' SQLite files")


def show(rec: Record | None, indent: str = "    ") -> str:
    if rec is None:
        return indent + "(missing)"
    lines = [f"{indent}{rec.collection}/{rec.id}  status={rec.status}" + ("  DELETED" if rec.deleted else "")]
    for name, value in rec.fields.items():
        if isinstance(value, frozenset):
            value = sorted(value)
        lines.append(f"{indent}  {name:<10} {value!r}")
    for c in rec.conflicts:
        lines.append(f"{indent}  CONFLICT on {c.field!r} ({c.kind}):")
        for i, cand in enumerate(c.candidates):
            mark = "in effect" if i == 0 else "kept, lost"
            lines.append(f"{indent}    {cand.value!r:<24} by {cand.user}@{cand.device} at "
                         f"{cand.at:%H:%M:%S.%f}"[:-3] + f"  [{mark}]")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        phone = Replica.open(base / "phone.db", DEMO_SCHEMA, device="phone-1", user="alice")
        laptop = Replica.open(base / "laptop.db", DEMO_SCHEMA, device="laptop-2", user="bob")
        with phone, laptop:
            acct = phone.create("accounts", {"name": "Acme", "notes": "Met the buyer.", "tags": {"lead"}})
            laptop.import_updates(phone.export_updates())
            print("Both devices have the account; now both go offline and edit it:\n")
            phone.update("accounts", acct, {"employees": 120, "name": "Acme Corp",
                                            "notes": "Met the buyer. Wants a demo."})
            phone.increment("accounts", acct, "visits", 1)
            contact = phone.create("contacts", {"name": "Dana", "account": acct})
            laptop.update("accounts", acct, {"phone": "+1 555 0100", "name": "ACME Inc.",
                                             "tags": {"lead", "vip"}, "notes": "Important: Met the buyer."})
            laptop.increment("accounts", acct, "visits", 2)
            print("  phone (alice):  employees=120, name='Acme Corp', notes appended, +1 visit, new contact")
            print("  laptop (bob):   phone, name='ACME Inc.', tag 'vip', notes prefixed, +2 visits\n")
            print("They meet again and exchange updates (export_updates -> import_updates, both ways).\n")
            laptop.import_updates(phone.export_updates(since=laptop.state_vectors()))
            phone.import_updates(laptop.export_updates(since=phone.state_vectors()))
            a, b = phone.get("accounts", acct), laptop.get("accounts", acct)
            assert a is not None and b is not None
            print("Merged account on the phone:")
            print(show(a))
            print(f"\nIdentical on both devices: {a.fields == b.fields and a.conflicts == b.conflicts}")
            print("\nThe contact created offline on the phone, referring to the account, reached the laptop:")
            print(show(laptop.get("contacts", contact)))
            winner = a.conflicts[0].candidates[0]
            print("\nAlice resolves the name conflict by typing a new value; the resolution syncs like any edit.")
            phone.resolve("accounts", acct, "name", "Acme Corporation")
            laptop.import_updates(phone.export_updates(since=laptop.state_vectors()))
            print(show(laptop.get("accounts", acct)))
            print(f"\n(the winner before resolving was {winner.value!r} by {winner.user}: latest HLC time, "
                  "ties broken by device id)")
            print("\nHistory of the name field, from the laptop:")
            for h in laptop.history("accounts", acct):
                if h.field == "name":
                    print(f"    {h.at:%H:%M:%S} {h.user}@{h.device} {h.op} {h.value!r}")
            print(f"\nPending changes on the phone (not yet acknowledged by a relay): {len(phone.pending())}")
    return 0

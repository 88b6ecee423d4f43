"""``crdtsync demo``: a relay and three devices; two go offline, edit the same records, and come back.

Everything is real: a relay on a loopback port with tokens, three replicas on their own SQLite files,
websockets in between. Shows what users of offline field apps care about: edits to different fields all
survive, a same-field clash is surfaced with who and when, a delete that met an edit keeps the edit
visible, and each device reports its sync status as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path

from .client import SyncClient, SyncStatus
from .relay import Grant, Relay, Tokens
from .replica import Record, Replica
from .schema import Collection, Counter, Int, Ref, Schema, Set, Str, Text
from .store import SQLiteStore
from .timeouts import wait_for

__all__ = ["DEMO_SCHEMA", "add_arguments", "run", "show"]

DEMO_SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True, max_length=120), "employees": Int(min=0),
                            "phone": Str(max_length=40), "notes": Text(), "tags": Set(Str()),
                            "visits": Counter(), "parent": Ref("accounts")}),
    Collection("contacts", {"name": Str(required=True), "email": Str(), "account": Ref("accounts")},
               delete_policy="delete-wins"),
)

_EVERYTHING = frozenset({"*"})
_USERS = {"phone-1": ("alice", "tok-alice"), "laptop-2": ("bob", "tok-bob"), "tablet-3": ("carol", "tok-carol")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=None, help="where to keep the SQLite files (default: temp)")


def show(rec: Record | None, indent: str = "    ") -> str:
    """A record, readably: its fields, status, and each open conflict with who wrote what when."""
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
            mark = "in effect" if i == 0 else "kept: restore() brings the record back with it" \
                if c.kind == "edit-vs-delete" else "kept: pick it to resolve"
            shown = "(deleted)" if c.kind == "edit-vs-delete" and cand.value is True else repr(cand.value)
            lines.append(f"{indent}    {shown:<24} by {cand.user}@{cand.device} at "
                         f"{cand.at:%H:%M:%S.%f}"[:-3] + f"  [{mark}]")
    return "\n".join(lines)


class _Device:
    def __init__(self, base: Path, name: str, url: str) -> None:
        self.name = name
        self.user, self.token = _USERS[name]
        self.replica = Replica.open(base / f"{name}.db", DEMO_SCHEMA, device=name, user=self.user)
        self.url = url
        self.events: list[str] = []
        self.client: SyncClient | None = None

    def _record(self, st: SyncStatus) -> None:
        if st.kind != "progress" or st.done == st.total:  # keep the log short: last progress step only
            self.events.append(str(st))

    async def connect(self) -> None:
        self.client = SyncClient(self.replica, self.url, token=self.token)
        self.client.subscribe(self._record)
        await self.client.start()

    async def disconnect(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
            self.events.append("offline (disconnected by the demo)")

    async def sync(self) -> None:
        assert self.client is not None
        await wait_for(self.client.sync_now(), 30)


async def _demo(base: Path) -> int:
    store = SQLiteStore(base / "relay.db", synchronous="NORMAL")
    tokens = Tokens({tok: Grant(user, _EVERYTHING, _EVERYTHING) for user, tok in _USERS.values()})
    relay = Relay(store, DEMO_SCHEMA, tokens)
    host, port = await relay.start("127.0.0.1", 0)
    url = f"ws://{host}:{port}"
    print(f"Relay listening on {url}; three devices connect: phone-1 (alice), laptop-2 (bob), tablet-3 (carol)\n")
    phone, laptop, tablet = devices = [_Device(base, n, url) for n in _USERS]
    try:
        for d in devices:
            await d.connect()
        acct = phone.replica.create("accounts", {"name": "Acme", "employees": 100, "tags": {"lead"}})
        contact = phone.replica.create("contacts", {"name": "Dana", "account": acct})
        await phone.sync()
        for d in (laptop, tablet):
            await d.sync()
        print("The phone created an account and a contact; all three devices have them.")
        print("laptop-2 and tablet-3 go offline and edit the same records:\n")
        await laptop.disconnect()
        await tablet.disconnect()
        laptop.replica.update("accounts", acct, {"employees": 120, "name": "ACME Inc."})
        laptop.replica.update("contacts", contact, {"email": "dana@acme.example"})
        tablet.replica.update("accounts", acct, {"phone": "+1 555 0100", "name": "Acme Corp",
                                                 "tags": {"lead", "vip"}})
        tablet.replica.delete("contacts", contact)
        print("  laptop-2 (bob):   employees=120, name='ACME Inc.', Dana's email")
        print("  tablet-3 (carol): phone, name='Acme Corp', tag 'vip', deletes the contact Dana\n")
        print(f"  pending on laptop-2: {len(laptop.replica.pending())}, on tablet-3: "
              f"{len(tablet.replica.pending())}\n")
        print("Both reconnect; each uploads its pending changes, then downloads what changed.\n")
        for d in (laptop, tablet):
            await d.connect()
            await d.sync()
        for d in devices:  # one more round so every device has seen everything
            await d.sync()
        a = phone.replica.get("accounts", acct)
        print("Merged account (on phone-1):")
        print(show(a))
        print("\nMerged contact (delete vs edit; contacts are delete-wins, the edit stays visible):")
        print(show(phone.replica.get("contacts", contact)))
        same = all(d.replica.get("accounts", acct) == a and
                   d.replica.get("contacts", contact) == phone.replica.get("contacts", contact) for d in devices)
        print(f"\nIdentical on all three devices: {same}")
        if a is not None:
            for c in a.conflicts:
                win = c.candidates[0]
                print(f"Conflict surfaced on {c.field!r}: {win.value!r} ({win.user}@{win.device}, "
                      f"{win.at:%H:%M:%S}) wins by its later clock; "
                      + ", ".join(f"{x.value!r} ({x.user}@{x.device}, {x.at:%H:%M:%S})" for x in c.candidates[1:])
                      + " is kept for the user to pick.")
        print("\nSync events per device:")
        for d in devices:
            print(f"  {d.name}:")
            for e in d.events:
                print(f"    {e}")
        print(f"\nPending changes left: {sum(len(d.replica.pending()) for d in devices)}; relay log head: "
              f"{relay.log.head}")
    finally:
        for d in devices:
            await d.disconnect()
            d.replica.close()
        await relay.stop()
        store.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.getLogger("crdtsync").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_demo(base))

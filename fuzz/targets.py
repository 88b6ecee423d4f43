"""Fuzz targets: functions that take arbitrary bytes and must never fail in an unplanned way.

Each target raises ``AssertionError`` on a real bug (an unexpected exception, a state change after a
refused input); expected refusals (``CrdtSyncError``) are fine. Used by ``fuzz/run.py`` (atheris or a
seeded mutation loop) and by the short seeded pass in ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

from crdtsync import (
    Bool,
    Collection,
    Counter,
    CrdtSyncError,
    Date,
    Float,
    Int,
    Ref,
    Replica,
    Schema,
    Set,
    Str,
    Text,
)

__all__ = ["SCHEMA", "TARGETS", "frame_corpus", "frames_target", "import_target", "seed_corpus"]

SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True, max_length=50), "n": Int(min=0), "x": Float(),
                            "ok": Bool(), "day": Date(), "notes": Text(), "tags": Set(Str()),
                            "visits": Counter(), "parent": Ref("accounts")}),
    Collection("visits", {"account": Ref("accounts"), "note": Str()}, delete_policy="edit-wins"),
)


def _replica(device: str) -> Replica:
    """A replica with a fake clock and seeded randomness, so that the corpus is the same on every run."""
    rng = random.Random(device)
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000, 7))
    return Replica.open(":memory:", SCHEMA, device=device, user="u", wall=lambda: next(ticks),
                        random_bytes=rng.randbytes)


def seed_corpus() -> list[bytes]:
    """Valid exports to mutate: creates, edits, conflicts, deletes, every field kind."""
    a, b = _replica("dev-a"), _replica("dev-b")
    rid = a.create("accounts", {"name": "Acme", "n": 3, "x": 1.5, "ok": True, "day": dt.date(2026, 1, 2),
                                "notes": "hello", "tags": {"a", "b"}})
    out = [a.export_updates()]
    b.import_updates(out[0])
    a.update("accounts", rid, {"name": "A1", "notes": "hello world", "tags": {"b", "c"}})
    b.update("accounts", rid, {"name": "B1"})
    b.increment("accounts", rid, "visits", 4)
    v = b.create("visits", {"account": rid, "note": "x"})
    a.import_updates(b.export_updates())
    a.delete("accounts", rid)
    b.delete("visits", v)
    out += [a.export_updates(), b.export_updates(), b.export_updates(since=a.state_vectors())]
    return out


def _snapshot(r: Replica) -> list[object]:
    return [(rec.id, rec.fields, rec.deleted, rec.conflicts) for c in ("accounts", "visits")
            for rec in r.query(c, include_deleted=True)]


def import_target() -> Callable[[bytes], None]:
    base = seed_corpus()[0]

    def run(data: bytes) -> None:
        r = _replica("fuzz-target")
        r.import_updates(base)
        before = _snapshot(r)
        try:
            r.import_updates(data)
        except CrdtSyncError:
            assert _snapshot(r) == before, "a refused import changed the replica"
            # the replica must still work after a refused import
            r.update("accounts", before[0][0], {"n": 1})  # type: ignore[index]
            return
        except Exception as e:  # pragma: no cover - this is the bug being hunted
            raise AssertionError(f"import_updates raised {type(e).__name__}: {e}") from e
        _snapshot(r)  # reading every accepted record must work

    return run


def frame_corpus() -> list[bytes]:
    """Valid frames of every kind, produced by a client and a relay core talking to each other."""
    from crdtsync.protocol import (
        Ack,
        Change,
        Changes,
        Connection,
        Hello,
        Item,
        Live,
        Pull,
        Push,
        Role,
        Welcome,
    )

    update = seed_corpus()[0][-60:]
    client, relay = Connection(Role.CLIENT), Connection(Role.RELAY)
    frames: list[bytes] = []

    def move(src: Connection, dst: Connection) -> None:
        for data in src.data_to_send():
            frames.append(data)
            dst.receive_data(data)
        dst.events_received()

    client.send(Hello("dev-a"))
    move(client, relay)
    relay.send(Welcome("u", "log-1", 3, 0, ("accounts",), ("accounts",)))
    move(relay, client)
    client.send(Push(1, (Change(7, "accounts", "r1", update), Change(8, "accounts", "r2", update))))
    client.send(Pull(2, 0, "log-1", ("accounts",), True))
    move(client, relay)
    relay.send(Ack(1, (7, 8)))
    relay.send(Changes(2, (Item("accounts", "r1", 4, update),), 1, 1, 4, False))
    relay.send(Live((Item("accounts", "r3", 5, update),)))
    move(relay, client)
    return frames


def frames_target() -> Callable[[bytes], None]:
    """Feed bytes, as one frame or split in two, to both ends of the protocol core after a valid opening."""
    from crdtsync.protocol import Connection, Hello, Role, State, decode_frame
    from crdtsync.protocol.frames import FrameError

    opening = frame_corpus()[:2]  # the client's HELLO and the relay's WELCOME

    def run(data: bytes) -> None:
        try:
            decode_frame(data)
        except FrameError:
            pass
        except Exception as e:  # pragma: no cover - the bug being hunted
            raise AssertionError(f"decode_frame raised {type(e).__name__}: {e}") from e
        for role in (Role.RELAY, Role.CLIENT):
            conn = Connection(role)
            if role is Role.CLIENT:
                conn.send(Hello("dev-a", "fuzz"))
                conn.data_to_send()
                conn.receive_data(opening[1])
            else:
                conn.receive_data(opening[0])
            conn.events_received()
            try:
                conn.receive_data(data)
                conn.receive_data(data[: len(data) // 2])
            except Exception as e:  # pragma: no cover - the bug being hunted
                raise AssertionError(f"{role.value} core raised {type(e).__name__}: {e}") from e
            assert conn.state in set(State)
            conn.events_received()
            conn.data_to_send()

    return run


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {"import": import_target, "frames": frames_target}

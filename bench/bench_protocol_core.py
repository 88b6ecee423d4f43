"""The sync protocol core's CPU per update on the relay's fan-out path, against websockets' own frame parser.

What the fan-out benchmark's relay does per update in the protocol core, in process, no sockets: a relay-side
``Connection`` takes one PUSH frame per change (as the benchmark's writer sends them) and answers each write
group with one ACK frame; one LIVE frame per group is encoded and sent on ``--readers`` connections; a
client-side core encodes the pushes and decodes a reader's LIVE frames. The baseline, measured in the same
run on the same messages, is websockets' sans-I/O parser reading the PUSH frames as masked websocket frames
(what every server pays per message before the core sees it). CPU time (``process_time``), best of
``--repeat``; ratios are core / baseline.

    PYTHONPATH=. python -m bench.bench_protocol_core [--updates 5000] [--group 30] [--readers 10]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence

from websockets.protocol import Protocol, Side, State

from crdtsync.protocol.connection import Connection, Role, encode_event
from crdtsync.protocol.events import Ack, Acks, Change, Hello, Item, Live, Push, Welcome

__all__ = ["main", "run"]


def _pair() -> tuple[Connection, Connection]:
    client, relay = Connection(Role.CLIENT), Connection(Role.RELAY)
    client.send(Hello("writer"))
    for data in client.data_to_send():
        relay.receive_data(data)
    relay.events_received()
    relay.send(Welcome("u", "relay", 0, 0, "*", "*"))
    for data in relay.data_to_send():
        client.receive_data(data)
    client.events_received()
    return client, relay


def _best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def run(updates: int, group: int, readers: int, repeat: int) -> list[tuple[str, float]]:
    """(what, CPU µs per update) for the baseline and each core path."""
    rng = random.Random(1)
    records = [f"rec{i:03d}-{rng.getrandbits(64):016x}" for i in range(100)]
    changes = [Change((1 << 56) + i, "accounts", records[i % 100], rng.randbytes(213)) for i in range(updates)]
    window = 64  # the core's max_pushes_in_flight: the writer waits for acks beyond it

    def push_frames() -> list[bytes]:
        client, _ = _pair()
        out = []
        for i, c in enumerate(changes):
            if client.pushes_in_flight >= window:
                client._pushes.clear()  # stands for the acks the relay would send
            client.send(Push(i + 1, (c,)))
            out += client.data_to_send()
        return out

    frames = push_frames()
    masked = Protocol(Side.CLIENT, state=State.OPEN)
    for f in frames:
        masked.send_binary(f)
    wire = b"".join(masked.data_to_send())
    chunks = [wire[i:i + 65536] for i in range(0, len(wire), 65536)]

    def baseline() -> float:
        parser = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
        t = time.process_time()
        for chunk in chunks:
            parser.receive_data(chunk)
            parser.events_received()
        return time.process_time() - t

    def relay_receive_and_ack() -> float:
        _, relay = _pair()
        t = time.process_time()
        for start in range(0, updates, group):
            for data in frames[start:start + group]:
                relay.receive_data(data)
                relay.events_received()
            acks = tuple(Ack(i + 1, (changes[i].change_id,)) for i in range(start, min(updates, start + group)))
            relay.send(acks[0] if len(acks) == 1 else Acks(acks))
            relay.data_to_send()
        return time.process_time() - t

    live_events = [Live(tuple(Item(c.collection, c.record, start + j, c.update)
                              for j, c in enumerate(changes[start:start + group])))
                   for start in range(0, updates, group)]

    def relay_live() -> float:
        conns = [_pair()[1] for _ in range(readers)]
        t = time.process_time()
        for ev in live_events:
            data = encode_event(ev)
            for conn in conns:
                conn.send(ev, data)
                conn.data_to_send()
        return time.process_time() - t

    def client_push() -> float:
        return _client_push(changes, window)

    encoded_live = [encode_event(ev) for ev in live_events]

    def client_live() -> float:
        client, _ = _pair()
        t = time.process_time()
        for data in encoded_live:
            client.receive_data(data)
            client.events_received()
        return (time.process_time() - t) * readers

    per = 1e6 / updates
    return [("baseline: websockets parses the PUSH messages", _best(baseline, repeat) * per),
            ("relay: receive PUSH + one ACK per group", _best(relay_receive_and_ack, repeat) * per),
            (f"relay: encode + send LIVE to {readers} readers", _best(relay_live, repeat) * per),
            ("client: encode PUSH", _best(client_push, repeat) * per),
            (f"client: decode LIVE, {readers} readers", _best(client_live, repeat) * per)]


def _client_push(changes: Sequence[Change], window: int) -> float:
    client, _ = _pair()
    t = time.process_time()
    for i, c in enumerate(changes):
        if client.pushes_in_flight >= window:
            client._pushes.clear()
        client.send(Push(i + 1, (c,)))
        client.data_to_send()
    return time.process_time() - t


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_protocol_core", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=5000, help="changes, one per PUSH frame (default 5000)")
    p.add_argument("--group", type=int, default=30, help="pushes per write group: one ACK, one LIVE (default 30)")
    p.add_argument("--readers", type=int, default=10, help="live readers (default 10)")
    p.add_argument("--repeat", type=int, default=5, help="runs per path; the best is reported (default 5)")
    args = p.parse_args(argv)
    if min(args.updates, args.group, args.readers, args.repeat) < 1:
        p.error("--updates, --group, --readers and --repeat must be >= 1")
    rows = run(args.updates, args.group, args.readers, args.repeat)
    base = rows[0][1]
    print(f"protocol core, {args.updates} updates, groups of {args.group}, {args.readers} readers "
          "(CPU µs per update, best of {})".format(args.repeat))
    for what, us in rows:
        print(f"  {what:48s} {us:7.2f} µs   x{us / base:5.2f} baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())

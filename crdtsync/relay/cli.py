"""``crdtsync relay``: run a relay until SIGTERM or SIGINT (then it closes connections, commits what it has
queued, and exits 0). SIGHUP reloads the tokens file. Prints ``listening on ws://HOST:PORT`` once ready."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import logging
import signal
import sys
from pathlib import Path

import orjson

from ..errors import CrdtSyncError, LocalError
from ..schema import Schema
from ..store.sqlite import SQLiteStore
from .auth import Tokens, load_tokens
from .server import Limits, Relay

__all__ = ["add_arguments", "load_schema", "run"]

log = logging.getLogger("crdtsync.relay")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--db", type=Path, default=Path("relay.db"), help="the relay's SQLite file")
    parser.add_argument("--schema", required=True, help="MODULE:ATTR of a Schema, or a schema .json file")
    parser.add_argument("--tokens", type=Path, default=None,
                        help="tokens TOML file; without it the relay is open (loopback only, development)")
    parser.add_argument("--keep-log", type=int, default=100_000,
                        help="log entries kept for delta sync; older cursors get a full resync")
    parser.add_argument("--max-frame", type=int, default=16 * 1024 * 1024, help="largest frame accepted, bytes")
    parser.add_argument("--rate", type=float, default=500.0, help="frames per second per connection")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL",
                        help="SQLite durability: FULL survives power loss, NORMAL a killed process")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection and commit")


def load_schema(spec: str) -> Schema:
    """A schema from ``module:attr`` or from a JSON file (``Schema.to_dict`` format)."""
    if spec.endswith(".json"):
        try:
            return Schema.from_dict(orjson.loads(Path(spec).read_bytes()))
        except (OSError, orjson.JSONDecodeError) as e:
            raise LocalError(f"cannot read schema file {spec}: {e}") from None
    module, sep, attr = spec.partition(":")
    if not sep:
        raise LocalError(f"--schema must be MODULE:ATTR or a .json file, not {spec!r}")
    try:
        value = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise LocalError(f"cannot load schema {spec}: {e}") from None
    if not isinstance(value, Schema):
        raise LocalError(f"{spec} is a {type(value).__name__}, not a Schema")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve(args: argparse.Namespace, schema: Schema, tokens: Tokens) -> int:
    store = SQLiteStore(args.db, synchronous=args.synchronous)
    relay = Relay(store, schema, tokens, keep_log=args.keep_log,
                  limits=Limits(max_frame=args.max_frame, rate=args.rate, burst=int(args.rate * 2)))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        if args.tokens is None:
            return
        try:
            relay.tokens = Tokens(load_tokens(args.tokens))
            log.info("reloaded %s", args.tokens)
        except LocalError as e:
            log.error("kept the old tokens: %s", e)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        host, port = await relay.start(args.host, args.port)
        print(f"listening on ws://{host}:{port}", flush=True)
        await stop.wait()
        log.info("shutting down")
        await relay.stop()
    finally:
        store.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        schema = load_schema(args.schema)
        if args.tokens is None:
            if not _is_loopback(args.host):
                print(f"refusing to run an open relay (no --tokens) on {args.host}: use a loopback address",
                      file=sys.stderr)
                return 2
            tokens = Tokens(None)
        else:
            tokens = Tokens(load_tokens(args.tokens))
    except CrdtSyncError as e:
        print(f"crdtsync relay: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, schema, tokens))

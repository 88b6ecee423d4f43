"""The ``crdtsync`` command line. Each subcommand lives in its own module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# name -> (module, help). A module provides add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("crdtsync.demo", "devices editing offline and merging, with a surfaced conflict"),
    "relay": ("crdtsync.relay.cli", "run a sync relay (websockets, SQLite, tokens)"),
    "relay-copy": ("crdtsync.relay.transfer", "copy a stopped relay's database to another (SQLite, PostgreSQL)"),
    "simulate": ("crdtsync.sim.cli", "compare conflict strategies on a seeded simulated workload"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crdtsync", description="Offline-first sync of business records.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    code: int = importlib.import_module(args._module).run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

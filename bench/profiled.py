"""Run the ``crdtsync`` command line under cProfile: ``python -m bench.profiled OUT.prof relay ...``.

The relay exits cleanly on SIGTERM, so the profile of a whole benchmark run is written when the
benchmark stops it. Read it with ``python -m pstats OUT.prof`` (then ``sort tottime``, ``stats 30``).
"""

from __future__ import annotations

import cProfile
import sys

from crdtsync.cli import main as crdtsync_main

__all__ = ["main"]


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    prof = cProfile.Profile()
    try:
        code = prof.runcall(crdtsync_main, argv)
    finally:
        prof.dump_stats(out)
    return code


if __name__ == "__main__":
    sys.exit(main())

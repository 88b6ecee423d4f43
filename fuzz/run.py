"""Run a fuzz campaign: ``python fuzz/run.py import [--seconds 600] [--seed 1]``.

Uses atheris (coverage-guided, libFuzzer) when it is installed, else a seeded mutation loop over the seed
corpus. A crash prints the input in hex and saves it under fuzz/crashes/.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.mutate import mutate
from fuzz.targets import TARGETS, frame_corpus, seed_corpus

__all__ = ["main", "mutation_loop"]


def mutation_loop(target: Callable[[bytes], None], corpus: list[bytes], *, seed: int, iterations: int | None,
                  seconds: float | None) -> int:
    """Feed mutated corpus entries to ``target``; return how many inputs ran. Raises on a crash."""
    rng = random.Random(seed)
    deadline = None if seconds is None else time.monotonic() + seconds
    n = 0
    while (iterations is None or n < iterations) and (deadline is None or time.monotonic() < deadline):
        data = mutate(rng, rng.choice(corpus), corpus)
        try:
            target(data)
        except BaseException:
            out = Path(__file__).parent / "crashes"
            out.mkdir(exist_ok=True)
            (out / f"crash-{seed}-{n}.bin").write_bytes(data)
            print(f"crash on input {n}: {data.hex()}", file=sys.stderr)
            raise
        n += 1
    return n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("target", choices=sorted(TARGETS))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-atheris", action="store_true", help="use the seeded mutation loop")
    args, rest = p.parse_known_args()
    target = TARGETS[args.target]()
    corpus = seed_corpus() if args.target == "import" else frame_corpus()
    try:
        if args.no_atheris:
            raise ImportError
        import atheris
    except ImportError:
        n = mutation_loop(target, corpus or [b""], seed=args.seed, iterations=None, seconds=args.seconds)
        print(f"{args.target}: {n} inputs in {args.seconds:.0f} s, no crash")
        return 0
    corpus_dir = Path(__file__).parent / "corpus" / args.target
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(corpus):
        (corpus_dir / f"seed-{i}").write_bytes(c)
    atheris.Setup([sys.argv[0], str(corpus_dir), f"-max_total_time={int(args.seconds)}",
                   f"-seed={args.seed}", *rest], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

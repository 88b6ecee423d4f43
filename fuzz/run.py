"""Run a fuzz campaign: ``python fuzz/run.py import [--seconds 600] [--seed 1] [-- LIBFUZZER_ARGS]``.

Uses atheris (coverage-guided, libFuzzer, with crdtsync's modules instrumented) when it is installed, else
a seeded mutation loop over the seed corpus (said on stderr). libFuzzer's working corpus lives in
``fuzz/work/<target>/`` (not tracked; the seeds are written there afresh on every run). A crash prints the
input in hex and saves it under fuzz/crashes/ (mutation loop) or in libFuzzer's ``crash-*`` file.
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

__all__ = ["main", "mutation_loop"]

TARGET_NAMES = ("frames", "import")
#: libFuzzer options that make it re-run this script in subprocesses, which it cannot do (it would run
#: fuzz/run.py itself, not executable, without the target argument)
_MULTI_PROCESS = ("-jobs", "-workers", "-fork", "-merge", "-minimize_crash")


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("target", choices=TARGET_NAMES)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-atheris", action="store_true", help="use the seeded mutation loop")
    p.epilog = "Arguments after -- go to libFuzzer (atheris only)."
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    extra = argv[cut + 1:]
    multi = [a for a in extra if a.split("=")[0] in _MULTI_PROCESS]
    if multi:
        p.error(f"{' '.join(multi)}: libFuzzer would re-run this script in subprocesses, which does not work; "
                "run several copies with different --seed instead")
    try:
        if args.no_atheris:
            raise ImportError
        import atheris
    except ImportError:
        if extra:
            p.error(f"libFuzzer arguments {' '.join(extra)} need atheris "
                    f"({'--no-atheris given' if args.no_atheris else 'not installed'})")
        if not args.no_atheris:
            print("atheris is not installed: falling back to the seeded mutation loop", file=sys.stderr)
        from fuzz.targets import TARGETS, frame_corpus, seed_corpus
        target = TARGETS[args.target]()
        corpus = seed_corpus() if args.target == "import" else frame_corpus()
        n = mutation_loop(target, corpus or [b""], seed=args.seed, iterations=None, seconds=args.seconds)
        print(f"{args.target}: {n} inputs in {args.seconds:.0f} s, no crash")
        return 0
    if "crdtsync" in sys.modules:
        print("crdtsync was imported before atheris could instrument it: no coverage guidance", file=sys.stderr)
    with atheris.instrument_imports(include=["crdtsync", "fuzz"]):
        from fuzz.targets import TARGETS, frame_corpus, seed_corpus
    target = TARGETS[args.target]()
    corpus = seed_corpus() if args.target == "import" else frame_corpus()
    work = Path(__file__).parent / "work" / args.target  # libFuzzer adds the inputs it finds here
    work.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(corpus):
        (work / f"seed-{i}").write_bytes(c)
    crashes = Path(__file__).parent / "crashes"
    crashes.mkdir(exist_ok=True)
    atheris.Setup([sys.argv[0], str(work), f"-max_total_time={int(args.seconds)}", f"-seed={args.seed}",
                   f"-artifact_prefix={crashes}/", *extra], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())

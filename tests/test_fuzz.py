"""The short, seeded fuzz pass CI runs (long campaigns: see fuzz/README.md)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.run import mutation_loop
from fuzz.targets import frame_corpus, frames_target, import_target, seed_corpus

LONG = os.environ.get("CRDTSYNC_LONG") == "1"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_import_survives_mutated_exports(seed: int) -> None:
    n = mutation_loop(import_target(), seed_corpus(), seed=seed, iterations=3000 if LONG else 150, seconds=None)
    assert n == (3000 if LONG else 150)


@settings(derandomize=True, max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_import_survives_random_bytes(data: bytes) -> None:
    import_target()(b"CSX1" + data)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_protocol_core_survives_mutated_frames(seed: int) -> None:
    corpus = frame_corpus()
    assert len(corpus) == 7
    n = mutation_loop(frames_target(), corpus, seed=seed, iterations=20000 if LONG else 1000, seconds=None)
    assert n == (20000 if LONG else 1000)


@pytest.mark.parametrize("argv", [["import", "--seconds", "0", "--", "-jobs=2", "-workers=2"],
                                  ["import", "--seconds", "0", "--no-atheris", "--", "-max_len=100"]])
def test_run_refuses_libfuzzer_arguments_it_cannot_honour(argv: list[str], capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """-jobs/-workers would make libFuzzer re-run fuzz/run.py (not executable, no target argument); without
    atheris, libFuzzer arguments used to be ignored silently."""
    from fuzz.run import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert ("several copies" if "-jobs=2" in argv else "need atheris") in capsys.readouterr().err


def test_import_survives_the_input_atheris_found() -> None:
    """Found in 5 s by the coverage-guided run (``fuzz/run.py import``, atheris, crdtsync instrumented): a
    Yrs panic (divide by zero in block_store.rs) escaped ``import_updates`` as pyo3's PanicException. It is
    a ``MalformedUpdate`` now, and the replica is unchanged and still works (the target checks both)."""
    from pathlib import Path

    import_target()((Path(__file__).parent.parent / "fuzz" / "known" / "import-yrs-divide-by-zero.bin").read_bytes())

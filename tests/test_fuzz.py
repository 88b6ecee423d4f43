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

"""The hybrid logical clock: monotonic whatever the wall clock does, and past every time it has seen."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.clock import MAX_AHEAD_MS, Hlc, hlc_counter, hlc_pack, hlc_wall_ms


class FakeWall:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_follows_the_wall_clock_when_it_moves_forward() -> None:
    wall = FakeWall(1_000)
    clock = Hlc(wall)
    assert clock.now() == hlc_pack(1_000, 0)
    wall.ms = 1_005
    assert clock.now() == hlc_pack(1_005, 0)


def test_a_wall_clock_jumping_backwards_does_not_move_time_back() -> None:
    wall = FakeWall(10_000)
    clock = Hlc(wall)
    t1 = clock.now()
    wall.ms = 4_000  # NTP correction, a user changing the date
    t2, t3 = clock.now(), clock.now()
    assert t1 < t2 < t3
    assert hlc_wall_ms(t3) == 10_000 and hlc_counter(t3) == 2


def test_a_peer_running_ahead_pushes_local_times_past_its_own() -> None:
    wall = FakeWall(1_000)
    clock = Hlc(wall)
    remote = hlc_pack(50_000, 7)  # a device whose clock is 49 s fast
    clock.observe(remote)
    assert clock.now() > remote
    clock.observe(hlc_pack(10, 0))  # an old time changes nothing
    assert clock.now() > remote


def test_counter_overflow_within_one_millisecond_borrows_the_next() -> None:
    clock = Hlc(FakeWall(7), last=hlc_pack(7, 0xFFFF))
    t = clock.now()
    assert hlc_wall_ms(t) == 8 and hlc_counter(t) == 0


def test_restart_with_last_time_stays_monotonic() -> None:
    first = Hlc(FakeWall(20_000))
    t = first.now()
    again = Hlc(FakeWall(1_000), last=first.last)  # restarted with the wall clock set back
    assert again.now() > t


@settings(derandomize=True, max_examples=300)
@given(st.lists(st.one_of(st.tuples(st.just("wall"), st.integers(0, 10**6)),
                          st.tuples(st.just("observe"), st.integers(0, 2**40)),
                          st.tuples(st.just("now"), st.just(0))), max_size=60))
def test_now_is_strictly_increasing_and_after_everything_observed(steps: list[tuple[str, int]]) -> None:
    wall = FakeWall(0)
    clock = Hlc(wall)
    last = 0
    for op, value in steps:
        if op == "wall":
            wall.ms = value
        elif op == "observe":
            clock.observe(value)
            last = max(last, value)
        else:
            t = clock.now()
            assert t > last
            assert hlc_wall_ms(t) >= wall.ms  # never behind the wall clock
            last = t


def test_a_peer_far_ahead_moves_the_clock_only_half_the_relays_bound() -> None:
    """An honest device that imported a file from a device whose clock ran 40 days ahead took its times in
    whole, and the relay (which refuses writes stamped more than 30 days ahead) refused every change it
    made for the next 10 days."""
    day = 24 * 3600 * 1000
    wall = FakeWall(1_800_000_000_000)
    clock = Hlc(wall)
    clock.observe(hlc_pack(wall.ms + 40 * day, 0))
    t = clock.now()
    assert hlc_wall_ms(t) == wall.ms + MAX_AHEAD_MS // 2
    clock.observe(hlc_pack(wall.ms + 10 * day, 0))  # within the bound: taken in as before
    assert clock.now() > t

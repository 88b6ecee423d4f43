"""Hybrid logical clock (HLC), with no I/O: the wall clock is passed in.

An HLC time is one int: ``wall_ms << 16 | counter``. It orders like the wall clock when clocks agree, and
stays monotonic when the wall clock jumps backwards or when a peer's clock runs ahead: ``now()`` never
returns a time at or below one it returned or observed before. Times fit in 63 bits (the stores' int keys)
until the year 6429; ``MAX_TIME``, the start of the year 3000, bounds every time a record may hold, so
that no peer can push a clock to where its next time no longer fits.

Kulkarni et al., "Logical Physical Clocks and Consistent Snapshots in Globally Distributed Databases".
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MAX_AHEAD_MS", "MAX_TIME", "Hlc", "hlc_counter", "hlc_pack", "hlc_wall_ms"]

_COUNTER_BITS = 16
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1

#: no record may hold a time at or after this one (the start of the year 3000, UTC)
MAX_TIME = 32503680000000 << _COUNTER_BITS

#: how far ahead of a clock's own wall time a time it observes may move it (and how far ahead of the relay's
#: clock a change may be stamped): a peer whose clock ran ahead cannot drag this one further than that
MAX_AHEAD_MS = 30 * 24 * 3600 * 1000


def hlc_pack(wall_ms: int, counter: int) -> int:
    """Pack a wall time in ms and a counter into one HLC time."""
    return (wall_ms << _COUNTER_BITS) | counter


def hlc_wall_ms(t: int) -> int:
    """The wall-clock part of an HLC time, in ms since the epoch."""
    return t >> _COUNTER_BITS


def hlc_counter(t: int) -> int:
    """The logical counter part of an HLC time."""
    return t & _COUNTER_MAX


class Hlc:
    """A hybrid logical clock over an injected wall clock (``wall()`` returns ms since the epoch).

    ``last`` restores the clock after a restart, so that times stay monotonic across restarts even if the
    wall clock went backwards in between.
    """

    __slots__ = ("_last", "_wall")

    def __init__(self, wall: Callable[[], int], last: int = 0) -> None:
        self._wall = wall
        self._last = last

    @property
    def last(self) -> int:
        """The latest time issued or observed."""
        return self._last

    def now(self) -> int:
        """A new time for a local event, strictly greater than every time issued or observed."""
        wall = self._wall()
        last = self._last  # the helpers inlined: ``now`` runs on every local write
        last_wall, last_counter = last >> _COUNTER_BITS, last & _COUNTER_MAX
        if wall > last_wall:
            t = wall << _COUNTER_BITS
        elif last_counter < _COUNTER_MAX:
            t = last + 1
        else:  # counter exhausted within one ms: borrow the next ms
            t = (last_wall + 1) << _COUNTER_BITS
        self._last = t
        return t

    def observe(self, remote: int) -> None:
        """Take in a time seen on a remote event, so that later local times order after it: up to half of
        ``MAX_AHEAD_MS`` past this clock's wall time. A time further ahead (a peer whose clock runs ahead)
        moves it only that far, so this device's writes stay within what a relay accepts (with room for
        the two clocks to differ); they still supersede what they saw (that is judged by what a write had
        seen, not by its time)."""
        if remote > self._last:
            bound = (self._wall() + MAX_AHEAD_MS // 2) << _COUNTER_BITS
            self._last = max(self._last, min(remote, bound))

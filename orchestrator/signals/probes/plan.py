"""When each probe is due: a pure deadline planner (no clock, no I/O, no randomness).

Every target runs on a fixed grid ``phase + n * interval`` on the monotonic clock:

* ``phase`` is deterministic jitter, a hash of the target's key spread over the interval,
  so thousands of targets with the same interval do not fire together, and a target keeps
  its phase when the scheduler is rebuilt (a policy reload) or other targets come and go;
* the next deadline is the next grid point, whenever the previous probe actually ran: late
  runs never shift later deadlines (no drift);
* when the caller fell behind by whole intervals (an event loop stalled for seconds), the
  missed grid points are dropped rather than run in a burst.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Sequence


def phase_offset(key: str, interval: float) -> float:
    """Deterministic jitter of ``key`` within ``[0, interval)``: the same on every run."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 * interval


class DeadlinePlanner:
    """Deadlines of many periodic targets, in order.

    Targets are ``(key, interval)`` pairs, addressed by their index. The first deadline of
    each is its first grid point at or after ``start``. ``pop_due(until)`` returns the due
    targets with the deadline each was due at and moves each to its next grid point after
    ``until``. Cost: O(log n) per due target.
    """

    def __init__(self, cadences: Sequence[tuple[str, float]], start: float) -> None:
        self._interval: list[float] = []
        self._phase: list[float] = []
        self._n: list[int] = []
        heap: list[tuple[float, int]] = []
        for index, (key, interval) in enumerate(cadences):
            if not (math.isfinite(interval) and interval > 0):
                raise ValueError(f"interval of {key} must be a positive number, got {interval}")
            phase = phase_offset(key, interval)
            n = math.ceil((start - phase) / interval)
            self._interval.append(interval)
            self._phase.append(phase)
            self._n.append(n)
            heap.append((phase + n * interval, index))
        heapq.heapify(heap)
        self._heap = heap

    def __len__(self) -> int:
        return len(self._interval)

    def phase(self, index: int) -> float:
        return self._phase[index]

    def deadline(self, index: int) -> float:
        """The next deadline of target ``index``."""
        return self._phase[index] + self._n[index] * self._interval[index]

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or None when there are no targets."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, until: float) -> list[tuple[int, float]]:
        """Targets due at or before ``until`` as ``(index, deadline)``, earliest first (ties
        by index); each moves to its next grid point after ``until``. A caller batching
        wake-ups passes ``now + slack``: a target is then dispatched at most ``slack`` early
        and its grid never moves."""
        heap = self._heap
        due: list[tuple[int, float]] = []
        now = until
        while heap and heap[0][0] <= now:
            deadline, index = heap[0]
            due.append((index, deadline))
            interval = self._interval[index]
            phase = self._phase[index]
            n = self._n[index] + 1
            if phase + n * interval <= now:
                # Behind by whole intervals: jump to the first grid point after now.
                n = math.floor((now - phase) / interval) + 1
                while phase + n * interval <= now:  # float rounding at the boundary
                    n += 1
            self._n[index] = n
            heapq.heapreplace(heap, (phase + n * interval, index))
        return due

"""The steady clock: wall-clock time that a step of the host's clock does not move."""

from __future__ import annotations

from orchestrator.clock import SteadyClock


class Host:
    """A host's two clocks, moved by hand."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 500.0

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_it_follows_time_and_ignores_steps_of_the_wall_clock() -> None:
    host = Host()
    steps: list[float] = []
    clock = SteadyClock(wall=lambda: host.wall, monotonic=lambda: host.mono, on_step=steps.append)
    assert clock.now() == 1_800_000_000.0
    host.run(10.0)
    assert clock.now() == 1_800_000_010.0
    assert steps == []
    host.wall += 3600.0  # `date -s` one hour ahead
    assert clock.now() == 1_800_000_010.0
    assert steps == [3600.0]  # reported once...
    host.run(1.0)
    assert clock.now() == 1_800_000_011.0
    assert steps == [3600.0]  # ...not on every read
    host.wall -= 7200.0  # and back, an hour behind
    assert clock.now() == 1_800_000_011.0
    assert steps == [3600.0, -3600.0]
    assert clock.offset() == -3600.0
    assert clock.monotonic() == host.mono


def test_small_drift_is_not_reported() -> None:
    host = Host()
    steps: list[float] = []
    clock = SteadyClock(wall=lambda: host.wall, monotonic=lambda: host.mono, on_step=steps.append)
    host.wall += 0.5
    clock.now()
    assert steps == []

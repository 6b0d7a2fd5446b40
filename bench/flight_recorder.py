"""Benchmark: what the flight recorder adds to the engine pass.

The services, policies and observation mix of ``bench/engine.py`` (1,000 services x 3 regions
x 4 signals x 3 vantage points, 70% healthy, the rest down, degraded, flapping, unknown...),
each tick fed the way the daemon's controller feeds them (one ``HealthBook.observe`` per
observation), verdicts, ``decide()`` and ``apply_decision``. Two identical sets of services
run side by side, ticks interleaved: one with the recorder's hooks (the health book's note
on observations that say something new, the decision hook on each change, lag readings) and
its once-a-second pass on the event loop (``FlightRecorder.tick``: files cut, incidents
closed, runs noted, lines handed over), one without. Writing happens in the recorder's worker
thread, off the loop: it is timed apart.

The last line printed is ``recorder_overhead_ratio=<engine pass with / without>``.

    python bench/flight_recorder.py [--services N] [--ticks N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from engine import (  # bench/engine.py: the same services and observations
    INTERVAL,
    T0,
    Service,
    build_services,
    make_batches,
    pin_to_one_core,
    refresh_lag,
)

from orchestrator.daemon.flight_recorder import FlightRecorder, ServiceView
from orchestrator.engine.decide import decide
from orchestrator.engine.observation import Observation
from orchestrator.engine.state import Decision, apply_decision

TARGET_RATIO = 1.10  # "not noticeably": at most a tenth more


class _Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - not awaited here
        self.t += seconds


class _Source:
    def __init__(self, services: list[Service]) -> None:
        self.by_name = {s.policy.service: s for s in services}

    def services(self) -> Sequence[str]:
        return list(self.by_name)

    def service_view(self, service: str) -> ServiceView | None:
        s = self.by_name.get(service)
        if s is None:
            return None
        return ServiceView(s.policy, s.book, s.state, s.lag, None, "bench")

    def is_leader(self) -> bool:
        return True


def engine_pass(
    services: list[Service],
    batches: list[list[Observation]] | None,
    now: float,
    last: dict[str, Decision],
    recorder: FlightRecorder | None,
) -> int:
    """One pass over every service, as the controller's engine tick does it (``batches``
    None: a tick with no new observation)."""
    note = None if recorder is None else recorder.observation
    start = time.perf_counter_ns()
    for i, svc in enumerate(services):
        book = svc.book
        if batches is not None:
            for obs in batches[i]:
                book.observe(obs, note)
        verdicts = book.verdicts(now)
        d = decide(svc.policy, svc.state, verdicts, svc.lag, now, policy_version="bench")
        svc.state = apply_decision(svc.state, d, svc.run_id)
        previous = last.get(d.service)
        if previous is None or previous.key() != d.key():
            last[d.service] = d
            if recorder is not None:
                recorder.decision(d)
    return time.perf_counter_ns() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=30, help="measured ticks (10s apart)")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    pinned = pin_to_one_core()
    plain = build_services(args.services)
    recorded = build_services(args.services)
    n = len(plain)
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="failoverd-bench-recorder-") as tmp:
        recorder = FlightRecorder(Path(tmp), segment=300.0, node_id="bench", clock=clock)  # type: ignore[arg-type]
        recorder.load()
        source = _Source(recorded)
        recorder.attach(source)
        rng_a, rng_b = random.Random(7), random.Random(7)
        last_a: dict[str, Decision] = {}
        last_b: dict[str, Decision] = {}
        off: list[float] = []
        on: list[float] = []
        loop_tick: list[float] = []
        ratios: list[float] = []
        write_s = 0.0
        for tick in range(args.warmup + args.ticks):
            now = T0 + tick * INTERVAL
            clock.t = now
            if tick % 3 == 0:
                refresh_lag(plain, now)
                refresh_lag(recorded, now)
                for svc in recorded:  # the lag hook, as put_lag calls it
                    for region, reading in svc.lag.items():
                        recorder.lag(svc.policy.service, region, reading)
            batches_a = make_batches(plain, now, rng_a)
            batches_b = make_batches(recorded, now, rng_b)
            # Ten seconds of the daemon: an engine pass every second (the first with the
            # probes' observations), and the recorder's pass every second (files are cut
            # as they fall due), its batch written as its worker thread would. The two
            # sets of services run back to back, in alternating order, so that whatever
            # else the machine does hits both alike.
            a = b = loop = 0
            written = 0.0
            for second in range(10):
                at = now + second
                clock.t = at
                fed_a = batches_a if second == 0 else None
                fed_b = batches_b if second == 0 else None
                if (tick + second) % 2:
                    a += engine_pass(plain, fed_a, at, last_a, None)
                    b += engine_pass(recorded, fed_b, at, last_b, recorder)
                else:
                    b += engine_pass(recorded, fed_b, at, last_b, recorder)
                    a += engine_pass(plain, fed_a, at, last_a, None)
                t = time.perf_counter_ns()
                batch = recorder.tick(source)
                loop += time.perf_counter_ns() - t
                t_write = time.perf_counter()
                recorder.write(batch)
                written += time.perf_counter() - t_write
            if tick >= args.warmup:
                off.append(a / 1000 / n)
                on.append(b / 1000 / n)
                loop_tick.append(loop / 1000 / n)
                ratios.append((b + loop) / a)
                write_s += written
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    off_m, on_m = statistics.median(off), statistics.median(on)
    per_loop = statistics.median(loop_tick)
    ratio = statistics.median(ratios)
    print(
        f"failoverd flight recorder benchmark: {n} services, {args.ticks} x 10s of the daemon"
        f" (virtual: an engine pass a second, probes every {INTERVAL:g}s), {pinned}"
    )
    print(f"engine passes without the recorder: {off_m:.1f} us per service per 10s (median)")
    print(
        f"engine passes with its hooks:       {on_m:.1f} us per service per 10s (median),"
        f" {on_m / off_m:.3f}x"
    )
    print(
        f"the recorder's passes on the loop:  {per_loop:.2f} us per service per 10s (one a"
        " second; files cut as they fall due)"
    )
    span = args.ticks * INTERVAL
    print(
        f"writing, in its worker thread:      {write_s * 1000 / args.ticks:.1f} ms per 10s;"
        f" {size / 1e6:.2f} MB on disk after {(args.warmup + args.ticks) * INTERVAL:g}s"
        f" ({size / n / (span / 3600) / 1e3:.1f} kB per service per hour, snapshots included)"
    )
    print(
        "engine passes + the recorder's loop work, against the passes alone (median of"
        f" the {len(ratios)} paired 10s windows): {ratio:.3f}"
    )
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"target: at most {TARGET_RATIO:.2f}x: {verdict}")
    print(f"recorder_overhead_ratio={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what one decision tick costs per service.

Each tick (virtual clock, one detection interval apart) feeds every service one observation
per (region, signal, vantage point) cell, asks its health book for the region verdicts and
calls ``decide()`` (then ``apply_decision``, as the daemon does). Defaults: 1,000 services x
3 regions x 4 probe signals x 3 vantage points = 36,000 observations per tick.

The services follow a fixed mix (mostly healthy, some with a failing primary so that
``decide()`` takes its failover path and every guard is evaluated, some degraded, flapping,
unknown, or with a run in progress). Guards are set so that no new run starts: the states
still evolve (the RTO clock, ``detected_at``), and every measured tick does the same work.

Building the observations and the lag readings is the probes' work, not the engine's: it
happens outside the timed sections. A bare Python pass over the very same observations
(one dict counter update per cell) is timed in every tick as the baseline, and the engine
is reported as a ratio against it (project rule: no absolute timings in tests).

The last line printed is ``engine_us_per_service=<median>``.

    python bench/engine.py [--services N] [--ticks N] [--warmup N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass

from orchestrator.engine.decide import decide
from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.engine.state import (
    Decision,
    Initiator,
    LagReading,
    Move,
    RunInfo,
    ServiceState,
    apply_decision,
)
from orchestrator.engine.vocabulary import Action
from orchestrator.policy.loader import load_policy_text, policy_version
from orchestrator.policy.models import Policy

TARGET_US = 200.0
REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
VANTAGES = ("local", "agent-eu", "agent-ap")
INTERVAL = 10.0  # detection.interval in the generated policies
T0 = 1_000_000.0  # virtual clock at tick 0 (room for a move history before it)

POLICY_TEMPLATE = """\
service: {service}
mode: {mode}
regions: [us-east-1, us-west-2, eu-west-1]
rto: 15m
rpo: 1m
vantage_points: [local, agent-eu, agent-ap]
detection:
  interval: 10s
  timeout: 5s
  consecutive_failures: 3
  failure_ratio: 0.5
  window: 2m
  min_samples: 6
  quorum: 2
  staleness: 45s
signals:
  - name: api
    type: http
    target: https://api.{{region}}.{service}.example.com/healthz
    body_contains: '"status":"ok"'
  - name: web
    type: http
    target: https://www.{{region}}.{service}.example.com/
    expect_status: [200, 204]
  - name: db
    type: tcp
    targets:
      us-east-1: db.us-east-1.{service}.internal:5432
      us-west-2: db.us-west-2.{service}.internal:5432
      eu-west-1: db.eu-west-1.{service}.internal:5432
  - name: dns
    type: dns
    target: api.{{region}}.{service}.example.com
    record_type: CNAME
replication:
  sources:
    us-west-2: {{type: rds_replica_lag, db_instance: {service}-db-usw2}}
    eu-west-1: {{type: rds_replica_lag, db_instance: {service}-db-euw1}}
  max_age: 3m
  interval: 30s
guards:
  cooldown: 30m
  max_failovers: {{count: 1, window: 6h}}
  require_healthy_target: true
  on_lag_above_rpo: wait
  on_lag_unknown: require_approval
  require_approval: {require_approval}
  failback: {{mode: manual}}
runbooks:
  failover:
    - name: flip-dns
      action: route53.set_record
      params:
        hosted_zone_id: Z0EXAMPLE
        name: api.{service}.example.com
        type: CNAME
        value: api.{{target_region}}.{service}.example.com
        ttl: 60
"""


@dataclass(frozen=True)
class Scenario:
    """One kind of service in the mix; ``share`` is out of 100."""

    name: str
    share: int
    mode: str = "automatic"
    require_approval: bool = False
    down: tuple[str, ...] = ()  # regions failing from every vantage point
    degraded: bool = False  # the primary fails from one vantage point only
    flapping: float = 0.0  # the primary's `api` fails with this probability
    unknown_vantages: int = 0  # vantage points that cannot tell (ok=None) for the primary
    lag: tuple[float | None, float | None] = (2.0, 2.0)  # us-west-2, eu-west-1
    recent_moves: bool = False  # a failover and failback lately: cooldown, max_failovers
    running: bool = False  # a run in progress


SCENARIOS = (
    Scenario("healthy", 70),
    Scenario("down/lag>rpo", 5, down=(REGIONS[0],), lag=(300.0, 300.0)),
    Scenario("down/approval", 3, down=(REGIONS[0],), require_approval=True),
    Scenario("down/advisory", 2, down=(REGIONS[0],), mode="advisory"),
    Scenario("down/cooldown", 2, down=(REGIONS[0],), recent_moves=True),
    Scenario("down/standby-down", 2, down=REGIONS[:2], lag=(2.0, None)),
    Scenario("degraded", 8, degraded=True),
    Scenario("flapping", 5, flapping=0.55, lag=(300.0, 300.0)),
    Scenario("unknown", 2, unknown_vantages=2),
    Scenario("running", 1, running=True),
)
NOISE = 0.003  # background failure probability of any probe
FAIL_DETAILS = (FailureKind.TIMEOUT, FailureKind.STATUS, FailureKind.CONNECT, FailureKind.DNS)


def scenario_for(index: int) -> Scenario:
    slot = index % 100
    for sc in SCENARIOS:
        if slot < sc.share:
            return sc
        slot -= sc.share
    raise AssertionError("scenario shares must add up to 100")


@dataclass
class Service:
    policy: Policy
    scenario: Scenario
    book: HealthBook
    state: ServiceState
    lag: dict[str, LagReading]
    # (region, signal, vantage, target, failure probability, detail, time offset) per cell
    plan: list[tuple[str, str, str, str, float | None, str, float]]
    run_id: str


def build_services(n: int) -> list[Service]:
    services: list[Service] = []
    for i in range(n):
        sc = scenario_for(i)
        name = f"svc-{i:04d}"
        text = POLICY_TEMPLATE.format(
            service=name, mode=sc.mode, require_approval=str(sc.require_approval).lower()
        )
        policy = load_policy_text(text, f"{name}.yaml")
        book = HealthBook(policy)
        plan = []
        primary = policy.primary
        signals = {s.name: (k, s) for k, s in enumerate(policy.signals)}
        for region, signal, vantage in book.cells():
            k, spec = signals[signal]
            target = spec.region_target(region)
            vi = VANTAGES.index(vantage)
            p: float | None = NOISE
            detail = FAIL_DETAILS[k % len(FAIL_DETAILS)]
            if region in sc.down or (sc.degraded and region == primary and vi == 0):
                p = 1.0
            elif region == primary and sc.flapping and signal == "api":
                p = sc.flapping
            elif region == primary and vi < sc.unknown_vantages:
                p, detail = None, FailureKind.TIMEOUT
            plan.append((region, signal, vantage, target, p, str(detail), 0.05 * vi))
        state = ServiceState(
            name, primary, moves=(Move(T0 - 30 * 86400, Action.FAILOVER, REGIONS[1]),)
        )
        if sc.recent_moves:
            state = ServiceState(
                name,
                primary,
                moves=(
                    Move(T0 - 7200, Action.FAILOVER, REGIONS[1]),
                    Move(T0 - 3000, Action.FAILBACK, primary),
                ),
                last_move_finished_at=T0 - 600,
            )
        if sc.running:
            run = RunInfo(
                f"{name}-run-0", Action.FAILOVER, primary, REGIONS[1], T0 - 30, Initiator.POLICY
            )
            state = ServiceState(name, primary, run=run)
        services.append(Service(policy, sc, book, state, {}, plan, f"{name}-run-1"))
    return services


def make_batches(
    services: list[Service], now: float, rng: random.Random
) -> list[list[Observation]]:
    """The observations of one tick (the probes' work: not timed)."""
    batches = []
    rand = rng.random
    for svc in services:
        service = svc.policy.service
        batch = []
        for region, signal, vantage, target, p, detail, offset in svc.plan:
            ok = None if p is None else rand() >= p
            batch.append(
                Observation(
                    service,
                    region,
                    signal,
                    vantage,
                    ok,
                    now - offset,
                    source=vantage,
                    target=target,
                    latency=None if ok is None else 0.02 + 0.01 * rand(),
                    detail="" if ok else detail,
                )
            )
        batches.append(batch)
    return batches


def refresh_lag(services: list[Service], now: float) -> None:
    """Lag readings, as the lag poller would store them (not timed)."""
    for svc in services:
        for region, seconds in zip(REGIONS[1:], svc.scenario.lag, strict=True):
            svc.lag[region] = LagReading(seconds, now)


@dataclass
class TickTimes:
    total: int  # ns, the whole tick
    ingest: int
    verdicts: int
    decide: int
    per_service: list[int]  # ns, each service's ingest + verdicts + decide
    baseline: int  # ns, the bare pass over the same observations


def engine_tick(
    services: list[Service], batches: list[list[Observation]], now: float, version: str
) -> tuple[TickTimes, list[Decision]]:
    clock = time.perf_counter_ns
    ingest = verdicts_ns = decide_ns = 0
    per_service = []
    decisions = []
    start = clock()
    for svc, batch in zip(services, batches, strict=True):
        book = svc.book
        t0 = clock()
        book.observe_many(batch)
        t1 = clock()
        verdicts = book.verdicts(now)
        t2 = clock()
        decision = decide(svc.policy, svc.state, verdicts, svc.lag, now, policy_version=version)
        svc.state = apply_decision(svc.state, decision, svc.run_id)
        t3 = clock()
        ingest += t1 - t0
        verdicts_ns += t2 - t1
        decide_ns += t3 - t2
        per_service.append(t3 - t0)
        decisions.append(decision)
    total = clock() - start
    return TickTimes(total, ingest, verdicts_ns, decide_ns, per_service, 0), decisions


def baseline_tick(batches: list[list[Observation]], counts: dict[tuple[str, ...], int]) -> int:
    """The least Python can do with the same data: one counter update per cell."""
    clock = time.perf_counter_ns
    start = clock()
    for batch in batches:
        for obs in batch:
            key = (obs.service, obs.region, obs.signal, obs.vantage)
            counts[key] = counts.get(key, 0) + (obs.ok is False)
    return clock() - start


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        return f"not pinned ({exc})"
    return f"pinned to cpu {cpu}"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000, help="services (default 1000)")
    parser.add_argument("--ticks", type=int, default=30, help="measured ticks (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up ticks (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the observation mix")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the engine during the measured ticks (top 25 by tottime); inflates times",
    )
    args = parser.parse_args(argv)
    if args.services < 1 or args.ticks < 1 or args.warmup < 0:
        parser.error("--services and --ticks must be at least 1, --warmup at least 0")

    pinned = pin_to_one_core()
    t = time.perf_counter()
    services = build_services(args.services)
    version = policy_version(s.policy for s in services)
    setup_s = time.perf_counter() - t
    n = len(services)
    cells = sum(len(s.plan) for s in services)
    rng = random.Random(args.seed)
    counts: dict[tuple[str, ...], int] = {}
    profiler = cProfile.Profile() if args.profile else None
    measured: list[TickTimes] = []
    phases: Counter[str] = Counter()
    runs_started = 0

    for tick in range(args.warmup + args.ticks):
        now = T0 + tick * INTERVAL
        if tick % 3 == 0:  # replication.interval is 30s
            refresh_lag(services, now)
        batches = make_batches(services, now, rng)
        base = baseline_tick(batches, counts)
        if profiler is not None and tick >= args.warmup:
            times, decisions = profiler.runcall(engine_tick, services, batches, now, version)
        else:
            times, decisions = engine_tick(services, batches, now, version)
        times.baseline = base
        runs_started += sum(d.starts_run for d in decisions)
        if tick >= args.warmup:
            measured.append(times)
        if tick == args.warmup + args.ticks - 1:
            phases = Counter(str(d.phase) for d in decisions)
        del batches

    def us(ns: float) -> float:
        return ns / 1000 / n

    total = [us(m.total) for m in measured]
    parts = {
        f"ingest ({cells // n} observations)": [us(m.ingest) for m in measured],
        f"verdicts ({len(REGIONS)} regions)": [us(m.verdicts) for m in measured],
        "decide + apply_decision": [us(m.decide) for m in measured],
    }
    each = [ns / 1000 for m in measured for ns in m.per_service]
    baseline = [us(m.baseline) for m in measured]
    median = statistics.median(total)
    base_median = statistics.median(baseline)
    ratio = median / base_median if base_median > 0 else float("inf")

    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue().rstrip())
        print("(profiled run: the timings below include cProfile's overhead)")

    mix = Counter(s.scenario.name for s in services)
    print(
        f"failoverd engine benchmark: {n} services x {len(REGIONS)} regions x 4 signals x"
        f" {len(VANTAGES)} vantage points = {cells:,} observations/tick"
    )
    print(
        f"{args.warmup} warm-up + {args.ticks} measured ticks, {INTERVAL:g}s apart (virtual);"
        f" {pinned}; gc {'enabled' if gc.isenabled() else 'disabled'};"
        f" Python {platform.python_version()};"
        f" {n} policies loaded in {setup_s:.1f}s"
    )
    print("mix: " + ", ".join(f"{k} {v}" for k, v in mix.items()))
    print(
        "decisions at the last tick: "
        + ", ".join(f"{k} {v}" for k, v in sorted(phases.items()))
        + f"; new runs started: {runs_started}"
    )
    print(f"{'us per service per tick':<36}{'median':>9}{'p99':>9}")
    for label, values in parts.items():
        print(f"  {label:<34}{statistics.median(values):>9.1f}{pct(values, 99):>9.1f}")
    print(f"  {'engine total (tick wall time)':<34}{median:>9.1f}{pct(total, 99):>9.1f}")
    print(
        f"  {'single service evaluations':<34}{statistics.median(each):>9.1f}"
        f"{pct(each, 99):>9.1f}  ({len(each):,} samples)"
    )
    print(f"  {'baseline (bare pass, same data)':<34}{base_median:>9.1f}{pct(baseline, 99):>9.1f}")
    print(f"engine_vs_baseline={ratio:.1f}")
    verdict = "met" if median < TARGET_US else "NOT met"
    print(f"target: under {TARGET_US:g} us per service per tick on one core: {verdict}")
    print(f"engine_us_per_service={median:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what the metrics cost with many services — series count, scrape time, and the
exporter's work per engine pass.

A real :class:`Controller` over a throw-away sqlite store holds the services of
bench/engine.py (default 1,000 services x 3 regions x 4 signals x 3 vantage points, its mix
of healthy, down, degraded, flapping... services), fed one tick of observations before each
engine pass. Measured:

* the series on ``/metrics`` (the default registry, rendered as the daemon serves it), in
  all and per service (series labelled with that service);
* the time to render it (``generate_latest``), against a baseline measured in the same run:
  ``json.dumps`` of the very same samples (name, labels, value), a lower bound for writing
  that much data out;
* the exporter's update (the on_tick hook) per service, steady state (after the first pass
  set every series), the part of it spent in ``Controller.snapshot``, and both as a ratio
  of the engine pass (``evaluate_all``) over the same services, measured in the same run.

    python bench/metrics.py [--services N] [--passes N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import REGISTRY, generate_latest

from bench.engine import INTERVAL, T0, build_services, make_batches
from orchestrator.daemon.controller import Controller
from orchestrator.daemon.metrics_export import MetricsExporter
from orchestrator.policy.loader import PolicySet, policy_version
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.store.sqlite import SqliteStore
from orchestrator.telemetry import configure_logging


class ManualClock:
    """Virtual time the bench moves by hand (one detection interval per pass)."""

    def __init__(self, start: float) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


def samples() -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in REGISTRY.collect() for s in f.samples]


async def run(n: int, passes: int) -> None:
    services = build_services(n)
    policies = {s.policy.service: s.policy for s in services}
    pset = PolicySet(policies, policy_version(policies.values()))
    clock = ManualClock(T0)
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteStore.open(Path(tmp) / "state.db")
        aws = AwsClients(AwsClientConfig(endpoint_url="http://127.0.0.1:9"))
        c = Controller(pset, store, aws, node_id="bench", clock=clock)
        await c.load()
        exporter = MetricsExporter(c, clock, backend="sqlite")

        passes_s: list[float] = []

        async def engine_pass() -> None:
            clock.t += INTERVAL
            for batch in make_batches(services, clock.t, rng):
                for obs in batch:
                    c.put(obs)
            t = time.perf_counter()
            await c.evaluate_all()
            passes_s.append(time.perf_counter() - t)

        await engine_pass()
        t = time.perf_counter()
        exporter.install()  # sets every series: the first pass after start
        first = time.perf_counter() - t

        updates: list[float] = []
        snapshots: list[float] = []
        for _ in range(passes):
            await engine_pass()
            t = time.perf_counter()
            exporter.update()
            updates.append(time.perf_counter() - t)
            t = time.perf_counter()
            for name in c.services():
                c.snapshot(name, evidence=False)  # what the exporter reads
            snapshots.append(time.perf_counter() - t)

        renders: list[float] = []
        dumps: list[float] = []
        body = b""
        for _ in range(5):
            t = time.perf_counter()
            body = generate_latest(REGISTRY)
            renders.append(time.perf_counter() - t)
            data = samples()
            t = time.perf_counter()
            json.dumps(data)
            dumps.append(time.perf_counter() - t)
        await c.close()
        await store.close()

    all_samples = samples()
    one = services[0].policy.service
    per_service = sum(1 for _, labels, _ in all_samples if labels.get("service") == one)
    by_service = sum(1 for _, labels, _ in all_samples if "service" in labels)
    render, dump = statistics.median(renders), statistics.median(dumps)
    update, snap = statistics.median(updates), statistics.median(snapshots)
    engine = statistics.median(passes_s[1:])
    print(f"failoverd metrics benchmark: {n} services x 3 regions x 4 signals x 3 vantages")
    print(f"series on /metrics: {len(all_samples):,} ({len(body) / 1e6:.1f} MB)")
    print(f"  labelled with a service: {by_service:,}; {one} (steady, no run): {per_service}")
    print(
        f"scrape render (generate_latest): {render * 1e3:.1f} ms;"
        f" json.dumps of the same samples: {dump * 1e3:.1f} ms; ratio {render / dump:.2f}"
    )
    print(
        f"exporter first pass (sets every series): {first * 1e6 / n:.1f} us/service;"
        f" steady pass: {update * 1e6 / n:.1f} us/service ({update * 1e3:.1f} ms per pass),"
        f" of which Controller.snapshot: {snap * 1e6 / n:.1f} us/service"
    )
    print(
        f"engine pass (evaluate_all, same run): {engine * 1e6 / n:.1f} us/service;"
        f" exporter steady pass / engine pass: {update / engine:.2f},"
        f" without the snapshots: {(update - snap) / engine:.3f}"
    )
    print(f"metrics_series_per_service={per_service}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=1000, help="services (default 1000)")
    parser.add_argument("--passes", type=int, default=10, help="measured passes (default 10)")
    args = parser.parse_args(argv)
    if args.services < 1 or args.passes < 1:
        parser.error("--services and --passes must be at least 1")
    configure_logging("warning", json=True)  # a decision log line per service otherwise
    asyncio.run(run(args.services, args.passes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

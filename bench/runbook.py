"""Benchmark: the runbook executor's own overhead per step, over the AWS work it drives.

A runbook of N ``route53.set_record`` steps (a chain through ``after``, so the steps run
one after another and the timing is not blurred by overlap) runs against a moto server on
loopback, through the executor with the real SqliteStore (WAL, fsync'd commits) in a
temporary directory. The baseline, measured in the same round against the same server, is
the very same action's ``check`` + ``execute`` + ``verify`` called directly for N fresh
records: the AWS calls alone.

Against moto one step's AWS work takes tens to hundreds of milliseconds and varies by more
than the executor's overhead from one round to the next, so subtracting the two wall times
measures mostly noise. The overhead is therefore measured inside the executor's own run: the
action is wrapped in a timer, and the overhead is the run's wall time minus the time spent
inside ``check``/``execute``/``verify``, per step. That is what the executor adds: two
journal commits per step (started, succeeded) plus the run's own records and state writes,
rendering the parameters, scheduling the step's task, the timeout watchdog, logging. The
raw baseline is printed beside it, as the scale the overhead is judged against.

Each round uses new record names so that every ``execute`` really changes something.

The last line is ``overhead_ms_per_step=<median over rounds>`` (target: under 20 ms).

    python bench/runbook.py [--steps N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    StepContext,
)
from orchestrator.actions.registry import get_action
from orchestrator.actions.render import render_params
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine.state import Decision, ServiceState
from orchestrator.engine.vocabulary import Action as Kind
from orchestrator.engine.vocabulary import Phase
from orchestrator.policy.loader import load_policy_file
from orchestrator.policy.models import Policy, Runbooks, Step
from orchestrator.runbook import Executor
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.store.sqlite import SqliteStore
from orchestrator.telemetry import configure_logging

ROOT = Path(__file__).resolve().parents[1]
WEBAPP = ROOT / "policies" / "webapp" / "webapp.yaml"
ACTION = "route53.set_record"
T = TypeVar("T")


def start_moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def make_zone(endpoint: str) -> str:
    import boto3  # type: ignore[import-untyped]

    client = boto3.client(
        "route53",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    zone = client.create_hosted_zone(Name="bench.example.com", CallerReference="bench")
    return str(zone["HostedZone"]["Id"]).rsplit("/", 1)[-1]


def steps(zone: str, n: int, tag: str) -> list[Step]:
    out = []
    for i in range(n):
        out.append(
            Step(
                name=f"dns-{i}",
                action=ACTION,
                params={
                    "hosted_zone_id": zone,
                    "name": f"r{i}-{tag}.bench.example.com",
                    "type": "CNAME",
                    "value": "api.{target_region}.bench.example.com",
                    "ttl": 60,
                },
                after=[f"dns-{i - 1}"] if i else [],
                timeout=30.0,
            )
        )
    return out


def decision(policy: Policy) -> Decision:
    now = SYSTEM_CLOCK.now()
    return Decision(
        service=policy.service,
        at=now,
        phase=Phase.FAILING_OVER,
        action=Kind.FAILOVER,
        active_region=policy.regions[0],
        target=policy.regions[1],
        policy_version="bench",
        detected_at=now,
    )


class TimedAction(Action):
    """The real action, with the time spent inside it summed up."""

    def __init__(self, inner: Action) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.params_model = inner.params_model  # type: ignore[misc]
        self.inside = 0.0

    async def _timed(self, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.inside += time.perf_counter() - started

    async def check(self, ctx: StepContext) -> CheckReport:
        return await self._timed(self.inner.check(ctx))

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        return await self._timed(self.inner.execute(ctx))

    async def verify(self, ctx: StepContext) -> None:
        await self._timed(self.inner.verify(ctx))

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        return self.inner.iam_statements(params, regions, account)


async def through_executor(executor: Executor, base: Policy, zone: str, n: int, tag: str) -> float:
    policy = base.model_copy(update={"runbooks": Runbooks(failover=steps(zone, n, tag))})
    state = ServiceState(policy.service, policy.regions[0])
    started = time.perf_counter()
    run_id = await executor.start_run(policy, decision(policy), state)
    elapsed = time.perf_counter() - started
    progress = await executor.progress(run_id)
    if progress is None or progress.status.value != "succeeded":
        raise SystemExit(f"bench run {run_id} did not succeed: {progress}")
    return elapsed


async def raw_calls(aws: AwsClients, base: Policy, zone: str, n: int, tag: str) -> float:
    action = get_action(ACTION)
    plan = steps(zone, n, tag)
    started = time.perf_counter()
    for attempt, step in enumerate(plan, 1):
        params = render_params(
            step,
            service=base.service,
            source_region=base.regions[0],
            target_region=base.regions[1],
            primary_region=base.regions[0],
        )
        ctx = StepContext(
            service=base.service,
            run_id=f"raw-{tag}",
            step=step.name,
            attempt=attempt,
            kind="failover",
            source_region=base.regions[0],
            target_region=base.regions[1],
            primary_region=base.regions[0],
            params=params,
            aws=aws,
            clock=SYSTEM_CLOCK,
            deadline=SYSTEM_CLOCK.monotonic() + step.timeout,
        )
        report = await action.check(ctx)
        if not report.ready:
            raise SystemExit(f"raw check failed: {report.findings}")
        outcome = await action.execute(ctx)
        if not outcome.changed:
            raise SystemExit("raw execute changed nothing: record names must be fresh")
        await action.verify(ctx)
    return time.perf_counter() - started


async def bench(n: int, rounds: int) -> list[float]:
    server, endpoint = start_moto()
    try:
        zone = make_zone(endpoint)
        base = load_policy_file(WEBAPP).model_copy(update={"service": "bench"})
        aws = AwsClients(
            AwsClientConfig(endpoint_url=endpoint, access_key_id="bench", secret_access_key="bench")
        )
        with tempfile.TemporaryDirectory(prefix="failoverd-bench-") as tmp:
            store = await SqliteStore.open(Path(tmp) / "state.db")
            try:
                lease = await store.acquire_lease("bench", 3600.0)
                assert lease is not None
                timed = TimedAction(get_action(ACTION))
                executor = Executor(
                    store,
                    aws,
                    SYSTEM_CLOCK,
                    token=lambda: lease.token,
                    actions=lambda _name: timed,
                    rng=random.Random(1),
                )
                # Warm up both paths (client creation, model loading, sqlite pages).
                await through_executor(executor, base, zone, 2, "warm-x")
                await raw_calls(aws, base, zone, 2, "warm-r")
                overheads = []
                for r in range(rounds):
                    timed.inside = 0.0
                    ex = await through_executor(executor, base, zone, n, f"x{r}")
                    per_step = (ex - timed.inside) / n * 1000
                    raw = await raw_calls(aws, base, zone, n, f"r{r}")
                    overheads.append(per_step)
                    print(
                        f"round {r + 1}: executor {ex * 1000 / n:7.2f} ms/step "
                        f"(in the action {timed.inside * 1000 / n:7.2f}), "
                        f"raw calls alone {raw * 1000 / n:7.2f} ms/step, "
                        f"executor overhead {per_step:6.2f} ms/step"
                    )
                return overheads
            finally:
                await store.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    configure_logging(level="warning", json=True)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    print(f"python {platform.python_version()} on {platform.machine()}, {args.steps} steps")
    overheads = asyncio.run(bench(args.steps, args.rounds))
    print(f"overhead per step: min {min(overheads):.2f} ms, max {max(overheads):.2f} ms")
    print(f"overhead_ms_per_step={statistics.median(overheads):.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Helpers for the Route 53 / RDS / Aurora action tests: a step context against moto, call
counts from the daemon's own AWS_API_CALLS metric, virtual-time driving, and an AwsClients
whose clients answer from botocore's Stubber (for the calls moto does not emulate)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiobotocore.stub import AioStubber
from prometheus_client import REGISTRY
from pydantic import BaseModel

from orchestrator.actions.base import Action, ExecuteOutcome, StepContext
from orchestrator.actions.render import render_params
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.policy.models import Step
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from tests.fixtures.clock import VirtualClock, eventually

SOURCE, TARGET = "us-east-1", "us-west-2"
ACCOUNT = "123456789012"  # moto's default account

T = TypeVar("T")


def make_ctx(
    aws: AwsClients,
    params: BaseModel,
    *,
    clock: Clock = SYSTEM_CLOCK,
    within: float = 20.0,
    run_id: str = "run-1",
    step: str = "step",
    facts: Mapping[str, Any] | None = None,
    kind: str = "failover",
) -> StepContext:
    return StepContext(
        service="web",
        run_id=run_id,
        step=step,
        attempt=1,
        kind=kind,
        source_region=SOURCE,
        target_region=TARGET,
        primary_region=SOURCE,
        params=params,
        aws=aws,
        clock=clock,
        deadline=clock.monotonic() + within,
        facts=dict(facts or {}),
    )


def rendered(action: str, params: Mapping[str, Any]) -> BaseModel:
    """A step's parameters as a policy writes them (placeholders and all), rendered for a
    run from SOURCE to TARGET the way a run renders them."""
    step = Step(name="step", action=action, params=dict(params))
    return render_params(
        step,
        service="web",
        source_region=SOURCE,
        target_region=TARGET,
        primary_region=SOURCE,
        regions=(SOURCE, TARGET),
    )


async def run_in_source(action: Action, ctx: StepContext) -> ExecuteOutcome:
    """Run a step meant for the source region as the executor runs it (check, execute,
    verify), after making sure its check looked there and found it ready."""
    assert ctx.region == SOURCE
    report = await action.check(ctx)
    assert report.ready, report.findings
    assert report.control_plane_region == SOURCE  # readiness flags it when leaving SOURCE
    outcome = await action.execute(ctx)
    await action.verify(ctx)
    return outcome


def calls(service: str, operation: str, outcome: str = "ok") -> float:
    """How many ``operation`` calls the daemon's clients have made so far (all tests)."""
    labels = {"aws_service": service, "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("failoverd_aws_api_calls_total", labels) or 0.0


async def on_virtual_time(clock: VirtualClock, work: Awaitable[T], step: float = 5.0) -> T:
    """Run ``work``, advancing ``clock`` by ``step`` whenever it sleeps on it, until done."""
    task = asyncio.ensure_future(work)
    try:
        for _ in range(10_000):
            await eventually(lambda: task.done() or clock.sleepers > 0, "the work to sleep or end")
            if task.done():
                break
            clock.advance(step)
        return await task
    finally:
        task.cancel()


class StubbedAws(AwsClients):
    """The real factory (same config, same call counting), but each client it opens gets a
    botocore Stubber loaded by the next script in line, and must have used every stubbed
    response by the time it closes. No request leaves the process."""

    def __init__(self, *scripts: Callable[[AioStubber], None]) -> None:
        # An endpoint nobody listens on: if a call slipped past the stubber, it would fail.
        super().__init__(
            AwsClientConfig(
                endpoint_url="http://127.0.0.1:9",
                access_key_id="testing",
                secret_access_key="testing",
                max_attempts=1,
            )
        )
        self.scripts = list(scripts)
        self.opened: list[tuple[str, str]] = []

    @asynccontextmanager
    async def client(self, service: str, region: str) -> AsyncIterator[Any]:
        if not self.scripts:
            raise AssertionError(f"unexpected {service} client in {region}: no script left")
        script = self.scripts.pop(0)
        self.opened.append((service, region))
        async with super().client(service, region) as client:
            stubber = AioStubber(client)
            script(stubber)
            with stubber:
                yield client
            stubber.assert_no_pending_responses()


async def verify_through_a_throttle(
    action: Action, params: BaseModel, operation: str, settled: dict[str, Any], code: str
) -> None:
    """Run ``action.verify`` with its first look (``operation``) throttled with ``code`` and
    its second seeing ``settled``: a throttle while polling is "not yet", so verify must end
    well (on virtual time), having used both answers."""
    from tests.fixtures.clock import VirtualClock

    def script(stubber: AioStubber) -> None:
        stubber.add_client_error(operation, code, "Rate exceeded", http_status_code=400)
        stubber.add_response(operation, settled)

    clock = VirtualClock()
    aws = StubbedAws(script)
    await on_virtual_time(clock, action.verify(make_ctx(aws, params, clock=clock, within=60.0)))
    assert not aws.scripts

"""ARC routing controls: the traffic flip that needs no control plane.

``arc.set_routing_controls`` sets routing controls of an Application Recovery Controller
cluster in one ``UpdateRoutingControlStates`` call (``route53-recovery-cluster``, the
cluster's data plane). Route 53 routing-control health checks follow the states, and
failover records created in advance follow the health checks, so traffic moves without a
call to Route 53's control plane in us-east-1 (DESIGN principle 5).

A cluster answers on five regional endpoints, of which ARC keeps at least three available.
The update goes to one endpoint at a time, as AWS recommends: the endpoint that answered
the read first, then the others in random order, each with a short connect timeout
(``connect_timeout``, 1 s by default: an endpoint whose network is gone costs about that
much), a short read timeout and no retries of botocore's, round after round within the
step's deadline. Reads (the state before, the read-back in ``verify``, the precondition in
``check``) go to the endpoint that answered last (else a random one) and, if it has not
answered within a quarter of a second, to all the others at once, taking the first answer:
they change nothing, so a dead endpoint costs a quarter of a second at most (and five
clients are made only then). An endpoint that answers
``EndpointTemporarilyUnavailableException``, ``ThrottlingException``,
``InternalServerException`` or any 5xx, or not at all, is skipped; any other answer is the
cluster's and ends the search. A safety-rule refusal
(``ConflictException``) is a final failure naming the rule.

Endpoints come from the step's ``cluster_endpoints`` or else the settings'
``arc.cluster_endpoints`` (:attr:`AwsClientConfig.arc_cluster_endpoints`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from pydantic import BaseModel

from orchestrator.actions.base import (
    Action,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    RetryableError,
    StepContext,
    typed_params,
)
from orchestrator.actions.errors import classify
from orchestrator.actions.wait import poll_until
from orchestrator.policy.actions import ArcSetRoutingControls
from orchestrator.signals.aws_clients import error_code
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions")

SERVICE = "route53-recovery-cluster"
QUORUM = 3  # ARC keeps at least 3 of a cluster's 5 endpoints available
# Answers that speak for one endpoint, not for the cluster: try the next one.
TRY_ANOTHER = frozenset(
    {
        "EndpointTemporarilyUnavailableException",
        "ThrottlingException",
        "InternalServerException",
    }
)
ROTATION_PAUSE = 0.2  # seconds between rounds when no endpoint answered, doubling up to 2 s
HEDGE_AFTER = 0.25  # seconds a read waits on one endpoint before asking all the others too
T = TypeVar("T")


class NoEndpointAnswered(RetryableError):
    """Every cluster endpoint failed to answer within the deadline (retryable: the next
    attempt may find one). ``failures`` is the last failure per region."""

    def __init__(self, what: str, failures: Mapping[str, str]) -> None:
        detail = "; ".join(f"{region}: {why}" for region, why in failures.items()) or "none tried"
        super().__init__(f"no ARC cluster endpoint answered {what} in time ({detail})")
        self.failures = dict(failures)


@dataclass(frozen=True)
class EndpointReading:
    """What one endpoint answered to reading the step's routing controls."""

    region: str
    states: dict[str, str] | None  # None: it did not answer
    error: str = ""
    missing: tuple[str, ...] = ()


def cluster_endpoints(ctx: StepContext, p: ArcSetRoutingControls) -> dict[str, str]:
    """The step's endpoints, else the settings'; ActionFailed when neither names any."""
    endpoints = dict(p.cluster_endpoints or ctx.aws.config.arc_cluster_endpoints)
    if not endpoints:
        raise ActionFailed(
            "no ARC cluster endpoints: give the step cluster_endpoints, or set"
            " arc.cluster_endpoints in the settings (DescribeCluster lists them)"
        )
    return endpoints


def wanted_states(p: ArcSetRoutingControls) -> dict[str, str]:
    try:
        return p.wanted()
    except ValueError as exc:
        raise ActionFailed(str(exc)) from None


def _conflict(exc: ClientError) -> ActionFailed:
    response: dict[str, Any] = exc.response if isinstance(exc.response, dict) else {}
    message = str((response.get("Error") or {}).get("Message") or "").strip()
    rule = response.get("resourceId") or "(not named)"
    kind = response.get("resourceType") or "resource"
    return ActionFailed(
        f"ARC refused the change: {kind} {rule} is not satisfied ({message}). The routing"
        " controls were not changed; list the rule in safety_rules_to_override only to"
        " break glass on purpose"
    )


def _endpoint_failure(exc: BaseException) -> str | None:
    """Why one endpoint did not answer for the cluster, or None when its answer is the
    cluster's (to be raised)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in TRY_ANOTHER or (isinstance(status, int) and status >= 500):
            return code
        return None
    if isinstance(exc, TimeoutError):
        return "timed out"
    error = classify(exc)
    return f"{type(exc).__name__}" if error.retryable else None


class _Skipped(Exception):
    """One endpoint did not answer for the cluster; ``why`` says how."""

    def __init__(self, region: str, why: str) -> None:
        super().__init__(why)
        self.region = region
        self.why = why


async def on_endpoint(
    ctx: StepContext,
    p: ArcSetRoutingControls,
    region: str,
    url: str,
    call: Callable[[Any], Awaitable[T]],
) -> T:
    """``call(client)`` on one endpoint, bounded by its timeouts and the step's deadline.
    :class:`_Skipped` when the endpoint answers for itself only (or not at all); a
    ``ConflictException`` is a final :class:`ActionFailed` naming the safety rule; other
    refusals by the cluster are classified as usual."""
    remaining = ctx.remaining()
    if remaining <= 0:
        raise _Skipped(region, "no time left")
    try:
        async with (
            asyncio.timeout(min(remaining, p.connect_timeout + p.read_timeout + 0.5)),
            ctx.aws.client(
                SERVICE,
                region,
                endpoint_url=url,
                connect_timeout=min(p.connect_timeout, remaining),
                read_timeout=min(p.read_timeout, remaining),
                max_attempts=1,
            ) as client,
        ):
            return await call(client)
    except asyncio.CancelledError:
        raise
    except ActionFailed:
        raise
    except Exception as exc:
        if isinstance(exc, ClientError) and error_code(exc) == "ConflictException":
            raise _conflict(exc) from exc
        why = _endpoint_failure(exc)
        if why is None:
            raise classify(exc) from exc
        log.info("arc_endpoint_skipped", service=ctx.service, step=ctx.step, region=region,
                 reason=why)  # fmt: skip
        raise _Skipped(region, why) from exc


async def _rounds(
    ctx: StepContext, what: str, failures: dict[str, str], attempt: Callable[[], Awaitable[T]]
) -> T:
    """``attempt()`` round after round (a short, growing pause in between) until it returns,
    or :class:`NoEndpointAnswered` at the deadline. ``attempt`` raises :class:`_Skipped`
    when no endpoint answered in that round (``failures`` holds why)."""
    pause = ROTATION_PAUSE
    while True:
        try:
            return await attempt()
        except _Skipped:
            pass
        remaining = ctx.remaining()
        if remaining <= 0:
            raise NoEndpointAnswered(what, failures)
        await ctx.clock.sleep(min(pause, remaining))
        pause = min(2.0, pause * 2)


def _order(endpoints: Mapping[str, str], first: str | None) -> list[tuple[str, str]]:
    """The endpoints in random order (AWS: start from a random one), ``first`` first."""
    order = list(endpoints.items())
    random.shuffle(order)
    order.sort(key=lambda item: item[0] != first)
    return order


async def rotate(
    ctx: StepContext,
    p: ArcSetRoutingControls,
    endpoints: Mapping[str, str],
    call: Callable[[Any], Awaitable[T]],
    what: str,
    *,
    first: str | None = None,
) -> tuple[str, T]:
    """``call(client)`` on one endpoint after another — ``first`` (one known to answer), then
    the others in random order, as AWS recommends — round after round, until one answers for
    the cluster: ``(region, result)``. For calls that change the world: one endpoint at a
    time. :class:`NoEndpointAnswered` when the deadline passes first."""
    order = _order(endpoints, first)
    failures: dict[str, str] = {}

    async def attempt() -> tuple[str, T]:
        for region, url in order:
            try:
                return region, await on_endpoint(ctx, p, region, url, call)
            except _Skipped as skipped:
                failures[region] = skipped.why
        raise _Skipped("", "no endpoint answered")

    return await _rounds(ctx, what, failures, attempt)


async def hedged(
    ctx: StepContext,
    p: ArcSetRoutingControls,
    endpoints: Mapping[str, str],
    call: Callable[[Any], Awaitable[T]],
    what: str,
    *,
    first: str | None = None,
) -> tuple[str, T]:
    """``call(client)`` on ``first`` (the endpoint that answered last time, else a random
    one); when it has not answered within :data:`HEDGE_AFTER` seconds, or failed, on every
    other endpoint at once. The first to answer for the cluster wins and the others are
    cancelled. Only for reads: a dead endpoint then costs at most :data:`HEDGE_AFTER`, and
    the winner is the endpoint to write to. :class:`NoEndpointAnswered` at the deadline."""
    failures: dict[str, str] = {}

    async def one(region: str, url: str) -> tuple[str, T]:
        return region, await on_endpoint(ctx, p, region, url, call)

    async def attempt() -> tuple[str, T]:
        order = _order(endpoints, first)
        tasks: set[asyncio.Future[tuple[str, T]]] = {asyncio.ensure_future(one(*order[0]))}
        rest = order[1:]
        try:
            while tasks:
                done, _ = await asyncio.wait(
                    tasks,
                    timeout=HEDGE_AFTER if rest else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    tasks.discard(task)
                    try:
                        return task.result()
                    except _Skipped as skipped:
                        failures[skipped.region] = skipped.why
                # Slow or failed: ask every other endpoint now.
                tasks.update(asyncio.ensure_future(one(*item)) for item in rest)
                rest = []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        raise _Skipped("", "no endpoint answered")

    return await _rounds(ctx, what, failures, attempt)


async def read_states(client: Any, arns: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arn in arns:
        answer = await client.get_routing_control_state(RoutingControlArn=arn)
        out[arn] = str(answer["RoutingControlState"])
    return out


def _describe(states: Mapping[str, str], names: Mapping[str, str]) -> str:
    by_arn = {arn: name for name, arn in names.items()}
    return ", ".join(f"{by_arn.get(arn, arn)}={state}" for arn, state in states.items())


class SetRoutingControls(Action):
    """``arc.set_routing_controls``: set routing controls in one transaction when they differ
    (``execute`` reads them first); ``verify`` reads them back from any endpoint."""

    name = "arc.set_routing_controls"
    params_model = ArcSetRoutingControls

    def __init__(self) -> None:
        # The endpoint that answered last, per cluster (its endpoints' URLs): asked first.
        self._preferred: dict[frozenset[str], str] = {}

    def _first(self, endpoints: Mapping[str, str]) -> str | None:
        return self._preferred.get(frozenset(endpoints.values()))

    def _answered(self, endpoints: Mapping[str, str], region: str) -> None:
        if len(self._preferred) >= 64:  # bounded: one entry per cluster in use
            self._preferred.pop(next(iter(self._preferred)))
        self._preferred[frozenset(endpoints.values())] = region

    async def check(self, ctx: StepContext) -> CheckReport:
        """Before a run's step: one endpoint answering (the first, asked all at once) and every
        routing control existing. For readiness (``ctx.readiness``): every endpoint asked,
        and at least :data:`QUORUM` of them answering."""
        p = typed_params(ctx, ArcSetRoutingControls)
        try:
            arns = list(wanted_states(p))
            endpoints = cluster_endpoints(ctx, p)
        except ActionFailed as exc:
            return CheckReport(ready=False, findings=(str(exc),))
        if not ctx.readiness:
            try:
                region, _ = await hedged(
                    ctx, p, endpoints, lambda c: read_states(c, arns), "a check",
                    first=self._first(endpoints),
                )  # fmt: skip
            except ActionFailed as exc:  # e.g. ResourceNotFoundException: that control
                return CheckReport(ready=False, findings=(str(exc),))
            self._answered(endpoints, region)
            return CheckReport(ready=True)
        readings = await asyncio.gather(
            *(self._reading(ctx, p, region, url, arns) for region, url in endpoints.items())
        )
        findings: list[str] = []
        answered = [r for r in readings if r.states is not None or r.missing]
        if len(answered) < QUORUM:
            silent = "; ".join(f"{r.region}: {r.error}" for r in readings if r not in answered)
            findings.append(
                f"only {len(answered)} of {len(endpoints)} cluster endpoints answered (a flip"
                f" needs one, and ARC keeps at least {QUORUM} of 5 available): {silent}"
            )
        missing = sorted({arn for r in readings for arn in r.missing})
        for arn in missing:
            findings.append(f"routing control {arn} does not exist in the cluster")
        return CheckReport(ready=not findings, findings=tuple(findings))

    async def _reading(
        self, ctx: StepContext, p: ArcSetRoutingControls, region: str, url: str, arns: list[str]
    ) -> EndpointReading:
        remaining = ctx.remaining()
        try:
            async with (
                asyncio.timeout(min(remaining, p.connect_timeout + p.read_timeout + 0.5)),
                ctx.aws.client(
                    SERVICE,
                    region,
                    endpoint_url=url,
                    connect_timeout=p.connect_timeout,
                    read_timeout=p.read_timeout,
                    max_attempts=1,
                ) as client,
            ):
                states: dict[str, str] = {}
                missing: list[str] = []
                for arn in arns:
                    try:
                        answer = await client.get_routing_control_state(RoutingControlArn=arn)
                    except ClientError as exc:
                        if error_code(exc) != "ResourceNotFoundException":
                            raise
                        missing.append(arn)
                        continue
                    states[arn] = str(answer["RoutingControlState"])
                return EndpointReading(region, states, missing=tuple(missing))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            why = _endpoint_failure(exc) or f"{error_code(exc)}: {exc}"
            return EndpointReading(region, None, error=why)

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, ArcSetRoutingControls)
        wanted = wanted_states(p)
        endpoints = cluster_endpoints(ctx, p)
        # Read everywhere at once (a dead endpoint costs nothing), then write through the
        # endpoint that answered first, rotating on from there if it fails meanwhile.
        reader, current = await hedged(
            ctx, p, endpoints, lambda c: read_states(c, list(wanted)), "reading the states",
            first=self._first(endpoints),
        )  # fmt: skip
        self._answered(endpoints, reader)
        if current == wanted:
            return ExecuteOutcome(
                changed=False, detail=f"already {_describe(wanted, p.routing_controls)}"
            )

        async def update(client: Any) -> None:
            await client.update_routing_control_states(
                UpdateRoutingControlStateEntries=[
                    {"RoutingControlArn": arn, "RoutingControlState": state}
                    for arn, state in wanted.items()
                ],
                **(
                    {"SafetyRulesToOverride": list(p.safety_rules_to_override)}
                    if p.safety_rules_to_override
                    else {}
                ),
            )

        region, _ = await rotate(
            ctx, p, endpoints, update, "UpdateRoutingControlStates", first=reader
        )
        self._answered(endpoints, region)
        log.info(
            "arc_routing_controls_set",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            endpoint=region,
            states=_describe(wanted, p.routing_controls),
        )
        return ExecuteOutcome(
            changed=True,
            detail=f"{_describe(current, p.routing_controls)} -> "
            f"{_describe(wanted, p.routing_controls)} (through the {region} endpoint)",
        )

    async def verify(self, ctx: StepContext) -> None:
        p = typed_params(ctx, ArcSetRoutingControls)
        wanted = wanted_states(p)
        endpoints = cluster_endpoints(ctx, p)

        async def matches() -> tuple[bool, str]:
            try:
                region, seen = await hedged(
                    ctx, p, endpoints, lambda c: read_states(c, list(wanted)), "reading back",
                    first=self._first(endpoints),
                )  # fmt: skip
            except NoEndpointAnswered as exc:
                return False, str(exc)
            self._answered(endpoints, region)
            return seen == wanted, _describe(seen, p.routing_controls)

        await poll_until(
            ctx,
            matches,
            what=f"routing controls {_describe(wanted, p.routing_controls)}",
            first_delay=0.25,
            max_delay=2.0,
        )

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, ArcSetRoutingControls)
        try:
            arns = sorted(p.wanted())
        except ValueError:
            arns = sorted(set(p.routing_controls.values()))
        return [
            IamStatement(
                actions=(
                    "route53-recovery-cluster:GetRoutingControlState",
                    "route53-recovery-cluster:UpdateRoutingControlStates",
                ),
                resources=tuple(arns) or ("*",),
            )
        ]

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        # Five regional endpoints, any of which will do: no single region's plane.
        return (
            ApiDependency(
                service=SERVICE,
                operation="UpdateRoutingControlStates",
                region=None,
                plane="data",
            ),
        )

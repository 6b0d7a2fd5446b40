"""arc.set_routing_controls against the ARC cluster emulator, through the daemon's own
AwsClients (aiobotocore): one transaction, endpoint rotation within the deadline, safety-rule
refusals as final failures, readiness's 3-of-5 rule."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.actions.arc import NoEndpointAnswered, SetRoutingControls, rotate
from orchestrator.actions.base import ActionFailed
from orchestrator.actions.registry import get_action
from orchestrator.policy.actions import ArcSetRoutingControls
from orchestrator.policy.durations import FROM_FILE
from orchestrator.policy.regions import POLICY_REGIONS
from orchestrator.sandbox.arc_cluster import ArcClusterEmulator
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from tests.integration.actions.step_support import SOURCE, TARGET, calls, make_ctx, rendered

ACTION = "arc.set_routing_controls"
FAST = {"connect_timeout": "300ms", "read_timeout": "1s"}


def aws(**config: Any) -> AwsClients:
    return AwsClients(
        AwsClientConfig(access_key_id="testing", secret_access_key="testing", **config)
    )


class Cells:
    """Two cells (us-east-1 On, us-west-2 Off) and the step that flips them."""

    def __init__(self, cluster: ArcClusterEmulator) -> None:
        self.cluster = cluster
        self.panel = cluster.create_control_panel("web")
        self.use1 = cluster.create_routing_control(self.panel, "use1", state="On")
        self.usw2 = cluster.create_routing_control(self.panel, "usw2", state="Off")

    def params(self, **extra: Any) -> Any:
        values: dict[str, Any] = {
            "cluster_endpoints": self.cluster.endpoints,
            "routing_controls": {SOURCE: self.use1, TARGET: self.usw2},
            "states": {"{target_region}": "On", "{source_region}": "Off"},
            **FAST,
        }
        values.update(extra)
        return rendered(ACTION, values)

    def states(self) -> tuple[str, str]:
        return self.cluster.state(self.use1), self.cluster.state(self.usw2)


@pytest.fixture
def cells(arc_cluster: ArcClusterEmulator) -> Cells:
    return Cells(arc_cluster)


async def test_flips_both_controls_in_one_call_and_is_idempotent(cells: Cells) -> None:
    action = get_action(ACTION)
    assert isinstance(action, SetRoutingControls)
    ctx = make_ctx(aws(), cells.params())
    for readiness in (True, False):
        report = await action.check(replace(ctx, readiness=readiness))
        assert report.ready, report.findings
        assert report.control_plane_region is None  # no control plane at all
    outcome = await action.execute(ctx)
    assert outcome.changed
    assert outcome.detail.startswith(
        "us-west-2=Off, us-east-1=On -> us-west-2=On, us-east-1=Off (through the "
    )
    assert cells.states() == ("Off", "On")
    assert cells.cluster.calls("UpdateRoutingControlStates") == 1
    assert cells.cluster.calls("UpdateRoutingControlState") == 0
    await action.verify(ctx)
    again = await action.execute(ctx)
    assert not again.changed and "already" in again.detail
    assert cells.cluster.calls("UpdateRoutingControlStates") == 1
    assert calls("route53-recovery-cluster", "UpdateRoutingControlStates") >= 1


async def test_four_endpoints_blackholed_still_flips_without_waiting_for_them(
    cells: Cells,
) -> None:
    up = "eu-west-1"
    for region in cells.cluster.regions:
        if region != up:
            cells.cluster.set_endpoint_mode(region, "blackhole")
    action = get_action(ACTION)
    ctx = make_ctx(aws(), cells.params(connect_timeout="5s"), within=30)
    started = time.monotonic()
    # As the executor runs a step: the precondition needs one endpoint, not three.
    assert (await action.check(ctx)).ready
    outcome = await action.execute(ctx)
    await action.verify(ctx)
    elapsed = time.monotonic() - started
    assert cells.states() == ("Off", "On")
    assert f"through the {up} endpoint" in outcome.detail
    # Reads ask every endpoint at once and the write goes where the read was answered: not
    # one dead endpoint's connect timeout (5 s here) was paid.
    assert elapsed < 5.0, elapsed
    # Readiness wants what a future failover needs: 3 of the 5 endpoints answering.
    report = await action.check(replace(make_ctx(aws(), cells.params()), readiness=True))
    assert not report.ready
    assert "only 1 of 5 cluster endpoints answered" in report.findings[0]


async def test_a_write_rotates_through_dead_endpoints_at_a_connect_timeout_each(
    cells: Cells,
) -> None:
    dead, busy, up = ["us-east-1", "us-west-2"], ["eu-west-1", "ap-northeast-1"], "ap-southeast-2"
    for region in dead:
        cells.cluster.set_endpoint_mode(region, "blackhole")
    for region in busy:
        cells.cluster.set_endpoint_mode(region, "unavailable")
    params = cells.params()  # connect_timeout 300ms
    ctx = make_ctx(aws(), params)

    async def update(client: Any) -> None:
        await client.update_routing_control_state(
            RoutingControlArn=cells.usw2, RoutingControlState="On"
        )

    started = time.monotonic()
    region, _ = await rotate(ctx, params, cells.cluster.endpoints, update, "update", first=dead[0])
    elapsed = time.monotonic() - started
    assert region == up and cells.cluster.state(cells.usw2) == "On"
    # The dead endpoint tried first cost its connect timeout (the rest come in random order).
    assert 0.3 <= elapsed < 2 * (0.3 + 1.0 + 0.5) + 1.0, elapsed
    assert cells.cluster.calls("UpdateRoutingControlState", region=up) == 1
    assert cells.cluster.calls("UpdateRoutingControlState", region=dead[0]) == 0  # never heard


async def test_endpoints_that_answer_for_themselves_only_are_skipped(cells: Cells) -> None:
    modes = ["unavailable", "throttle", "internal_error", "refuse"]
    regions = [r for r in cells.cluster.regions if r != "ap-southeast-2"]
    for region, mode in zip(regions, modes, strict=True):
        cells.cluster.set_endpoint_mode(region, mode)
    ctx = make_ctx(aws(), cells.params())
    outcome = await get_action(ACTION).execute(ctx)
    assert outcome.changed and "ap-southeast-2" in outcome.detail
    assert cells.states() == ("Off", "On")


async def test_no_endpoint_answering_is_retryable_and_bounded_by_the_deadline(
    cells: Cells,
) -> None:
    for region in cells.cluster.regions:
        cells.cluster.set_endpoint_mode(region, "refuse")
    ctx = make_ctx(aws(), cells.params(), within=2.0)
    started = time.monotonic()
    with pytest.raises(NoEndpointAnswered) as failed:
        await get_action(ACTION).execute(ctx)
    assert failed.value.retryable
    assert time.monotonic() - started < 2.0 + 1.0
    assert set(failed.value.failures) == set(cells.cluster.regions)
    assert cells.states() == ("On", "Off")


async def test_a_safety_rule_refusal_is_final_and_names_the_rule(cells: Cells) -> None:
    gate = cells.cluster.create_routing_control(cells.panel, "automation", state="Off")
    rule = cells.cluster.create_gating_rule(
        cells.panel, "humans-only", [gate], [cells.use1, cells.usw2], "OR"
    )
    ctx = make_ctx(aws(), cells.params())
    with pytest.raises(ActionFailed) as refused:
        await get_action(ACTION).execute(ctx)
    assert not refused.value.retryable
    assert rule in str(refused.value) and "humans-only" in str(refused.value)
    assert cells.cluster.calls("UpdateRoutingControlStates") == 1  # no other endpoint tried
    assert cells.states() == ("On", "Off")
    # Break glass, on purpose: the policy names the rule.
    broken = make_ctx(aws(), cells.params(safety_rules_to_override=[rule]))
    await get_action(ACTION).execute(broken)
    assert cells.states() == ("Off", "On")
    overrides = [
        r["body"].get("SafetyRulesToOverride")
        for r in cells.cluster.requests()
        if r["operation"] == "UpdateRoutingControlStates"
    ]
    assert overrides == [None, [rule]]


async def test_an_unknown_routing_control_fails_the_step_and_the_check(cells: Cells) -> None:
    ghost = cells.panel + "/routingcontrol/0000000000000000"
    params = cells.params(routing_controls={SOURCE: cells.use1, TARGET: ghost})
    ctx = make_ctx(aws(), params)
    report = await get_action(ACTION).check(replace(ctx, readiness=True))
    assert not report.ready
    assert report.findings == (f"routing control {ghost} does not exist in the cluster",)
    before_a_run = await get_action(ACTION).check(ctx)
    assert not before_a_run.ready and "ResourceNotFoundException" in before_a_run.findings[0]
    with pytest.raises(ActionFailed, match="ResourceNotFoundException"):
        await get_action(ACTION).execute(ctx)


async def test_endpoints_come_from_the_settings_when_the_step_names_none(cells: Cells) -> None:
    params = cells.params(cluster_endpoints=None)
    configured = aws(arc_cluster_endpoints=tuple(cells.cluster.endpoints.items()))
    await get_action(ACTION).execute(make_ctx(configured, params))
    assert cells.states() == ("Off", "On")
    with pytest.raises(ActionFailed, match=r"arc\.cluster_endpoints"):
        await get_action(ACTION).execute(make_ctx(aws(), params))
    for readiness in (False, True):
        ctx = replace(make_ctx(aws(), params), readiness=readiness)
        report = await get_action(ACTION).check(ctx)
        assert not report.ready and "no ARC cluster endpoints" in report.findings[0]


# --- parameters, IAM, static stability -----------------------------------------------------

ARN = "arn:aws:route53-recovery-control::111122223333:controlpanel/abc123/routingcontrol/def456"


def params_from_file(raw: dict[str, Any], regions: tuple[str, ...] = (SOURCE, TARGET)) -> Any:
    return ArcSetRoutingControls.model_validate(
        raw, context={FROM_FILE: True, POLICY_REGIONS: regions}
    )


def test_yaml_on_and_off_are_read_as_states() -> None:
    p = params_from_file({"states": {ARN: True}})  # YAML 1.1 reads a bare On as true
    assert p.wanted() == {ARN: "On"}
    assert params_from_file({"states": {ARN: "off"}}).wanted() == {ARN: "Off"}
    with pytest.raises(ValidationError, match="'On' or 'Off'"):
        params_from_file({"states": {ARN: "maybe"}})


def test_parameter_mistakes_are_caught_when_the_policy_loads() -> None:
    with pytest.raises(ValidationError, match="routing_controls has no entry for us-west-2"):
        params_from_file({"routing_controls": {SOURCE: ARN}, "states": {"{target_region}": "On"}})
    with pytest.raises(ValidationError, match="neither a routing-control ARN"):
        params_from_file({"states": {"use1": "On"}})
    with pytest.raises(ValidationError, match="at most 10"):
        params_from_file({"states": {f"{ARN}{i}": "On" for i in range(11)}})
    with pytest.raises(ValidationError, match="cluster endpoint"):
        params_from_file({"states": {ARN: "On"}, "cluster_endpoints": {SOURCE: "ftp://x"}})
    with pytest.raises(ValidationError):
        params_from_file({"states": {ARN: "On"}, "safety_rules_to_override": ["rule"]})


def test_iam_names_the_routing_controls_and_the_step_is_a_data_plane_switch(
    cells: Cells,
) -> None:
    action = get_action(ACTION)
    params = cells.params()
    statements = action.iam_statements(params, [TARGET])
    assert statements[0].actions == (
        "route53-recovery-cluster:GetRoutingControlState",
        "route53-recovery-cluster:UpdateRoutingControlStates",
    )
    assert set(statements[0].resources) == {cells.use1, cells.usw2}
    (dependency,) = action.dependencies(params, source_region=SOURCE, target_region=TARGET)
    assert dependency.plane == "data" and dependency.region is None

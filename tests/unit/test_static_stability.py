"""The static-stability check (DESIGN principle 5): which failover steps need the region being
left or a global control plane, on the example policies and on policies made for the case;
guards.data_plane_only turning them into errors in `validate` and in the daemon's loader;
readiness's wording."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import main
from orchestrator.daemon.support import try_load
from orchestrator.policy.loader import load_policy_set, load_policy_text
from orchestrator.readiness import Move, ReadinessReport, StepReadiness, format_report
from orchestrator.static_stability import findings_for_move, located, step_findings

ROOT = Path(__file__).resolve().parents[2]
RC = "arn:aws:route53-recovery-control::111122223333:controlpanel/abc123/routingcontrol/"

POLICY = """
service: shop
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
detection: {{quorum: 1}}
signals:
  - {{name: api, type: http, target: "https://{{region}}.shop.example.com/"}}
guards: {{data_plane_only: {strict}}}
runbooks:
  failover:
{steps}
"""
FLIP_DNS = """\
    - name: flip-dns
      action: route53.set_record
      on_failure: {on_failure}
      params: {{hosted_zone_id: Z1, name: shop.example.com, value: "{{target_region}}.example.com"}}
"""
ARC_FLIP = f"""\
    - name: flip
      action: arc.set_routing_controls
      params:
        routing_controls: {{us-east-1: "{RC}use1", us-west-2: "{RC}usw2"}}
        states: {{"{{target_region}}": On, "{{source_region}}": Off}}
    - name: scale
      action: autoscaling.set_capacity
      params: {{auto_scaling_group: "shop-{{target_region}}", desired: 4}}
    - name: notify
      action: sns.publish
      params: {{topic_arn: "arn:aws:sns:{{target_region}}:111122223333:oncall", message: moved}}
"""
FENCE = """\
    - name: fence
      action: autoscaling.set_capacity
      on_failure: continue
      params: {auto_scaling_group: "shop-{source_region}", desired: 0, region: "{source_region}"}
    - name: invert
      action: route53.set_health_check_inverted
      params: {health_check_name: "hc-{source_region}"}
"""


def policy_text(steps: str, strict: bool = False) -> str:
    return POLICY.format(strict=str(strict).lower(), steps=steps)


def test_the_example_policies_are_marked_where_they_lean_on_control_planes() -> None:
    policies = load_policy_set([ROOT / "policies"])
    marked = {(f.service, f.step, f.kind) for p in policies for f in step_findings(p)}
    assert ("webapp", "flip-dns", "global_control_plane") in marked
    assert ("reports", "flip-dns", "global_control_plane") in marked
    assert ("ledger", "flip-dns", "global_control_plane") in marked
    # Inverting a health check is Route 53's control plane too (UpdateHealthCheck).
    assert ("catalog", "shift-traffic", "global_control_plane") in marked
    # Fencing the old writers needs the region being left (and may fail: continue).
    assert ("ledger", "fence-old-writers", "region_left") in marked
    # The data-plane example: routing controls for the flip, target-region APIs otherwise.
    assert not [m for m in marked if m[0] in ("storefront", "orders")], marked
    assert "storefront" in policies.policies


def test_a_data_plane_runbook_has_nothing_to_mark() -> None:
    assert step_findings(load_policy_text(policy_text(ARC_FLIP, strict=True))) == []


def test_the_region_left_and_route53_inversion_are_found_per_move() -> None:
    policy = load_policy_text(policy_text(FENCE))
    by_step = {(f.step, f.kind): f for f in step_findings(policy)}
    fence = by_step[("fence", "region_left")]
    assert fence.moves == (("us-east-1", "us-west-2"),)
    assert fence.dependency.service == "autoscaling" and fence.dependency.region == "us-east-1"
    assert "on_failure: continue: the failover goes on without it" in fence.message
    invert = by_step[("invert", "global_control_plane")]
    assert "UpdateHealthCheck" in invert.message and "arc.set_routing_controls" in invert.message
    assert set(findings_for_move(policy, "us-east-1", "us-west-2")) == {"fence", "invert"}


def test_sns_in_the_region_being_left_is_a_data_plane_that_region_serves() -> None:
    steps = """\
    - name: page
      action: sns.publish
      params: {topic_arn: "arn:aws:sns:us-east-1:111122223333:oncall", message: moving}
"""
    (finding,) = step_findings(load_policy_text(policy_text(steps)))
    assert finding.kind == "region_left" and finding.dependency.plane == "data"
    assert "use one served by another region" in finding.message
    assert "arc.set_routing_controls" not in finding.message  # it already is a data plane


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_warns_and_data_plane_only_makes_it_an_error(tmp_path: Path, capsys: Any) -> None:
    path = write(tmp_path, policy_text(FLIP_DNS.format(on_failure="abort")))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:12:7: runbooks.failover[0]: warning: step 'flip-dns'" in out
    assert "1 warning(s)" in out

    write(tmp_path, policy_text(FLIP_DNS.format(on_failure="abort"), strict=True))
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:12:7: runbooks.failover[0]: step 'flip-dns'" in out
    assert "guards.data_plane_only forbids it unless the step has on_failure: continue" in out
    assert "1 error(s)" in out

    write(tmp_path, policy_text(FLIP_DNS.format(on_failure="continue"), strict=True))
    assert main(["validate", str(path)]) == 0
    assert "warning:" in capsys.readouterr().out


async def test_the_daemon_refuses_a_data_plane_only_policy_that_breaks_it(tmp_path: Path) -> None:
    path = write(tmp_path, policy_text(FLIP_DNS.format(on_failure="abort"), strict=True))
    assert await try_load([str(path)]) is None
    write(tmp_path, policy_text(ARC_FLIP, strict=True))
    loaded = await try_load([str(path)])
    assert loaded is not None and "shop" in loaded.policies
    errors, warnings = located(loaded)
    assert errors == [] and warnings == []


def test_readiness_never_calls_an_inversion_a_data_plane_switch() -> None:
    policy = load_policy_text(policy_text(FENCE + ARC_FLIP))
    move = Move("failover", "us-east-1", "us-west-2")
    found = findings_for_move(policy, move.source, move.target)
    steps = [
        StepReadiness("shop", move, step.name, step.action, True,
                      static_stability=tuple(f.message for f in found.get(step.name, ())))
        for step in policy.runbooks.failover
    ]  # fmt: skip
    text = format_report(ReadinessReport(steps=steps))
    assert "health-check inversion" not in text
    invert = [line for line in text.splitlines() if "step 'invert'" in line]
    assert invert and "Route 53's API (UpdateHealthCheck), a global control plane" in invert[0]
    # The routing-control flip already is the data-plane switch: nothing to advise.
    flip = text.split("flip (arc.set_routing_controls)")[1].splitlines()[1]
    assert "!" not in flip
    assert "2 failover step check(s) not statically stable" in text


@pytest.mark.parametrize("runbook", ["failback", "switchover"])
def test_only_failover_moves_are_marked(runbook: str) -> None:
    policy = load_policy_text(policy_text(FENCE))
    move = Move(runbook, "us-west-2", "us-east-1")
    assert findings_for_move(policy, move.source, move.target) == {}


def test_every_registered_action_declares_the_apis_it_calls() -> None:
    from orchestrator.actions.base import Action
    from orchestrator.actions.registry import get_action
    from orchestrator.policy.actions import ACTION_NAMES

    for name in sorted(ACTION_NAMES):
        action = type(get_action(name))
        assert action.dependencies is not Action.dependencies, f"{name} declares nothing"

"""Skipping idle ticks gives exactly the decisions of ticking every interval.

The scenario simulator judges only the moments where something can change (facts,
observations that change a view, step ends, the tick after a change, deadlines); these tests
run every scenario both ways and compare: the runs (start, end, steps, outcome), the final
service state and verdicts, and at every tick of the dense run the decision that the skipping
run holds at that time (phase, action, target, reasons, who initiated it, the RTO clock's
start, the active region). The example policies' scenarios, the same stretched to an hour,
and random policies and timelines (hypothesis) built to reach every deadline the engine has:
views turning stale between probes, lag readings growing old or frozen, cooldowns, the
max-failovers window, the stable period of an automatic failback, approval timeouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.engine.expectations import check
from orchestrator.engine.scenario import Scenario
from orchestrator.engine.scenario_loader import load_scenario, scenario_files
from orchestrator.engine.simulator import Simulation, SimulationResult
from orchestrator.policy.models import Policy
from tests.unit.engine.conftest import REGIONS, VANTAGES, load, policy_data

ROOT = Path(__file__).parents[3]
EXAMPLES = scenario_files([str(ROOT / "policies")])


def both(scenario: Scenario, policy: Policy) -> tuple[SimulationResult, SimulationResult]:
    dense = Simulation(scenario, policy, "v", every_tick=True).run()
    skipping = Simulation(scenario, policy, "v").run()
    return dense, skipping


def assert_same_decisions(dense: SimulationResult, skipping: SimulationResult) -> None:
    assert skipping.runs == dense.runs
    assert skipping.state == dense.state
    assert skipping.verdicts == dense.verdicts
    assert skipping.lag == dense.lag
    assert len(skipping.moments) <= len(dense.moments)
    for m in dense.moments:
        s = skipping.moment_at(m.at)
        assert s is not None, m.at
        want = (m.decision.key(), m.decision.initiated_by, m.decision.detected_at, m.active_region)
        got = (s.decision.key(), s.decision.initiated_by, s.decision.detected_at, s.active_region)
        assert got == want, f"at {m.at}s (skipping judged it at {s.at}s)"
    assert check(skipping) == check(dense)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_scenarios_decide_the_same_skipping_idle_ticks(path: Path) -> None:
    loaded = load_scenario(path)
    assert_same_decisions(*both(loaded.scenario, loaded.policy))


@pytest.mark.parametrize("path", EXAMPLES[::3], ids=[p.stem for p in EXAMPLES[::3]])
def test_example_scenarios_stretched_to_an_hour_decide_the_same(path: Path) -> None:
    loaded = load_scenario(path)
    hour = loaded.scenario.model_copy(update={"duration": 3600.0})
    dense, skipping = both(hour, loaded.policy)
    assert_same_decisions(dense, skipping)
    assert len(skipping.moments) < len(dense.moments) / 5


# -- random policies and timelines ----------------------------------------------------------

SECONDS = 900


def _policy(draw: st.DrawFn, regions: int) -> dict[str, Any]:
    interval = draw(st.sampled_from([5, 10, 15]))
    detection: dict[str, Any] = {
        "interval": f"{interval}s",
        "consecutive_failures": draw(st.integers(1, 3)),
        "quorum": draw(st.integers(1, 2)),
        # staleness just above the interval too: a silent view turns stale between probes
        "staleness": f"{draw(st.sampled_from([interval + 2, 2 * interval + 3, 45]))}s",
        "window": "1m",
        "min_samples": 3,
    }
    if draw(st.booleans()):
        detection["failure_ratio"] = 0.5
    if draw(st.booleans()):
        detection["recovery_successes"] = draw(st.integers(1, 4))
    standbys = REGIONS[1:regions]
    data = policy_data(
        regions,
        detection=detection,
        guards={
            "cooldown": draw(st.sampled_from(["0s", "1m", "5m"])),
            "max_failovers": {
                "count": draw(st.integers(1, 3)),
                "window": draw(st.sampled_from(["3m", "10m"])),
            },
            "on_lag_above_rpo": draw(st.sampled_from(["wait", "require_approval", "proceed"])),
            "on_lag_unknown": draw(st.sampled_from(["wait", "require_approval", "proceed"])),
            "failback": {
                "mode": draw(st.sampled_from(["manual", "automatic"])),
                "stable_period": draw(st.sampled_from(["1m", "3m"])),
            },
        },
        replication={
            "sources": {r: {"type": "rds_replica_lag", "db_instance": f"db-{r}"} for r in standbys},
            # at least a fresh reading's age (2 periods + the metric's delay + the interval:
            # the policy check); frozen readings run out inside the 15 minutes all the same
            "max_age": draw(st.sampled_from(["3m30s", "4m"])),
            "interval": draw(st.sampled_from(["10s", "30s"])),
        },
        runbooks={
            "failover": [
                {
                    "name": "promote-db",
                    "action": "rds.promote_read_replica",
                    "params": {"db_instance": "db-{target_region}"},
                    "timeout": "1m",
                    "retries": draw(st.integers(0, 1)),
                },
                {
                    "name": "flip-dns",
                    "action": "route53.set_record",
                    "after": ["promote-db"],
                    "params": {
                        "hosted_zone_id": "Z0SHOP",
                        "name": "api.shop.example.com",
                        "value": "api.{target_region}.shop.example.com",
                    },
                },
            ],
            "failback": [
                {
                    "name": "approve-failback",
                    "action": "approval",
                    "params": {"message": "re-seed first"},
                    "timeout": "2m",
                },
                {
                    "name": "back-dns",
                    "action": "route53.set_record",
                    "after": ["approve-failback"],
                    "params": {
                        "hosted_zone_id": "Z0SHOP",
                        "name": "api.shop.example.com",
                        "value": "api.{target_region}.shop.example.com",
                    },
                },
            ],
        },
    )
    data["signals"].append(
        {
            "name": "aws",
            "type": "aws_health",
            "services": ["EC2"],
            "poll_interval": draw(st.sampled_from(["20s", "1m"])),
        }
    )
    return data


FACT_KINDS = ("probes", "probes", "probes", "lag", "lag", "health", "api", "operator", "leader")
FACT_KINDS += ("step",)


def _fact(draw: st.DrawFn, regions: tuple[str, ...]) -> dict[str, Any]:
    at = f"{draw(st.integers(0, SECONDS * 2)) * 500}ms"  # on and off the tick
    kind = draw(st.sampled_from(FACT_KINDS))
    region = draw(st.sampled_from(regions))
    if kind == "probes":
        state = draw(
            st.sampled_from(["down", "up", "unknown", "slow"])
            | st.builds(lambda s: {"flap": f"{s}s"}, st.sampled_from([7, 20]))
        )
        fact: dict[str, Any] = {"region": region, "state": state}
        vantage = draw(st.sampled_from([None, None, *VANTAGES]))
        if vantage is not None:
            fact["vantage"] = vantage
        return {"at": at, "probes": fact}
    if kind == "lag":
        seconds = draw(st.sampled_from([None, 5, 30, 120]))
        lag: dict[str, Any] = {"region": draw(st.sampled_from(regions[1:])), "seconds": seconds}
        if draw(st.booleans()):
            lag["frozen"] = True
        if draw(st.booleans()):
            lag["age"] = f"{draw(st.sampled_from([30, 150, 200]))}s"
        return {"at": at, "lag": lag}
    if kind == "health":
        status = draw(st.sampled_from(["open", "closed"]))
        return {"at": at, "aws_health": {"region": region, "service": "EC2", "status": status}}
    if kind == "api":
        return {"at": at, "aws_health_api": draw(st.sampled_from(["available", "unavailable"]))}
    if kind == "operator":
        command = draw(
            st.sampled_from(["failover", "approve", "failback", "pause", "resume", "switchover"])
        )
        op: dict[str, Any] = {"command": command}
        if draw(st.booleans()):
            op["to"] = region
        if draw(st.sampled_from([False, False, True])):
            op["force"] = True
        return {"at": at, "operator": op}
    if kind == "leader":
        return {"at": at, "leader": draw(st.booleans())}
    step = {
        "name": draw(st.sampled_from(["promote-db", "flip-dns", "approve-failback"])),
        "outcome": draw(st.sampled_from(["fail", "hang", "succeed"])),
        "duration": f"{draw(st.sampled_from([0, 10, 45]))}s",
    }
    return {"at": at, "step": step}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Scenario, Policy]:
    n = draw(st.sampled_from([2, 3]))
    regions = REGIONS[:n]
    data = _policy(draw, n)
    start = [{"at": "0s", "probes": {"region": r, "state": "up"}} for r in regions]
    start.append({"at": "0s", "aws_health_api": "available"})
    start += [{"at": "0s", "lag": {"region": r, "seconds": 2}} for r in regions[1:]]
    facts = [_fact(draw, regions) for _ in range(draw(st.integers(2, 18)))]
    facts.sort(key=lambda f: int(f["at"][:-2]))
    document: dict[str, Any] = {
        "scenario": "random",
        "policy": data,
        "duration": f"{SECONDS}s",
        "tick": draw(st.sampled_from(["1s", "1s", "500ms", "2s"])),
        "timeline": [*start, *facts],
        "expect": [{"failovers": {"max": 1000}}],
    }
    if draw(st.booleans()):  # a history: its cooldown and max-failovers window run out
        document["start"] = {
            "active_region": draw(st.sampled_from(regions)),
            "last_automatic_move": f"{draw(st.integers(1, 400))}s",
            "moves": [
                {"ago": f"{draw(st.integers(1, 900))}s", "kind": "failover", "to": r}
                for r in draw(st.lists(st.sampled_from(regions[1:]), max_size=2))
            ],
        }
    scenario = Scenario.model_validate(document)
    return scenario, load(data)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_random_scenarios_decide_the_same_skipping_idle_ticks(
    case: tuple[Scenario, Policy],
) -> None:
    assert_same_decisions(*both(*case))

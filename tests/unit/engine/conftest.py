"""Shared builders for the engine's unit tests.

Policies are built the way policy authors write them (YAML through
``load_policy_text``) so that every test policy also passes the loader's cross-field checks;
verdicts and states are built directly, because ``decide()`` takes them as plain values.
Everything takes ``now`` explicitly: no test reads a clock.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from orchestrator.engine.healthbook import RegionVerdict
from orchestrator.engine.observation import Observation
from orchestrator.engine.scenario import Scenario
from orchestrator.engine.simulator import Simulation, SimulationResult
from orchestrator.engine.state import (
    Initiator,
    LagReading,
    Move,
    RunInfo,
    RunStatus,
    ServiceState,
)
from orchestrator.engine.vocabulary import Action, Reason, Verdict
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.models import Policy

SERVICE = "shop"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2")
PRIMARY, STANDBY, THIRD, FOURTH = REGIONS
VANTAGES = ("local", "agent-eu", "agent-ap")

MINUTE = 60.0
HOUR = 3600.0


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``; a value of None deletes the key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def policy_data(regions: int = 2, **overrides: Any) -> dict[str, Any]:
    """A valid policy as YAML data: ``regions`` regions in priority order, three probe vantage
    points, quorum 2, 3 consecutive failures at a 10s interval, no replication, cooldown 30m,
    at most 2 failovers a day, manual failback; ``overrides`` are deep-merged in."""
    names = list(REGIONS[:regions])
    base: dict[str, Any] = {
        "service": SERVICE,
        "regions": names,
        "rto": "15m",
        "rpo": "1m",
        "vantage_points": list(VANTAGES),
        "detection": {
            "interval": "10s",
            "timeout": "5s",
            "consecutive_failures": 3,
            "quorum": 2,
            "staleness": "45s",
        },
        "signals": [
            {
                "name": "api",
                "type": "http",
                "target": "https://api.{region}.shop.example.com/healthz",
            }
        ],
        "guards": {
            "cooldown": "30m",
            "max_failovers": {"count": 2, "window": "24h"},
            "on_lag_above_rpo": "wait",
            "on_lag_unknown": "wait",
            "failback": {"mode": "manual"},
        },
        "runbooks": {
            "failover": [
                {
                    "name": "flip-dns",
                    "action": "route53.set_record",
                    "params": {
                        "hosted_zone_id": "Z0SHOP",
                        "name": "api.shop.example.com",
                        "value": "api.{target_region}.shop.example.com",
                    },
                }
            ]
        },
    }
    return _merge(base, overrides)


def with_replication(data: dict[str, Any], max_age: str = "3m") -> dict[str, Any]:
    """Add an RDS replica lag source for every standby region of ``data``."""
    sources = {
        region: {"type": "rds_replica_lag", "db_instance": f"shop-db-{region}"}
        for region in data["regions"][1:]
    }
    return _merge(data, {"replication": {"sources": sources, "max_age": max_age}})


def load(data: Mapping[str, Any]) -> Policy:
    """Load policy data through the real loader (YAML text, pydantic, cross-field checks)."""
    return load_policy_text(yaml.safe_dump(dict(data), sort_keys=False), "<test policy>")


def make_policy(regions: int = 2, *, replication: bool = False, **overrides: Any) -> Policy:
    data = policy_data(regions, **overrides)
    if replication:
        data = with_replication(data)
    return load(data)


def rv(
    region: str,
    verdict: Verdict | str,
    *,
    since: float = 0.0,
    quorum: int = 2,
    reasons: Iterable[Reason] = (),
    recent_failures: bool = False,
) -> RegionVerdict:
    """A RegionVerdict with plausible vantage lists for its verdict."""
    v = Verdict(verdict)
    failing: tuple[str, ...] = ()
    passing: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    if v is Verdict.DOWN:
        failing = VANTAGES
    elif v is Verdict.HEALTHY:
        passing = VANTAGES
    elif v is Verdict.DEGRADED:
        failing, passing = VANTAGES[:1], VANTAGES[1:]
    else:
        unknown = VANTAGES
    return RegionVerdict(
        region=region,
        verdict=v,
        since=since,
        quorum=quorum,
        failing=failing,
        passing=passing,
        unknown=unknown,
        reasons=tuple(reasons),
        recent_failures=recent_failures,
    )


def vmap(verdicts: Mapping[str, Verdict | str], since: float = 0.0) -> dict[str, RegionVerdict]:
    """``{"us-east-1": "down", ...}`` -> region verdicts."""
    return {region: rv(region, v, since=since) for region, v in verdicts.items()}


def state(
    active: str = PRIMARY,
    *,
    paused: bool = False,
    run: RunInfo | None = None,
    moves: Iterable[Move] = (),
    last_move_finished_at: float | None = None,
    detected_at: float | None = None,
) -> ServiceState:
    return ServiceState(
        service=SERVICE,
        active_region=active,
        paused=paused,
        run=run,
        moves=tuple(moves),
        last_move_finished_at=last_move_finished_at,
        detected_at=detected_at,
    )


def run_info(
    target: str = STANDBY,
    *,
    source: str = PRIMARY,
    status: RunStatus = RunStatus.RUNNING,
    started_at: float = 0.0,
    kind: Action = Action.FAILOVER,
    waiting_approval: bool = False,
    error: str = "",
) -> RunInfo:
    return RunInfo(
        id="run-1",
        kind=kind,
        source=source,
        target=target,
        started_at=started_at,
        initiated_by=Initiator.POLICY,
        status=status,
        finished_at=None if status is RunStatus.RUNNING else started_at + 1,
        error=error,
        waiting_approval=waiting_approval,
    )


def lag(seconds: float | None, observed_at: float) -> LagReading:
    return LagReading(seconds, observed_at)


def obs(
    region: str,
    vantage: str,
    ok: bool | None,
    at: float,
    *,
    signal: str = "api",
    detail: str = "",
) -> Observation:
    if not detail and ok is False:
        detail = "connect"
    return Observation(SERVICE, region, signal, vantage, ok, at, detail=detail)


# -- scenarios ----------------------------------------------------------------------------

RUNBOOKS: dict[str, Any] = {
    "failover": [
        {
            "name": "notify",
            "action": "sns.publish",
            "params": {
                "topic_arn": "arn:aws:sns:{target_region}:123456789012:shop-oncall",
                "message": "moving {service} to {target_region}",
            },
            "on_failure": "continue",
        },
        {
            "name": "promote-db",
            "action": "rds.promote_read_replica",
            "params": {"db_instance": "shop-db-{target_region}"},
            "timeout": "2m",
            "retries": 2,
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
            "timeout": "1m",
        },
    ],
    "failback": [
        {
            "name": "approve-failback",
            "action": "approval",
            "params": {"message": "re-seed the old primary first"},
            "timeout": "10m",
        },
        {
            "name": "flip-dns",
            "action": "route53.set_record",
            "after": ["approve-failback"],
            "params": {
                "hosted_zone_id": "Z0SHOP",
                "name": "api.shop.example.com",
                "value": "api.{target_region}.shop.example.com",
            },
        },
    ],
}


def sim_policy_data(regions: int = 2, **overrides: Any) -> dict[str, Any]:
    """A policy for simulations: the test policy with a three-step failover runbook (notify
    continues on failure; promote-db retries twice, 2m timeout; flip-dns after promote-db)
    and an approval-gated failback runbook; no cooldown."""
    extra: dict[str, Any] = {"runbooks": RUNBOOKS, "guards": {"cooldown": "0s"}}
    return _merge(policy_data(regions, **extra), overrides)


def all_up(regions: Iterable[str], at: str = "0s") -> list[dict[str, Any]]:
    return [{"at": at, "probes": {"region": r, "state": "up"}} for r in regions]


def scenario_data(
    policy: Mapping[str, Any],
    timeline: Iterable[Mapping[str, Any]],
    *,
    duration: str = "20m",
    expect: Iterable[Mapping[str, Any]] = ({"failovers": {"max": 1000}},),
    name: str = "test scenario",
) -> dict[str, Any]:
    return {
        "scenario": name,
        "policy": dict(policy),
        "duration": duration,
        "timeline": [dict(e) for e in timeline],
        "expect": [dict(x) for x in expect],
    }


def simulate(
    policy: Mapping[str, Any],
    timeline: Iterable[Mapping[str, Any]],
    *,
    duration: str = "20m",
    expect: Iterable[Mapping[str, Any]] = ({"failovers": {"max": 1000}},),
    until: float | None = None,
    every_tick: bool = False,
) -> SimulationResult:
    """Run an inline-policy scenario through the real Simulation; returns its result."""
    data = scenario_data(policy, timeline, duration=duration, expect=expect)
    sc = Scenario.model_validate(data)
    return Simulation(sc, load(policy), "test", every_tick=every_tick).run(until=until)

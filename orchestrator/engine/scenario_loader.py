"""Loading scenario files and the policy each one names, with file:line errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.engine.scenario import Scenario
from orchestrator.policy.loader import (
    load_policy_file,
    parse_policy,
    policy_version,
    validate_model,
)
from orchestrator.policy.models import Policy
from orchestrator.policy.yamlsource import (
    Limits,
    LoadedYaml,
    SourceError,
    SourceErrors,
    load_yaml_file,
)

# A recorded incident exported by the flight recorder holds every observation of its window:
# far more than a policy (the daemon's 256 KiB cap is for what it reloads while running).
# Aliases are still charged for what they expand to, so a bomb is refused all the same.
SCENARIO_LIMITS = Limits(max_bytes=8 * 1024 * 1024, max_nodes=1_000_000)


@dataclass(frozen=True)
class LoadedScenario:
    file: str
    scenario: Scenario
    policy: Policy
    policy_version: str


def scenario_files(paths: list[str]) -> list[Path]:
    """Files named, and every ``*.yaml``/``*.yml`` below named folders that is a scenario
    (a mapping with a ``scenario:`` key); policies beside them are skipped."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
                if _looks_like_scenario(f):
                    out.append(f)
        else:
            out.append(p)
    return out


def _looks_like_scenario(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("scenario:"):
                    return True
    except (OSError, UnicodeDecodeError):
        return True  # let the loader report it
    return False


def _sub(loaded: LoadedYaml, prefix: tuple[str | int, ...], data: Any) -> LoadedYaml:
    """The part of a file below ``prefix``, keeping its line numbers (inline policies)."""
    n = len(prefix)
    lines = {path[n:]: pos for path, pos in loaded.lines.items() if path[:n] == prefix}
    return LoadedYaml(file=loaded.file, data=data, lines=lines, text=loaded.text, prefix=prefix)


@dataclass(frozen=True)
class ScenarioDocument:
    """A scenario file read and validated on its own, before any policy is bound to it."""

    file: str
    loaded: LoadedYaml
    scenario: Scenario


def read_scenario(path: str | Path) -> ScenarioDocument:
    """Read a scenario file (no policy yet); :class:`SourceErrors` naming file and line."""
    loaded = load_yaml_file(path, SCENARIO_LIMITS)
    if not isinstance(loaded.data, dict):
        raise SourceErrors([loaded.error((), "expected a mapping with a `scenario:` key")])
    scenario = validate_model(Scenario, loaded)
    errors: list[SourceError] = []
    for i, entry in enumerate(scenario.timeline):
        if entry.at > scenario.duration:
            errors.append(
                loaded.error(("timeline", i, "at"), "later than the scenario's `duration`")
            )
    if errors:
        raise SourceErrors(errors)
    return ScenarioDocument(str(path), loaded, scenario)


def own_policy(doc: ScenarioDocument) -> Policy:
    """The policy the scenario names: a file relative to it, or inline."""
    scenario, loaded = doc.scenario, doc.loaded
    if isinstance(scenario.policy, str):
        policy_path = Path(os.path.normpath(Path(loaded.file).parent / scenario.policy))
        if not policy_path.is_file():
            raise SourceErrors([loaded.error(("policy",), f"no policy file at {policy_path}")])
        return load_policy_file(policy_path)
    return parse_policy(_sub(loaded, ("policy",), scenario.policy))


def bind(doc: ScenarioDocument, policy: Policy) -> LoadedScenario:
    """The scenario run against ``policy`` (its own, or another version of it: ``failoverd
    diff``); :class:`SourceErrors` when the scenario names what the policy does not have."""
    scenario, loaded = doc.scenario, doc.loaded
    errors: list[SourceError] = []
    if scenario.service is not None and scenario.service != policy.service:
        errors.append(
            loaded.error(
                ("service",),
                f"the policy defines service {policy.service!r}, not {scenario.service!r}",
            )
        )
    errors.extend(_check_names(loaded, scenario, policy))
    if errors:
        raise SourceErrors(errors)
    return LoadedScenario(doc.file, scenario, policy, policy_version([policy]))


def load_scenario(path: str | Path) -> LoadedScenario:
    doc = read_scenario(path)
    return bind(doc, own_policy(doc))


def _check_names(loaded: LoadedYaml, scenario: Scenario, policy: Policy) -> list[SourceError]:
    """Facts and expectations must name regions, signals, vantages, alarms and steps that
    the policy has: a typo would otherwise make a scenario pass for the wrong reason."""
    errors: list[SourceError] = []
    regions = set(policy.regions)
    signals = {s.name for s in policy.signals}
    vantages = set(policy.vantage_points)
    alarms = {
        name
        for s in policy.signals
        if s.type == "cloudwatch_alarm"
        for names in s.alarms.values()
        for name in names
    }
    steps = {
        step.name
        for book in (policy.runbooks.failover, policy.runbooks.failback, policy.runbooks.switchover)
        for step in (book or [])
    }

    def need(
        ok: bool, path: tuple[str | int, ...], what: str, value: object, known: set[str]
    ) -> None:
        if not ok:
            expected = ", ".join(sorted(known)) or "none in the policy"
            errors.append(
                loaded.error(path, f"unknown {what} {value!r}; expected one of: {expected}")
            )

    for i, e in enumerate(scenario.timeline):
        base: tuple[str | int, ...] = ("timeline", i)
        if e.probes is not None:
            need(
                e.probes.region in regions,
                (*base, "probes", "region"),
                "region",
                e.probes.region,
                regions,
            )
            if e.probes.signal is not None:
                need(
                    e.probes.signal in signals,
                    (*base, "probes", "signal"),
                    "signal",
                    e.probes.signal,
                    signals,
                )
            if e.probes.vantage is not None:
                need(
                    e.probes.vantage in vantages,
                    (*base, "probes", "vantage"),
                    "vantage point",
                    e.probes.vantage,
                    vantages,
                )
        if e.aws_health is not None:
            need(
                e.aws_health.region in regions,
                (*base, "aws_health", "region"),
                "region",
                e.aws_health.region,
                regions,
            )
        if e.lag is not None:
            need(e.lag.region in regions, (*base, "lag", "region"), "region", e.lag.region, regions)
        if e.alarm is not None:
            need(e.alarm.name in alarms, (*base, "alarm", "name"), "alarm", e.alarm.name, alarms)
        if e.step is not None:
            need(e.step.name in steps, (*base, "step", "name"), "step", e.step.name, steps)
        if e.operator is not None and e.operator.to is not None:
            need(
                e.operator.to in regions,
                (*base, "operator", "to"),
                "region",
                e.operator.to,
                regions,
            )
    start = scenario.start
    if start is not None:
        if start.active_region is not None:
            need(
                start.active_region in regions,
                ("start", "active_region"),
                "region",
                start.active_region,
                regions,
            )
        for i, m in enumerate(start.moves):
            need(m.to in regions, ("start", "moves", i, "to"), "region", m.to, regions)
    for i, x in enumerate(scenario.expect):
        base = ("expect", i)
        if x.failover is not None and x.failover.to is not None:
            need(
                x.failover.to in regions,
                (*base, "failover", "to"),
                "region",
                x.failover.to,
                regions,
            )
        if x.active_region is not None:
            need(
                x.active_region.is_ in regions,
                (*base, "active_region", "is"),
                "region",
                x.active_region.is_,
                regions,
            )
    return errors

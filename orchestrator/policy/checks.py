"""Cross-field rules of a policy: what no single field can check on its own.

Every rule reports a problem as (data path, message) and carries on, so that ``failoverd
validate`` shows all of them at once rather than one per run. They also run on the part of
an invalid file that did parse (:mod:`orchestrator.policy.salvage`): a rule that reads a
part that had to be taken out (:class:`Damage`) stays quiet rather than report what the
removal caused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from orchestrator.policy.actions import ACTION_PARAMS, PLACEHOLDERS
from orchestrator.policy.durations import FROM_FILE, format_duration
from orchestrator.policy.models import (
    AWS_HEALTH_VANTAGE,
    CLOUDWATCH_VANTAGE,
    PROBE_TYPES,
    AwsHealthSignal,
    CloudWatchAlarmSignal,
    Policy,
    Step,
)
from orchestrator.policy.regions import POLICY_REGIONS
from orchestrator.policy.yamlsource import short

Path = tuple[str | int, ...]
Problem = tuple[Path, str]
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
RESERVED_VANTAGES = frozenset({AWS_HEALTH_VANTAGE, CLOUDWATCH_VANTAGE})


def _same(path: Path) -> Path:
    return path


@dataclass(frozen=True)
class Damage:
    """What was taken out of (or stood in for in) a policy before it validated: paths in
    the file's data, a way from the policy's paths to the file's (list items taken out
    shift the indices after them), and the step names each runbook has in the file."""

    damaged: frozenset[Path] = frozenset()
    to_file: Callable[[Path], Path] = _same
    step_names: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def intact(self, *paths: Path) -> bool:
        """Nothing at, above or below any of ``paths`` (policy paths) was damaged."""
        for path in paths:
            p = self.to_file(path)
            for d in self.damaged:
                n = min(len(p), len(d))
                if p[:n] == d[:n]:
                    return False
        return True

    def replaced(self, path: Path) -> bool:
        """``path`` (a policy path) or a part above it was taken out or stood in for."""
        p = self.to_file(path)
        return any(p[: len(d)] == d for d in self.damaged)


NO_DAMAGE = Damage()


def region_vantages(policy: Policy, region: str) -> set[str]:
    """Distinct vantage points that can observe ``region`` under this policy."""
    seen: set[str] = set()
    for signal in policy.signals:
        if isinstance(signal, AwsHealthSignal):
            seen.add(AWS_HEALTH_VANTAGE)
        elif isinstance(signal, CloudWatchAlarmSignal):
            if signal.alarms.get(region):
                seen.add(CLOUDWATCH_VANTAGE)
        else:
            seen.update(signal.vantage or policy.vantage_points)
    return seen


def check_policy(policy: Policy, damage: Damage = NO_DAMAGE) -> list[Problem]:
    problems = [
        *_regions(policy),
        *_vantages(policy),
        *_signals(policy, damage),
        *_detection(policy, damage),
        *_objectives(policy, damage),
        *_replication(policy, damage),
        *_runbooks(policy, damage),
        *_partition(policy, damage),
    ]
    return list(dict.fromkeys(problems))  # a template problem is found once per region


def _duplicates(items: list[str]) -> Iterator[tuple[int, str]]:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item in seen:
            yield i, item
        seen.add(item)


def _regions(policy: Policy) -> Iterator[Problem]:
    for i, region in _duplicates(policy.regions):
        yield ("regions", i), f"region {region!r} is listed twice"


def _vantages(policy: Policy) -> Iterator[Problem]:
    for i, name in _duplicates(policy.vantage_points):
        yield ("vantage_points", i), f"vantage point {name!r} is listed twice"
    for i, name in enumerate(policy.vantage_points):
        if name in RESERVED_VANTAGES:
            yield (
                ("vantage_points", i),
                f"{name!r} is reserved: it is added by a {name} signal, not listed here",
            )


def _signals(policy: Policy, damage: Damage) -> Iterator[Problem]:
    for i, name in _duplicates([s.name for s in policy.signals]):
        yield ("signals", i, "name"), f"signal name {name!r} is used twice"
    regions = set(policy.regions)
    for i, signal in enumerate(policy.signals):
        base: tuple[str | int, ...] = ("signals", i)
        if signal.vantage is not None:
            if signal.type not in PROBE_TYPES:
                yield (
                    (*base, "vantage"),
                    f"a {signal.type} signal is its own vantage point; remove `vantage`",
                )
            for j, v in enumerate(signal.vantage):
                if v not in policy.vantage_points and damage.intact(("vantage_points",)):
                    yield (
                        (*base, "vantage", j),
                        f"unknown vantage point {v!r}; expected one of vantage_points:"
                        f" {', '.join(policy.vantage_points)}",
                    )
        if isinstance(signal, CloudWatchAlarmSignal):
            for region in signal.alarms:
                if region not in regions and damage.intact(("regions",)):
                    yield (
                        (*base, "alarms", region),
                        f"region {region!r} is not one of the policy's regions",
                    )
            continue
        if signal.type not in PROBE_TYPES:
            continue
        targets: dict[str, str] = getattr(signal, "targets", None) or {}
        template: str | None = getattr(signal, "target", None)
        for region in targets:
            if region not in regions and damage.intact(("regions",)):
                yield (
                    (*base, "targets", region),
                    f"region {region!r} is not one of the policy's regions",
                )
        if not damage.intact(base):
            pass  # a target taken out would show up as missing
        elif template is None:
            missing = [r for r in policy.regions if r not in targets]
            if missing:
                where = (*base, "targets") if targets else base
                yield (
                    where,
                    f"no target for region(s) {', '.join(missing)}; expected a `targets`"
                    " entry for every region, or a `target` template with {region}",
                )
        elif "{region}" not in template and len(policy.regions) > 1 and not targets:
            yield (
                (*base, "target"),
                "the same target would be probed for every region; put {region} in it"
                " or list `targets` per region",
            )
        if template is not None:
            problem = _placeholder_problem(template, ("region",))
            if problem:
                yield (*base, "target"), problem
        for region in policy.regions:
            target = signal.region_target(region)
            problem = _target_problem(signal.type, target)
            if problem:
                path = (*base, "targets", region) if region in targets else (*base, "target")
                yield path, problem


def _target_problem(kind: str, target: str) -> str | None:
    if not target:
        return None
    if kind == "http" and not re.match(r"^https?://[^/\s]+", target):
        return f"expected an http:// or https:// URL, got {target!r}"
    if kind in ("tcp", "tls"):
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"expected host:port, got {target!r}"
    if kind == "dns" and (" " in target or not target):
        return f"expected a DNS name, got {target!r}"
    return None


def _detection(policy: Policy, damage: Damage) -> Iterator[Problem]:
    d = policy.detection
    whole = damage.intact(("detection",))
    if whole and d.timeout > d.interval:
        yield (
            ("detection", "timeout"),
            f"timeout {format_duration(d.timeout)} is longer than the interval"
            f" {format_duration(d.interval)}; probes would overlap",
        )
    if whole and d.staleness <= d.interval:
        yield (
            ("detection", "staleness"),
            f"staleness {format_duration(d.staleness)} must be longer than the interval"
            f" {format_duration(d.interval)}, or every view would turn unknown between probes",
        )
    if whole and d.failure_ratio is not None and d.window < d.interval * d.min_samples:
        yield (
            ("detection", "window"),
            f"window {format_duration(d.window)} holds fewer than min_samples={d.min_samples}"
            f" observations at interval {format_duration(d.interval)}",
        )
    for i, signal in enumerate(policy.signals):
        if not damage.intact(("detection", "interval"), ("signals", i, "timeout")):
            continue
        if signal.timeout is not None and signal.timeout > d.interval:
            yield (
                ("signals", i, "timeout"),
                f"timeout {format_duration(signal.timeout)} is longer than the interval"
                f" {format_duration(d.interval)}",
            )
    if not damage.intact(("detection", "quorum"), ("vantage_points",)):
        return
    if not damage.intact(("signals",)):
        # A signal taken out would lower the exact count; the most there could be is not.
        most = len(set(policy.vantage_points)) + len(RESERVED_VANTAGES)
        if d.quorum > most:
            yield (
                ("detection", "quorum"),
                f"quorum {d.quorum} is larger than the {most} vantage points this policy could"
                " ever have (vantage_points, aws_health and cloudwatch)",
            )
        return
    for region in policy.regions:
        vantages = region_vantages(policy, region)
        if d.quorum > len(vantages):
            yield (
                ("detection", "quorum"),
                f"quorum {d.quorum} is larger than the {len(vantages)} vantage point(s) that"
                f" observe {region} ({', '.join(sorted(vantages)) or 'none'}); it could never"
                " be declared down or healthy",
            )
            break


def _objectives(policy: Policy, damage: Damage) -> Iterator[Problem]:
    d = policy.detection
    rto_ok = damage.intact(("rto",))
    if rto_ok and policy.rto <= 0:
        yield ("rto",), "the RTO must be greater than 0s"
    detect = d.consecutive_failures * d.interval
    if rto_ok and damage.intact(("detection",)) and policy.rto > 0 and detect >= policy.rto:
        yield (
            ("rto",),
            f"detection alone takes {format_duration(detect)} (consecutive_failures x interval),"
            f" which leaves nothing of the RTO {format_duration(policy.rto)}",
        )
    if damage.intact(("rpo",)) and policy.rpo < 0:
        yield ("rpo",), "the RPO cannot be negative"
    g = policy.guards
    if not damage.intact(("guards",)):
        return
    if g.failback.mode == "automatic" and g.failback.stable_period <= 0:
        yield (("guards", "failback", "stable_period"), "must be greater than 0s")
    if g.max_failovers.window <= 0:
        yield (("guards", "max_failovers", "window"), "must be greater than 0s")


def _replication(policy: Policy, damage: Damage) -> Iterator[Problem]:
    if policy.replication is None:
        return
    for region in policy.replication.sources:
        if region not in policy.regions and damage.intact(("regions",)):
            yield (
                ("replication", "sources", region),
                f"region {region!r} is not one of the policy's regions",
            )
    max_age = policy.replication.max_age
    fresh_checked = damage.intact(("replication", "max_age"), ("replication", "sources"))
    for region, source in policy.replication.sources.items() if fresh_checked else ():
        # CloudWatch stamps a datapoint with the start of its period and it arrives `delay`
        # after the period ends: the newest reading is between one and two periods plus the
        # delay old when it is read. A max_age under that reads "unknown" much of the time.
        fresh = 2 * source.period + source.delay
        if max_age < fresh:
            fd = format_duration
            yield (
                ("replication", "max_age"),
                f"max_age {fd(max_age)} is shorter than the age of a fresh reading of the"
                f" {region} lag metric: up to 2 x period {fd(source.period)} + delay"
                f" {fd(source.delay)} = {fd(fresh)} (a datapoint is stamped at the start of"
                f" its period and arrives late), so the lag would read unknown much of the"
                f" time; use at least {fd(fresh + policy.replication.interval)} (with the"
                f" interval {fd(policy.replication.interval)})",
            )
            break
    standbys = dict.fromkeys(r for r in policy.regions[1:] if r != policy.primary)
    missing = [r for r in standbys if r not in policy.replication.sources]
    if missing and damage.intact(("replication",)):
        yield (
            ("replication", "sources"),
            f"no lag source for standby region(s) {', '.join(missing)}; the RPO could not be"
            " checked before failing over there",
        )


def _partition(policy: Policy, damage: Damage) -> Iterator[Problem]:
    """One AWS partition for the whole policy: its regions, and every role it assumes (a
    failover cannot cross from aws to aws-cn: credentials, ARNs and Route 53 all differ)."""
    from orchestrator.partitions import common_partition

    if not damage.intact(("regions",)):
        return
    try:
        found = common_partition(policy.regions)
    except ValueError as exc:
        yield ("regions",), str(exc)
        return
    partition = found.name
    if not found.health_regions:
        for i, signal in enumerate(policy.signals):
            if isinstance(signal, AwsHealthSignal) and damage.intact(("signals", i)):
                yield (
                    ("signals", i, "type"),
                    f"the AWS Health API has no endpoint in partition {partition} (the"
                    " policy's regions): an aws_health signal there could never answer",
                )
    roles: list[tuple[tuple[str | int, ...], Any]] = [(("aws",), policy.aws)]
    roles += [
        (("signals", i, "aws"), getattr(s, "aws", None)) for i, s in enumerate(policy.signals)
    ]
    if policy.replication is not None:
        roles.append((("replication", "aws"), policy.replication.aws))
    for book in ("failover", "failback", "switchover"):
        steps = getattr(policy.runbooks, book) or []
        roles += [(("runbooks", book, i, "aws"), step.aws) for i, step in enumerate(steps)]
    for path, role in roles:
        if role is not None and role.partition != partition and damage.intact(path):
            yield (
                (*path, "role_arn"),
                f"role {role.role_arn} is in partition {role.partition}, the policy's regions"
                f" in {partition}",
            )


def _runbooks(policy: Policy, damage: Damage) -> Iterator[Problem]:
    books: list[tuple[str, list[Step] | None]] = [
        ("failover", policy.runbooks.failover),
        ("failback", policy.runbooks.failback),
        ("switchover", policy.runbooks.switchover),
    ]
    for book, steps in books:
        base: Path = ("runbooks", book)
        if steps is not None and not damage.replaced(base):
            # Steps taken out still count as named: an `after` naming one is not wrong.
            written = damage.step_names.get(book, frozenset())
            yield from _runbook(base, steps, tuple(policy.regions), written)


def _runbook(
    base: tuple[str | int, ...],
    steps: list[Step],
    regions: tuple[str, ...],
    written: frozenset[str] = frozenset(),
) -> Iterator[Problem]:
    names = [s.name for s in steps]
    for i, name in _duplicates(names):
        yield (*base, i, "name"), f"step name {name!r} is used twice"
    known = set(names) | written
    for i, step in enumerate(steps):
        for j, dep in enumerate(step.after):
            if dep == step.name:
                yield (*base, i, "after", j), "a step cannot wait for itself"
            elif dep not in known:
                yield (
                    (*base, i, "after", j),
                    f"no step named {dep!r} in this runbook; expected one of: {', '.join(names)}",
                )
        yield from _params((*base, i), step, regions)
    cycle = _find_cycle(steps)
    if cycle:
        index = names.index(cycle[0])
        yield (
            (*base, index, "after"),
            f"steps wait for each other in a cycle: {' -> '.join([*cycle, cycle[0]])}",
        )


def _params(base: tuple[str | int, ...], step: Step, regions: tuple[str, ...]) -> Iterator[Problem]:
    model = ACTION_PARAMS.get(step.action)
    if model is None:
        return  # already reported by the field validator
    try:
        model.model_validate(step.params, context={FROM_FILE: True, POLICY_REGIONS: regions})
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden" and loc == ("region",):
                msg = f"{step.action} takes no region: {model.no_region}"
            elif err["type"] == "extra_forbidden":
                msg = (
                    f"unknown parameter {loc[-1]!r} for {step.action}; expected one of:"
                    f" {', '.join(model.model_fields)}"
                )
            elif err["type"] == "missing":
                msg = f"missing required parameter for {step.action}"
            yield (*base, "params", *loc), msg
    for key, value in step.params.items():
        for text in _strings(value):
            problem = _placeholder_problem(text, PLACEHOLDERS)
            if problem:
                yield (*base, "params", key), problem


def _placeholder_problem(text: str, allowed: tuple[str, ...]) -> str | None:
    """What is wrong with the ``{placeholders}`` in ``text``: an unknown name, or a brace
    without its partner (``{target_region`` would be sent as written)."""
    expected = ", ".join("{" + p + "}" for p in allowed)
    for name in _PLACEHOLDER.findall(text):
        if name not in allowed:
            shown = name if len(name) <= 40 else name[:37] + "..."
            return f"unknown placeholder {{{shown}}}; expected one of: {expected}"
    rest = _PLACEHOLDER.sub("", text)
    if "{" in rest or "}" in rest:
        brace = "{" if "{" in rest else "}"
        return (
            f"a {brace} without its partner in {short(text)}; placeholders are written whole:"
            f" {expected}"
        )
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _find_cycle(steps: list[Step]) -> list[str] | None:
    graph = {s.name: [d for d in s.after if d != s.name] for s in steps}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for name in graph:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return None

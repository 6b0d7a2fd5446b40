"""The static-stability check: failover steps that need a control plane likely to be down.

DESIGN principle 5. The outages failoverd exists for are the ones where AWS's control planes
fail with the region: the region being left, and us-east-1, home of the global control
planes (Route 53's API — record and health-check edits, inverting a health check included —
IAM, STS's global endpoint, CloudFront, Organizations), as in the us-east-1 events of
December 2021 and October 2025. A failover that needs one of them may not happen when it is
needed most.

Every action declares the AWS APIs a step calls (:meth:`Action.dependencies`, from the
step's parameters rendered for the move); this module holds them against each failover move
of a policy (primary -> each standby) and reports each step that needs:

* a **global control plane** (its home region: us-east-1 in the ``aws`` partition), or
* **the region being left** (its control plane, or a data plane only that region serves,
  such as an SNS topic there).

``failoverd validate`` prints them as warnings and ``failoverd readiness`` marks the steps.
A policy with ``guards.data_plane_only: true`` turns each into an error unless the step has
``on_failure: continue`` (the failover goes on without it); the daemon refuses such a policy
set like any other invalid one. ARC routing controls (``arc.set_routing_controls``) are the
data-plane flip: five regional endpoints, none of them needed in particular.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from orchestrator.actions.base import ApiDependency
from orchestrator.actions.registry import get_action
from orchestrator.actions.render import render_params
from orchestrator.policy.loader import PolicySet
from orchestrator.policy.models import OnFailure, Policy
from orchestrator.policy.yamlsource import SourceError, SourceErrors, load_yaml_file

SERVICE_NAMES = {
    "route53": "Route 53's API",
    "iam": "IAM",
    "sts-global": "STS's global endpoint",
    "cloudfront": "CloudFront's API",
    "organizations": "Organizations",
}
DATA_PLANE_FLIP = (
    "move traffic with arc.set_routing_controls instead: routing-control health checks behind"
    " pre-provisioned failover records need no control plane"
)


@dataclass(frozen=True)
class Finding:
    """One failover step that needs a plane that may be down when it runs."""

    service: str
    step: str
    index: int  # in runbooks.failover
    action: str
    moves: tuple[tuple[str, str], ...]  # (region left, target) of the moves it needs it in
    dependency: ApiDependency  # the first move's
    kind: str  # "global_control_plane" or "region_left"
    on_failure: OnFailure
    error: bool  # guards.data_plane_only and the step would abort the run

    @property
    def path(self) -> tuple[str | int, ...]:
        return ("runbooks", "failover", self.index)

    @property
    def message(self) -> str:
        dep = self.dependency
        if self.kind == "global_control_plane":
            what = SERVICE_NAMES.get(dep.service, dep.service)
            text = (
                f"step {self.step!r} ({self.action}) needs {what} ({dep.operation}), a global"
                f" control plane served from {dep.region}: it fails when {dep.region}'s"
                " control planes do"
            )
            advice = DATA_PLANE_FLIP if dep.service == "route53" else "keep it out of failovers"
        else:
            plane = "control plane" if dep.plane == "control" else "data plane"
            text = (
                f"step {self.step!r} ({self.action}) needs the {dep.service} {plane}"
                f" ({dep.operation}) of the region being left"
            )
            advice = (
                "it can fail while that region is down"
                if dep.plane == "control"
                else "use one served by another region"
            )
        if self.error:
            return (
                f"{text}; guards.data_plane_only forbids it unless the step has"
                f" on_failure: continue ({advice})"
            )
        if self.on_failure == OnFailure.CONTINUE:
            return f"{text} (on_failure: continue: the failover goes on without it)"
        return f"{text}; {advice}"


def classify(dependency: ApiDependency, source: str) -> str | None:
    """Why ``dependency`` is a risk when leaving ``source`` (None: it is not)."""
    if dependency.global_control_plane:
        return "global_control_plane"
    if dependency.region is not None and dependency.region == source:
        return "region_left"
    return None


def step_findings(policy: Policy) -> list[Finding]:
    """Every failover step of ``policy`` that needs a global control plane or the region
    being left, once per step and kind of dependency, over every move the failover runbook
    makes: from each region (the primary, or a standby that took over) to each standby (a
    move to the primary runs the failback runbook). Steps whose parameters do not render are
    skipped (validation reports them)."""
    found: dict[tuple[int, str, str, str, str], list[tuple[ApiDependency, str, str]]] = {}
    steps = policy.runbooks.failover
    for source in policy.regions:
        for target in policy.regions[1:]:
            if source == target:
                continue
            for index, step in enumerate(steps):
                try:
                    params = render_params(
                        step,
                        service=policy.service,
                        source_region=source,
                        target_region=target,
                        primary_region=policy.primary,
                        regions=policy.regions,
                    )
                except (ValidationError, ValueError):
                    continue
                action = get_action(step.action)
                for dep in action.dependencies(params, source_region=source, target_region=target):
                    kind = classify(dep, source)
                    if kind is not None:
                        key = (index, kind, dep.service, dep.operation, dep.plane)
                        found.setdefault(key, []).append((dep, source, target))
    strict = policy.guards.data_plane_only
    out: list[Finding] = []
    for (index, kind, *_), seen in found.items():
        step = steps[index]
        out.append(
            Finding(
                service=policy.service,
                step=step.name,
                index=index,
                action=step.action,
                moves=tuple((source, target) for _, source, target in seen),
                dependency=seen[0][0],
                kind=kind,
                on_failure=step.on_failure,
                error=strict and step.on_failure != OnFailure.CONTINUE,
            )
        )
    return sorted(out, key=lambda f: (f.index, f.kind, f.dependency.service))


def findings_for_move(policy: Policy, source: str, target: str) -> dict[str, list[Finding]]:
    """Step name -> the findings of a failover from ``source`` to ``target``."""
    out: dict[str, list[Finding]] = {}
    for finding in step_findings(policy):
        if (source, target) in finding.moves:
            out.setdefault(finding.step, []).append(finding)
    return out


def located(policies: PolicySet) -> tuple[list[SourceError], list[SourceError]]:
    """(errors, warnings) of every policy in the set, located at the step in its file."""
    errors: list[SourceError] = []
    warnings: list[SourceError] = []
    for policy in policies:
        findings = step_findings(policy)
        if not findings:
            continue
        file = policies.files.get(policy.service)
        loaded = load_yaml_file(file) if file and Path(file).exists() else None
        for finding in findings:
            if loaded is not None:
                error = loaded.error(finding.path, finding.message)
            else:
                path = ".".join(str(p) for p in finding.path)
                error = SourceError(file or policy.service, 0, 0, path, finding.message)
            (errors if finding.error else warnings).append(error)
    return errors, warnings


def enforce(policies: PolicySet) -> None:
    """Raise :class:`SourceErrors` when a policy with ``guards.data_plane_only`` has a
    failover step that needs a control plane likely to be down (and would abort the run)."""
    errors, _ = located(policies)
    if errors:
        raise SourceErrors(errors)

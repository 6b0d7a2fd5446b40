"""The least-privilege IAM policy for what the configured policies make failoverd do.

Signals read (AWS Health, CloudWatch alarms and metrics); actions write (each action states
its own permissions, with resource ARNs where AWS supports them). The document covers every
move a policy could make: each step's parameters rendered for the move, in the region the step
acts in (the move's target, or the step's own ``region``, e.g. ``{source_region}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from orchestrator.actions.base import IamStatement
from orchestrator.actions.registry import get_action
from orchestrator.actions.render import render_params
from orchestrator.policy.models import AwsHealthSignal, CloudWatchAlarmSignal, Policy
from orchestrator.readiness import moves


def signal_statements(policy: Policy) -> list[IamStatement]:
    out: list[IamStatement] = []
    if any(isinstance(s, AwsHealthSignal) for s in policy.signals):
        # AWS Health supports no resource-level permissions.
        out.append(
            IamStatement(
                (
                    "health:DescribeEvents",
                    "health:DescribeEventDetails",
                    "health:DescribeAffectedEntities",
                )
            )
        )
    if any(isinstance(s, CloudWatchAlarmSignal) for s in policy.signals):
        arns = sorted(
            f"arn:aws:cloudwatch:{region}:*:alarm:{name}"
            for s in policy.signals
            if isinstance(s, CloudWatchAlarmSignal)
            for region, names in s.alarms.items()
            for name in names
        )
        out.append(IamStatement(("cloudwatch:DescribeAlarms",), tuple(arns)))
    if policy.replication is not None:
        # GetMetricData and ListMetrics (readiness confirms the metric exists) have no
        # resource-level permissions.
        out.append(IamStatement(("cloudwatch:GetMetricData", "cloudwatch:ListMetrics")))
    return out


def action_statements(policy: Policy) -> list[IamStatement]:
    out: list[IamStatement] = []
    for move, steps in moves(policy):
        for step in steps:
            params = render_params(
                step,
                service=policy.service,
                source_region=move.source,
                target_region=move.target,
                primary_region=policy.primary,
                regions=policy.regions,
            )
            # The move's target, or the region the step names for itself (iam_regions).
            out.extend(get_action(step.action).iam_statements(params, [move.target]))
    return out


def iam_policy(policies: Iterable[Policy]) -> dict[str, Any]:
    """One IAM policy document. Statements granting the same actions are merged (their
    resources united; ``*`` absorbs the rest), and everything is sorted, so the output is
    stable and diffable."""
    by_actions: dict[tuple[str, ...], set[str]] = {}
    # Conditions of statements granting the same actions are united value by value: the KMS
    # grants of SNS topics in several regions become one statement allowing each region's
    # SNS (kms:ViaService), each still usable through SNS only.
    conditions: dict[tuple[str, ...], dict[tuple[str, str], set[str]]] = {}
    for policy in policies:
        for st in (*signal_statements(policy), *action_statements(policy)):
            key = tuple(sorted(set(st.actions)))
            by_actions.setdefault(key, set()).update(st.resources)
            for operator, name, values in st.conditions:
                conditions.setdefault(key, {}).setdefault((operator, name), set()).update(values)
    statements = []
    for i, (actions, resources) in enumerate(sorted(by_actions.items())):
        listed = ["*"] if "*" in resources else sorted(resources)
        statement: dict[str, Any] = {
            "Sid": f"Failoverd{i + 1}",
            "Effect": "Allow",
            "Action": list(actions),
            "Resource": listed if len(listed) > 1 else listed[0],
        }
        if actions in conditions:
            block: dict[str, dict[str, Any]] = {}
            for (operator, name), allowed in sorted(conditions[actions].items()):
                ordered = sorted(allowed)
                block.setdefault(operator, {})[name] = ordered[0] if len(ordered) == 1 else ordered
            statement["Condition"] = block
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}


def iam_policy_text(policies: Iterable[Policy]) -> str:
    return json.dumps(iam_policy(policies), indent=2) + "\n"

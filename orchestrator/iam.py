"""The least-privilege IAM policy for what the configured policies make failoverd do.

Signals read (AWS Health, CloudWatch alarms and metrics); actions write (each action states
its own permissions, with resource ARNs where AWS supports them). The document covers every
move a policy could make: each step's parameters rendered for the move, in the region the step
acts in (the move's target, or the step's own ``region``, e.g. ``{source_region}``).

Cross-account. When policies, steps or signals name an IAM role to act as (``aws.role_arn``),
the permissions split in two halves:

* the **tooling identity** (what failoverd runs as, from the standard credential chain) gets
  ``sts:AssumeRole`` on exactly those roles, plus whatever is still done as itself;
* **each role** gets the statements of the steps and signals that act as it — the policy to
  attach to that role in its workload account — and, when the tooling principal is given
  (``--principal``), the trust policy that lets it assume the role (with the external id
  the policy names as an ``sts:ExternalId`` condition).

Without any role the output is the single policy document for the tooling identity, as
before.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.actions.base import IamStatement
from orchestrator.actions.registry import get_action
from orchestrator.actions.render import render_params
from orchestrator.partitions import common_partition
from orchestrator.policy.access import AwsRole
from orchestrator.policy.models import AwsHealthSignal, CloudWatchAlarmSignal, Policy
from orchestrator.readiness import moves

Grant = tuple[AwsRole | None, IamStatement]  # who needs it (None: the tooling identity), what


def signal_grants(policy: Policy) -> list[Grant]:
    out: list[Grant] = []
    partition = common_partition(policy.regions)
    for s in policy.signals:
        if isinstance(s, AwsHealthSignal):
            # AWS Health supports no resource-level permissions.
            actions = (
                "health:DescribeEvents",
                "health:DescribeEventDetails",
                "health:DescribeAffectedEntities",
            )
            out.append((policy.role(s.aws), IamStatement(actions)))
        elif isinstance(s, CloudWatchAlarmSignal):
            arns = sorted(
                partition.arn("cloudwatch", region, "*", f"alarm:{name}")
                for region, names in s.alarms.items()
                for name in names
            )
            if arns:
                statement = IamStatement(("cloudwatch:DescribeAlarms",), tuple(arns))
                out.append((policy.role(s.aws), statement))
    if policy.replication is not None:
        # GetMetricData and ListMetrics (readiness confirms the metric exists) have no
        # resource-level permissions.
        statement = IamStatement(("cloudwatch:GetMetricData", "cloudwatch:ListMetrics"))
        out.append((policy.role(policy.replication.aws), statement))
    return out


def action_grants(policy: Policy) -> list[Grant]:
    out: list[Grant] = []
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
            role = policy.role(step.aws)
            for statement in get_action(step.action).iam_statements(params, [move.target]):
                out.append((role, statement))
    return out


def signal_statements(policy: Policy) -> list[IamStatement]:
    return [statement for _, statement in signal_grants(policy)]


def action_statements(policy: Policy) -> list[IamStatement]:
    return [statement for _, statement in action_grants(policy)]


def policy_document(statements: Iterable[IamStatement]) -> dict[str, Any]:
    """One IAM policy document. Statements granting the same actions are merged (their
    resources united; ``*`` absorbs the rest; their conditions united value by value: the KMS
    grants of SNS topics in several regions become one statement allowing each region's SNS
    through ``kms:ViaService``), and everything is sorted, so the output is stable and
    diffable."""
    by_actions: dict[tuple[str, ...], set[str]] = {}
    conditions: dict[tuple[str, ...], dict[tuple[str, str], set[str]]] = {}
    for st in statements:
        key = tuple(sorted(set(st.actions)))
        by_actions.setdefault(key, set()).update(st.resources)
        for operator, name, values in st.conditions:
            conditions.setdefault(key, {}).setdefault((operator, name), set()).update(values)
    out = []
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
        out.append(statement)
    return {"Version": "2012-10-17", "Statement": out}


def _grants(policies: Iterable[Policy]) -> list[Grant]:
    out: list[Grant] = []
    for policy in policies:
        out.extend(signal_grants(policy))
        out.extend(action_grants(policy))
    return out


def iam_policy(policies: Iterable[Policy]) -> dict[str, Any]:
    """The tooling identity's policy document: what it does itself, and ``sts:AssumeRole``
    on exactly the roles the policies name (see :func:`iam_policies` for the roles' own)."""
    grants = _grants(policies)
    own = [statement for role, statement in grants if role is None]
    roles = sorted({role.role_arn for role, _ in grants if role is not None})
    if roles:
        own.append(IamStatement(("sts:AssumeRole",), tuple(roles)))
    return policy_document(own)


def trust_policy(principal: str, external_ids: Sequence[str]) -> dict[str, Any]:
    """What a role's trust policy needs so that ``principal`` (the tooling identity's ARN)
    may assume it, with the external ids the policies give as a condition."""
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": "sts:AssumeRole",
    }
    if external_ids:
        ids = sorted(set(external_ids))
        statement["Condition"] = {
            "StringEquals": {"sts:ExternalId": ids[0] if len(ids) == 1 else ids}
        }
    return {"Version": "2012-10-17", "Statement": [statement]}


def iam_policies(policies: Iterable[Policy], principal: str | None = None) -> dict[str, Any]:
    """Both halves: ``tooling_identity`` (the document for failoverd's own identity) and
    ``roles`` (per role ARN: its ``policy`` to attach in the workload account, and with
    ``principal`` its ``trust_policy``)."""
    policies = list(policies)
    grants = _grants(policies)
    by_role: dict[str, list[IamStatement]] = {}
    external: dict[str, list[str]] = {}
    for role, statement in grants:
        if role is None:
            continue
        by_role.setdefault(role.role_arn, []).append(statement)
        if role.external_id:
            external.setdefault(role.role_arn, []).append(role.external_id)
    roles: dict[str, Any] = {}
    for arn, statements in sorted(by_role.items()):
        entry: dict[str, Any] = {"policy": policy_document(statements)}
        if principal:
            entry["trust_policy"] = trust_policy(principal, external.get(arn, []))
        roles[arn] = entry
    return {"tooling_identity": iam_policy(policies), "roles": roles}


def iam_policy_text(policies: Iterable[Policy], principal: str | None = None) -> str:
    """The ``failoverd iam-policy`` output: the single document when no role is named, else
    both halves (:func:`iam_policies`)."""
    policies = list(policies)
    both = iam_policies(policies, principal)
    doc: dict[str, Any] = both if both["roles"] else both["tooling_identity"]
    return json.dumps(doc, indent=2) + "\n"

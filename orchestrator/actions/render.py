"""Filling a step's parameters in: for one run (every placeholder, then the action's model),
and for the IAM policy (names as they read in each region, the rest widened)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from orchestrator.policy.actions import ACTION_PARAMS, Regional
from orchestrator.policy.durations import FROM_FILE
from orchestrator.policy.models import Step
from orchestrator.policy.regions import POLICY_REGIONS

_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


def fill(value: Any, values: Mapping[str, str]) -> Any:
    """Replace ``{target_region}`` and friends in every string of ``value``, mapping keys
    included (``arc.set_routing_controls`` names routing controls by ``{target_region}``).
    Only the known placeholders are replaced (validation already rejected unknown ones)."""
    if isinstance(value, str):
        for key, replacement in values.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, dict):
        return {fill(k, values): fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    return value


def render_params(
    step: Step,
    *,
    service: str,
    source_region: str,
    target_region: str,
    primary_region: str,
    regions: Collection[str] | None = None,
) -> BaseModel:
    """The step's parameters for one run. With ``regions`` (the policy's), a step's
    ``region`` must render to one of them; without, to a well-formed region name.
    ValidationError (a ValueError) when they do not fit the action's model."""
    values = {
        "service": service,
        "source_region": source_region,
        "target_region": target_region,
        "primary_region": primary_region,
    }
    context: dict[str, Any] = {FROM_FILE: True}
    if regions is not None:
        context[POLICY_REGIONS] = tuple(regions)
    model = ACTION_PARAMS[step.action]
    return model.model_validate(fill(step.params, values), context=context)


def _own_region(params: BaseModel) -> str | None:
    """The step's ``region`` when it names one other than the run's target region."""
    region = params.region if isinstance(params, Regional) else None
    return None if region in (None, "{target_region}") else region


def iam_regions(params: BaseModel, regions: Sequence[str]) -> list[str]:
    """The regions a step's IAM statements cover: ``regions`` (the targets it may run
    against) unless the step names its own ``region``; a placeholder for a region not known
    before a run (``{source_region}``) widens to ``*``."""
    own = _own_region(params)
    if own is None:
        return list(regions)
    return ["*"] if _PLACEHOLDER.search(own) else [own]


def fill_for_iam(template: str, region: str, params: BaseModel) -> str:
    """A name or ARN from a step's parameters (``params``) as it reads for an IAM resource
    in ``region``, one of :func:`iam_regions`: ``{target_region}`` is ``region`` when the
    step acts in the target region; placeholders not known before a run widen to ``*``."""
    known = {"target_region": region} if _own_region(params) is None else {}
    return _PLACEHOLDER.sub("*", fill(template, known))

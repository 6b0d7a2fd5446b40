"""Filling a step's parameters in for one run: placeholders, then the action's model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from orchestrator.policy.actions import ACTION_PARAMS
from orchestrator.policy.durations import FROM_FILE
from orchestrator.policy.models import Step


def fill(value: Any, values: Mapping[str, str]) -> Any:
    """Replace ``{target_region}`` and friends in every string of ``value``. Only the known
    placeholders are replaced (validation already rejected unknown ones)."""
    if isinstance(value, str):
        for key, replacement in values.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    return value


def render_params(
    step: Step, *, service: str, source_region: str, target_region: str, primary_region: str
) -> BaseModel:
    values = {
        "service": service,
        "source_region": source_region,
        "target_region": target_region,
        "primary_region": primary_region,
    }
    model = ACTION_PARAMS[step.action]
    return model.model_validate(fill(step.params, values), context={FROM_FILE: True})

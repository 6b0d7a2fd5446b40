"""AWS region names as policies write them, and the ``region`` a step may act in.

A step of a regional action (an Auto Scaling group, an ECS service) acts in the run's target
region unless its ``region`` parameter names another: one of the policy's own regions, or a
placeholder for a region of the run. Anything else is refused when the policy loads, so a
typo never sends a runbook to a region the policy does not know.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$"
_REGION = re.compile(REGION_PATTERN)
# The run's regions; only these placeholders may stand for a step's whole `region`.
REGION_PLACEHOLDERS = ("{target_region}", "{source_region}", "{primary_region}")
# Key of the validation context holding the policy's regions (set when a policy loads, and
# when readiness or iam-policy render a step). Without it (a run renders its steps from a
# policy that was checked when it loaded) only the shape of a region name is checked.
POLICY_REGIONS = "policy_regions"


def _step_region(value: str, info: ValidationInfo) -> str:
    if value in REGION_PLACEHOLDERS:
        return value  # filled in when a run starts: always one of the policy's regions
    regions: Collection[str] | None = (info.context or {}).get(POLICY_REGIONS)
    if regions is not None:
        if value not in regions:
            raise ValueError(
                f"region {value!r} is not one of the policy's regions; expected one of:"
                f" {', '.join([*regions, *REGION_PLACEHOLDERS])}"
            )
    elif not _REGION.match(value):
        raise ValueError(
            f"{value!r} is not an AWS region name; expected a region such as eu-west-1,"
            f" or one of: {', '.join(REGION_PLACEHOLDERS)}"
        )
    return value


StepRegion = Annotated[str, AfterValidator(_step_region)]

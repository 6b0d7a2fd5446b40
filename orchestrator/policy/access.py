"""Which AWS identity a policy, a step or a signal acts as: the ``aws`` section.

failoverd usually runs in a tooling account and acts on workload accounts: a policy names the
IAM role to assume there (``aws: {role_arn: ..., external_id: ...}``), and a step or a
signal may name another one (a shared DNS account for the Route 53 step, say). Without any,
calls are made as the daemon's own identity (the standard credential chain).

The limits are STS's (botocore's ``sts`` service model, ``AssumeRole``): the session name is
2-64 characters of ``[\\w+=,.@-]``, the external id 2-1224 characters of ``[\\w+=,.@:/-]``,
and a session lasts 900 seconds to 12 hours (the role's own maximum may be lower; a chained
role's is one hour).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.policy.durations import Duration

ROLE_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]{1,512}$"
MIN_SESSION, MAX_SESSION = 900.0, 43200.0  # AssumeRole DurationSeconds bounds


class AwsRole(BaseModel):
    """An IAM role to assume (through the regional STS endpoint of the region acted in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role_arn: str = Field(
        pattern=ROLE_ARN_PATTERN,
        description="The role to act as, e.g. arn:aws:iam::111122223333:role/failoverd.",
    )
    external_id: str | None = Field(
        default=None,
        min_length=2,
        max_length=1224,
        pattern=r"^[A-Za-z0-9_+=,.@:/-]*$",
        description="The external id the role's trust policy requires (sts:ExternalId).",
    )
    session_name: str = Field(
        default="failoverd",
        min_length=2,
        max_length=64,
        pattern=r"^[A-Za-z0-9_+=,.@-]*$",
        description="The role session name (shows in CloudTrail).",
    )
    duration: Duration = Field(
        default=3600.0,
        ge=MIN_SESSION,
        le=MAX_SESSION,
        description="How long each set of session credentials lasts (15m to 12h; refreshed"
        " before it ends).",
    )

    @property
    def partition(self) -> str:
        """``aws``, ``aws-cn``... (the second field of the ARN)."""
        return self.role_arn.split(":")[1]

    @property
    def account(self) -> str:
        return self.role_arn.split(":")[4]

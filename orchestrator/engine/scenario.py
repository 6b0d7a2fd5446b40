"""Scenario files (policy tests): the models behind SCENARIOS.md, a contract.

Keys here may be added, never renamed or dropped. Extensions made by failoverd: ``tick``
(engine tick, default 1s), ``description``, ``force`` (and ``by``, ``reason``) on operator
commands, ``start`` (the service's state when the scenario begins: a recorded incident
rarely begins on the primary with an empty history), and several facts in one timeline
entry (applied in the order of the table in SCENARIOS.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.engine.vocabulary import Phase, Reason
from orchestrator.policy.durations import Duration
from orchestrator.policy.models import Region


class _S(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Flap(_S):
    flap: Duration = Field(gt=0, description="Down for this long, then up as long, and so on.")


ProbeState = Literal["up", "down", "slow", "unknown"] | Flap


class ProbesFact(_S):
    region: Region
    state: ProbeState
    signal: str | None = None
    vantage: str | None = None

    @field_validator("state", mode="before")
    @classmethod
    def _known_state(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("up", "down", "slow", "unknown"):
            raise ValueError(f"expected up, down, slow, unknown or {{flap: 20s}}, got {value!r}")
        return value


class AwsHealthFact(_S):
    region: Region
    service: str
    status: Literal["open", "closed"]


class AlarmFact(_S):
    name: str
    state: Literal["OK", "ALARM", "INSUFFICIENT_DATA"]


class LagFact(_S):
    region: Region
    seconds: float | None = Field(ge=0, description="Measured lag; null means unknown.")
    frozen: bool = Field(
        default=False,
        description="The source stops updating: the reading keeps this fact's time and ages"
        " (a dead primary freezes the metric). failoverd extension.",
    )
    age: Duration = Field(
        default=0.0,
        ge=0,
        description="How old each reading already is when read (a metric stamped at the start"
        " of its period and delivered late); a frozen reading starts this old. failoverd"
        " extension.",
    )

    @field_validator("seconds", mode="before")
    @classmethod
    def _duration_or_number(cls, value: Any) -> Any:
        if isinstance(value, str):
            from orchestrator.policy.durations import parse_duration

            return parse_duration(value)
        return value


class OperatorFact(_S):
    command: Literal["pause", "resume", "approve", "failback", "failover", "switchover"]
    to: Region | None = None
    force: bool = False
    by: str = Field(default="scenario", description="Who (failoverd extension).")
    reason: str = Field(default="", description="Why (failoverd extension).")


class StepFact(_S):
    name: str
    outcome: Literal["fail", "hang", "succeed"] = "succeed"
    duration: Duration = 0.0


class TimelineEntry(_S):
    at: Duration
    probes: ProbesFact | None = None
    aws_health: AwsHealthFact | None = None
    aws_health_api: Literal["available", "unavailable"] | None = None
    alarm: AlarmFact | None = None
    lag: LagFact | None = None
    operator: OperatorFact | None = None
    leader: bool | None = None
    step: StepFact | None = None

    @model_validator(mode="after")
    def _one_fact_at_least(self) -> TimelineEntry:
        if not (self.model_fields_set - {"at"}):
            raise ValueError(
                "a timeline entry needs a fact besides `at`: probes, aws_health, aws_health_api,"
                " alarm, lag, operator, leader or step"
            )
        return self


Between = Annotated[list[Duration], Field(min_length=2, max_length=2)]


class FailoverExpect(_S):
    to: Region | None = None
    between: Between | None = None


class NoFailoverExpect(_S):
    before: Duration | None = None
    after: Duration | None = None


class CountExpect(_S):
    max: int | None = Field(default=None, ge=0)
    count: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> CountExpect:
        if (self.max is None) == (self.count is None):
            raise ValueError("expected exactly one of `max` or `count`")
        return self


class FailbackExpect(_S):
    between: Between | None = None


class PhaseExpect(_S):
    at: Duration
    is_: Phase = Field(alias="is")
    reason: Reason | None = None


class ActiveRegionExpect(_S):
    at: Duration
    is_: Region = Field(alias="is")


class Expectation(_S):
    failover: FailoverExpect | None = None
    no_failover: NoFailoverExpect | None = None
    failovers: CountExpect | None = None
    failback: FailbackExpect | None = None
    phase: PhaseExpect | None = None
    active_region: ActiveRegionExpect | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Expectation:
        if len(self.model_fields_set) != 1:
            raise ValueError(
                "each expectation has exactly one key: failover, no_failover, failovers,"
                " failback, phase or active_region"
            )
        return self


class EarlierMove(_S):
    """A run started before the scenario begins (the max-failovers window counts it)."""

    ago: Duration = Field(gt=0, description="How long before the scenario's start.")
    kind: Literal["failover", "switchover", "failback"]
    to: Region


class StartState(_S):
    """The service's state when the scenario begins (failoverd extension; default: the
    primary active, nothing paused, no earlier move)."""

    active_region: Region | None = Field(default=None, description="Default: the primary.")
    paused: bool = False
    last_automatic_move: Duration | None = Field(
        default=None,
        ge=0,
        description="How long before the start the last automatic run ended (the cooldown"
        " counts from it).",
    )
    moves: list[EarlierMove] = Field(default_factory=list)


class Scenario(_S):
    scenario: str = Field(min_length=1, description="The name shown in the output.")
    description: str = ""
    policy: str | dict[str, Any] = Field(
        description="Path of the policy file, relative to this file, or an inline policy."
    )
    service: str | None = None
    duration: Duration = Field(gt=0)
    tick: Duration = Field(default=1.0, gt=0, description="Engine tick (failoverd extension).")
    start: StartState | None = Field(
        default=None, description="The service's state at the start (failoverd extension)."
    )
    timeline: list[TimelineEntry] = Field(default_factory=list)
    expect: list[Expectation] = Field(min_length=1)

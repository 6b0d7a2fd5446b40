"""The contract every runbook action implements, and what it is given to work with.

An action is three idempotent coroutines over one step's parameters:

* ``check``   — read-only preconditions (also what ``failoverd readiness`` runs): is the
  target there, in the right shape, reachable? Never changes the world.
* ``execute`` — read the world first and act only if needed, so that running it twice (a
  retry, or a resume after a crash mid-step) applies the change once. Returns whether it
  changed anything.
* ``verify``  — wait until the effect is visible (e.g. Route 53 INSYNC, the replica is a
  standalone writer), polling with backoff; bounded by ``ctx.deadline``.

Errors: raise :class:`RetryableError` for throttling, 5xx, timeouts and connection errors
(the executor retries these with backoff and jitter within the step's retries), and
:class:`ActionFailed` for everything that another attempt cannot fix (wrong replica source,
missing resource, access denied). Every AWS call goes through ``ctx.aws`` (aiobotocore, with
timeouts), and every wait honours ``ctx.deadline`` on ``ctx.clock``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel

from orchestrator.clock import Clock
from orchestrator.policy.actions import Regional
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.store.base import ApprovalRecord

M = TypeVar("M", bound=BaseModel)


class ActionError(Exception):
    """An action could not do its job; ``retryable`` says whether another attempt may."""

    retryable: ClassVar[bool] = False


class RetryableError(ActionError):
    """Throttling, 5xx, timeouts, connection errors: worth another attempt."""

    retryable = True


class ActionFailed(ActionError):
    """A failure no retry can fix: a precondition does not hold, access is denied, ..."""


class Approvals(Protocol):
    """What the actions that wait for operators need from the store (see
    :mod:`orchestrator.store`): whether a run's step was approved, and by whom and why."""

    async def approved(self, service: str, run_id: str, step: str) -> bool: ...

    async def approval(self, service: str, run_id: str, step: str) -> ApprovalRecord | None: ...


ProgressSink = Callable[[Mapping[str, Any]], Awaitable[None]]


def _no_reason() -> str | None:
    return None


@dataclass(frozen=True)
class StepContext:
    """Everything one attempt of one step gets. ``params`` is the action's validated
    parameter model, with placeholders already filled in for this run."""

    service: str
    run_id: str
    step: str
    attempt: int
    kind: str  # failover, switchover or failback
    source_region: str
    target_region: str
    primary_region: str
    params: BaseModel
    aws: AwsClients
    clock: Clock
    deadline: float  # on clock.monotonic(): verify and every wait end by then
    approvals: Approvals | None = None
    # The run's facts (orchestrator.actions.moves: kind, drill, the source's verdict, the
    # target's lag), e.g. for the graceful-or-not choice of move_style().
    facts: Mapping[str, Any] = field(default_factory=dict)
    # Journals one progress note of this step (a JSON object; the keys the API and the status
    # page read are in orchestrator.runbook.journal); durable when it returns, and raises the
    # store's errors. None where nothing is journaled (readiness, drills' dry runs).
    progress: ProgressSink | None = None
    # The notes this step journaled in its earlier attempts, oldest first: a step re-entered
    # after a crash finds there what it had started (e.g. a Region switch execution's id).
    history: tuple[Mapping[str, Any], ...] = ()
    # Why the executor is cancelling this attempt *for good*, read when the action sees the
    # cancellation: the step's last attempt timed out (the run gives up on it), so whatever
    # the action left running in AWS should be stopped. None when the attempt is cut short by
    # a shutdown or a lost lease: the run resumes, and the work must go on.
    cancel_reason: Callable[[], str | None] = _no_reason
    # True when ``check`` runs for the readiness report (or a dry-run drill), not as a run's
    # precondition: an action may then hold the world to the standard a future failover
    # needs (e.g. 3 of an ARC cluster's 5 endpoints answering) instead of what this one does.
    readiness: bool = False

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock.monotonic())

    @property
    def region(self) -> str:
        """The region the step acts in: its ``region`` parameter when the action takes one
        and the step gives it (e.g. ``{source_region}`` to fence the old writers), else the
        run's target region."""
        region = self.params.region if isinstance(self.params, Regional) else None
        return region or self.target_region


def typed_params(source: StepContext | BaseModel, model: type[M]) -> M:
    """The step's parameters (``ctx.params``, or the parameters themselves) as the action's
    ``model``; ActionFailed, naming the step, when they are something else."""
    params = source.params if isinstance(source, StepContext) else source
    if not isinstance(params, model):
        where = f"step {source.step}: " if isinstance(source, StepContext) else ""
        raise ActionFailed(
            f"{where}expected {model.__name__} parameters, got {type(params).__name__}"
        )
    return params


@dataclass(frozen=True)
class CheckReport:
    """The outcome of ``check``: ready or not, and why, in words for the readiness report."""

    ready: bool
    findings: tuple[str, ...] = ()
    # The region whose control plane the step's API calls depend on (Route 53's is
    # us-east-1); the readiness report flags a step whose control plane is the region being
    # evacuated (DESIGN principle 5, static stability).
    control_plane_region: str | None = None


Plane = Literal["control", "data"]

# AWS's global services whose control plane lives in one region of each partition (us-east-1
# in the aws partition; orchestrator.partitions knows each): Route 53's API (records and
# health checks alike), IAM, STS's global endpoint, CloudFront, Organizations. DESIGN
# principle 5 keeps failovers off them.
GLOBAL_CONTROL_PLANES = frozenset({"route53", "iam", "sts-global", "cloudfront", "organizations"})


@dataclass(frozen=True)
class ApiDependency:
    """One AWS API a step calls, as the static-stability check sees it: the service, an
    operation that stands for the step's calls, the region serving it (None: no one region,
    e.g. an ARC cluster's five endpoints, any of which will do) and its plane: ``control``
    (creating, changing or describing resources: EC2, RDS, Route 53 record and health-check
    edits...) or ``data`` (a path built to keep answering while control planes fail)."""

    service: str
    operation: str
    region: str | None
    plane: Plane

    @property
    def global_control_plane(self) -> bool:
        return self.plane == "control" and self.service in GLOBAL_CONTROL_PLANES


@dataclass(frozen=True)
class ExecuteOutcome:
    changed: bool
    detail: str = ""


@dataclass(frozen=True)
class IamStatement:
    actions: tuple[str, ...]
    resources: tuple[str, ...] = ("*",)
    # An IAM Condition block, as (operator, key, values) triples, e.g.
    # (("StringEquals", "kms:ViaService", ("sns.eu-west-1.amazonaws.com",)),).
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


class Action(ABC):
    """One runbook action. Instances are stateless and shared between runs."""

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]

    @abstractmethod
    async def check(self, ctx: StepContext) -> CheckReport: ...

    @abstractmethod
    async def execute(self, ctx: StepContext) -> ExecuteOutcome: ...

    @abstractmethod
    async def verify(self, ctx: StepContext) -> None: ...

    @abstractmethod
    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        """The least-privilege permissions this step needs (resource ARNs where AWS
        supports them), for ``failoverd iam-policy``. ``regions`` are the target regions
        the step may run against; a step that names its own ``region`` acts there instead
        (see :func:`orchestrator.actions.render.iam_regions`). ``params`` may still hold
        placeholders (see :func:`orchestrator.actions.render.fill_for_iam`)."""

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        """The AWS APIs this step calls for a move from ``source_region`` to
        ``target_region`` (``params`` rendered for that move), for the static-stability
        check of ``failoverd validate`` and ``readiness``: pure, no I/O. Empty when the step
        calls no AWS API (a webhook, a wait). Every registered action overrides it (a test
        holds them to it); the default serves test doubles."""
        return ()

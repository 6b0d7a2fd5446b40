"""An ARC Region switch emulator that speaks AWS's wire protocols for it, on loopback.

moto has no ARC Region switch (``arc-region-switch``), so the sandbox and the tests run this
instead. Any AWS SDK pointed at it with ``endpoint_url`` works unchanged (boto3 and
aiobotocore are tested against it). The service model lists two protocols,
``smithy-rpc-v2-cbor`` and ``json``; which one a client speaks is the SDK's choice. botocore
(1.43, hence boto3 and aiobotocore) puts ``json`` first in its protocol priority, so it speaks
JSON 1.0; SDKs that prefer Smithy RPC v2 CBOR speak that. Both are served, on one port:

* JSON 1.0: ``POST /`` with ``X-Amz-Target: ArcRegionSwitch.<Operation>`` and
  ``Content-Type: application/x-amz-json-1.0``; timestamps as epoch seconds;
* Smithy RPC v2 CBOR: ``POST /service/ArcRegionSwitch/operation/<Operation>`` with
  ``smithy-protocol: rpc-v2-cbor`` and ``Content-Type: application/cbor`` (when there is a
  body), a CBOR map as the body; answers carry ``smithy-protocol: rpc-v2-cbor`` and
  ``Content-Type: application/cbor``, timestamps as CBOR tag 1 (epoch seconds);
* both: signed with SigV4 (the signature is not checked, but an ``Authorization`` header with
  a credential scope for ``arc-region-switch`` must be there); answers carry
  ``x-amzn-requestid``; errors are a map ``{"__type": "<namespace>#<Shape>", "message"}``
  with the shape's HTTP status: ``ResourceNotFoundException`` (404),
  ``AccessDeniedException`` (403), ``IllegalArgumentException`` / ``IllegalStateException``
  (400), ``ConflictException`` (409, a client token reused with other parameters),
  ``InternalServerException`` (500), and the framework's ``ValidationException`` /
  ``ThrottlingException`` (400), ``ServiceUnavailableException`` (503),
  ``UnknownOperationException`` (404), ``SerializationException`` (400) and
  ``MissingAuthenticationTokenException`` (403).

Regions. With one ``endpoint_url`` for every region, the region a call addresses is the one
in its SigV4 credential scope (AWS refuses a request whose scope does not match the regional
endpoint, so this is the same thing). A plan exists in each of its two regions; a call to any
other region answers ``ResourceNotFoundException``. Control-plane operations (``GetPlan``,
``ListPlans``: ``UseControlPlaneEndpoint`` in botocore's model) are served by the partition's
control-plane region, us-east-1, whatever the scope says. Executions are regional data: one
started through a region's endpoint is seen (``GetPlanExecution``, events, approvals, cancel)
only through that region — AWS's own console says to rely on the regional dashboard during an
impairment because the global one may miss data. A region taken down with
:meth:`RegionSwitchEmulator.set_region_down` drops every connection addressed to it (or to
us-east-1's control plane, when us-east-1 is down) without an answer.

Executions run the plan's workflow for the action and target region, one step after the
other, on the injected clock (state is computed from the clock at each call, so a virtual
clock drives them exactly): each step lasts its configured duration (``set_step``, default
``default_step_duration``); a ``ManualApproval`` step waits for ``ApprovePlanExecutionStep``
(``decline`` fails the execution; its ``timeoutMinutes`` fails it too); a step set to fail
ends the execution ``failed`` (or ``pausedByFailedStep`` with ``pause_on_failure``); a step
set to skip when ungraceful is ``skipped`` in an ungraceful execution. One execution per plan
may be active at a time (``IllegalStateException`` otherwise: the plan's summary has a single
``activePlanExecution``). ``clientToken`` is honoured per region: the same token with the same
parameters returns the first answer (even after the execution ended); with other parameters,
``ConflictException``.

Operations: ``StartPlanExecution``, ``GetPlanExecution`` (``stepStates`` paginated),
``ListPlanExecutions``, ``ListPlanExecutionEvents`` (paginated, ``name`` filter),
``ApprovePlanExecutionStep``, ``CancelPlanExecution``, ``GetPlanInRegion``, ``GetPlan``,
``GetPlanEvaluationStatus`` (``warnings`` paginated), ``ListPlansInRegion``, ``ListPlans``.
Anything else answers ``UnknownOperationException``. Not emulated: plan creation and updates
over the API (plans are seeded from Python or the control API), ``Parallel`` and child-plan
blocks (their steps run as one step), ``UpdatePlanExecution``/``UpdatePlanExecutionStep``,
triggers, report generation, signature checks. Guesses where AWS does not document: the
``__type`` namespace, the execution id format, the answer to approving a step that is not
pending approval (``ResourceNotFoundException``) and to cancelling an execution that has ended
(it succeeds and changes nothing).

Control, from Python (thread-safe; the server may run on another thread's loop)::

    emulator = RegionSwitchEmulator(port=0, clock=clock)
    await emulator.start()   /   emulator.start_background()
    arn = emulator.add_plan(plan_document("orders", ("us-east-2", "us-west-2"), steps=[...]))
    emulator.set_step(arn, "promote-db", duration=30, fail="replica not found")
    emulator.set_evaluation(arn, "actionRequired", warnings=["IAM role lacks rds:..."])
    emulator.set_region_down("us-east-2")
    emulator.set_mode("throttle", calls=2)
    emulator.calls[("StartPlanExecution", "us-west-2")]

Control, over HTTP (``failoverd sandbox``, other processes), JSON bodies:
``POST /_emulator/plan`` ``{"plan": {...}, "steps": {name: {"duration", "fail",
"pause_on_failure", "skip_when_ungraceful"}}}``, ``POST /_emulator/region``
``{"region", "down"}``, ``POST /_emulator/mode`` ``{"mode", "calls"?}``, ``POST
/_emulator/reset``, ``GET /_emulator/state`` (calls per operation and region, executions).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.sandbox.loopback import LoopbackServer
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.region_switch")

SERVICE: Final = "arc-region-switch"
TARGET_PREFIX: Final = "ArcRegionSwitch"
CBOR_CONTENT_TYPE: Final = "application/cbor"
JSON_CONTENT_TYPE: Final = "application/x-amz-json-1.0"
PROTOCOL_HEADER: Final = "smithy-protocol"
PROTOCOL: Final = "rpc-v2-cbor"
ERROR_NAMESPACE: Final = "com.amazonaws.arcregionswitch"
CONTROL_PLANE_REGION: Final = "us-east-1"  # the aws partition's control-plane region
DEFAULT_ACCOUNT: Final = "123456789012"
MODES: Final = ("normal", "throttle", "unavailable")
MAX_PAGE: Final = 100
# Operations botocore sends to the control-plane endpoint (staticContextParams
# UseControlPlaneEndpoint in the service model).
CONTROL_PLANE_OPERATIONS: Final = frozenset({"GetPlan", "ListPlans"})
ACTIVE_STATES: Final = frozenset(
    {"pending", "inProgress", "pendingManualApproval", "pausedByFailedStep", "pausedByOperator"}
)
FINAL_STATES: Final = frozenset(
    {"completed", "completedWithExceptions", "failed", "canceled", "planExecutionTimedOut"}
)
BLOCK_TYPES: Final = (
    "CustomActionLambda",
    "ManualApproval",
    "AuroraGlobalDatabase",
    "EC2AutoScaling",
    "ARCRoutingControl",
    "ARCRegionSwitchPlan",
    "Parallel",
    "ECSServiceScaling",
    "EKSResourceScaling",
    "Route53HealthCheck",
    "DocumentDb",
    "RdsPromoteReadReplica",
    "RdsCreateCrossRegionReplica",
    "LambdaEventSourceMapping",
    "AuroraServerlessScaling",
    "AuroraProvisionedScaling",
    "NeptuneGlobalDatabase",
    "RdsSwitchoverReadReplica",
    "SSMSendCommand",
)
PLAN_ARN_RE: Final = re.compile(
    r"^arn:aws[a-zA-Z-]*:arc-region-switch::([0-9]{12}):plan/"
    r"([a-zA-Z0-9](?:[a-zA-Z0-9-]{0,30}[a-zA-Z0-9])?):([a-z0-9]{6})$"
)
_REGION_RE: Final = re.compile(r"^[a-z]{2}-[a-z-]+-\d+$")
_TOKEN_RE: Final = re.compile(r"^[\x21-\x7e]{1,128}$")
_SCOPE_RE: Final = re.compile(r"Credential=[^/,\s]+/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
_STATUS: Final = {
    "ResourceNotFoundException": 404,
    "AccessDeniedException": 403,
    "IllegalArgumentException": 400,
    "IllegalStateException": 400,
    "ConflictException": 409,
    "InternalServerException": 500,
    "ValidationException": 400,
    "ThrottlingException": 400,
    "ServiceUnavailableException": 503,
    "UnknownOperationException": 404,
    "SerializationException": 400,
    "MissingAuthenticationTokenException": 403,
}


class _ApiError(Exception):
    def __init__(self, type_: str, message: str) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message
        self.status = _STATUS[type_]

    def body(self) -> dict[str, Any]:
        return {"__type": f"{ERROR_NAMESPACE}#{self.type}", "message": self.message}


class _Dropped(Exception):
    """The connection is dropped without an answer (an unreachable regional endpoint)."""


def plan_arn(name: str, account: str = DEFAULT_ACCOUNT, suffix: str | None = None) -> str:
    """A plan ARN as AWS forms them: ``arn:aws:arc-region-switch::<account>:plan/<name>:<6>``;
    the suffix defaults to one derived from the name, so a seed gives stable ARNs."""
    suffix = suffix or hashlib.sha256(name.encode()).hexdigest()[:6]
    arn = f"arn:aws:arc-region-switch::{account}:plan/{name}:{suffix}"
    if not PLAN_ARN_RE.match(arn):
        raise ValueError(f"not a valid plan name or suffix: {name!r}, {suffix!r}")
    return arn


def block_config(block_type: str, **config: Any) -> dict[str, Any]:
    """A minimal, model-valid ``executionBlockConfiguration`` for ``block_type`` (for seeds
    and tests); ``config`` overrides or adds members of that block's configuration."""
    role = f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/region-switch"
    defaults: dict[str, tuple[str, dict[str, Any]]] = {
        "ManualApproval": ("executionApprovalConfig", {"approvalRole": role, "timeoutMinutes": 60}),
        "EC2AutoScaling": (
            "ec2AsgCapacityIncreaseConfig",
            {"asgs": [], "targetPercent": 100, "timeoutMinutes": 30},
        ),
        "AuroraGlobalDatabase": (
            "globalAuroraConfig",
            {
                "behavior": "switchoverOnly",
                "globalClusterIdentifier": "global",
                "databaseClusterArns": [],
                "timeoutMinutes": 60,
            },
        ),
        "ARCRoutingControl": ("arcRoutingControlConfig", {"regionAndRoutingControls": {}}),
        "Route53HealthCheck": (
            "route53HealthCheckConfig",
            {"hostedZoneId": "Z0EXAMPLE", "recordName": "app.example.com"},
        ),
        "CustomActionLambda": (
            "customActionLambdaConfig",
            {"lambdas": [], "retryIntervalMinutes": 1.0, "regionToRun": "activatingRegion"},
        ),
        "ECSServiceScaling": ("ecsCapacityIncreaseConfig", {"services": [], "targetPercent": 100}),
    }
    if block_type not in defaults:
        raise ValueError(f"no default configuration for block type {block_type!r}")
    member, base = defaults[block_type]
    return {member: {**base, **config}}


def plan_document(
    name: str,
    regions: Sequence[str],
    *,
    steps: Sequence[tuple[str, str]] | Sequence[Mapping[str, Any]],
    primary: str | None = None,
    account: str = DEFAULT_ACCOUNT,
    rto_minutes: int = 30,
    description: str = "",
) -> dict[str, Any]:
    """An active/passive plan (the ``Plan`` shape) with one ``activate`` workflow for either
    region made of ``steps``: ``(name, block type)`` pairs (with :func:`block_config`'s
    defaults) or whole ``Step`` maps."""
    if len(regions) != 2:
        raise ValueError(f"a Region switch plan has exactly 2 regions, got {list(regions)}")
    built: list[dict[str, Any]] = []
    for step in steps:
        if isinstance(step, tuple):
            step_name, block = step
            built.append(
                {
                    "name": step_name,
                    "executionBlockType": block,
                    "executionBlockConfiguration": block_config(block),
                }
            )
        else:
            built.append(dict(step))
    return {
        "arn": plan_arn(name, account),
        "name": name,
        "description": description or f"{name}: Region switch plan (emulated)",
        "regions": list(regions),
        "primaryRegion": primary or regions[0],
        "recoveryApproach": "activePassive",
        "executionRole": f"arn:aws:iam::{account}:role/region-switch-{name}",
        "owner": account,
        "recoveryTimeObjectiveMinutes": rto_minutes,
        "version": "1",
        "workflows": [{"workflowTargetAction": "activate", "steps": built}],
    }


@dataclass
class StepBehaviour:
    """How the emulator runs one step of a plan (not part of AWS's model)."""

    duration: float
    fail: str | None = None  # the step fails with this error
    pause_on_failure: bool = False  # pausedByFailedStep instead of failed
    skip_when_ungraceful: bool = False


@dataclass
class _Plan:
    doc: dict[str, Any]
    created: float
    behaviour: dict[str, StepBehaviour] = field(default_factory=dict)
    evaluation_state: str = "passed"
    warnings: list[str] = field(default_factory=list)
    evaluated_at: float = 0.0

    @property
    def arn(self) -> str:
        return str(self.doc["arn"])

    @property
    def regions(self) -> list[str]:
        return [str(r) for r in self.doc["regions"]]


@dataclass
class _StepRun:
    name: str
    block_type: str
    behaviour: StepBehaviour
    timeout: float | None  # approval timeout, seconds
    status: str = "notStarted"
    start: float | None = None
    end: float | None = None

    def shape(self, mode: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "stepMode": mode}
        if self.start is not None:
            out["startTime"] = _ts(self.start)
        if self.end is not None:
            out["endTime"] = _ts(self.end)
        return out


@dataclass
class _Execution:
    id: str
    plan: _Plan
    region: str
    action: str
    target_region: str
    mode: str
    comment: str
    start: float
    steps: list[_StepRun]
    state: str = "inProgress"
    end: float | None = None
    updated: float = 0.0
    cursor: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, at: float, type_: str, step: _StepRun | None = None, **extra: Any) -> None:
        previous = self.events[-1]["eventId"] if self.events else None
        item: dict[str, Any] = {
            "eventId": f"{self.id}-{len(self.events) + 1:05d}",
            "timestamp": _ts(at),
            "type": type_,
        }
        if previous is not None:
            item["previousEventId"] = previous
        if step is not None:
            item["stepName"] = step.name
            item["executionBlockType"] = step.block_type
        item.update({k: v for k, v in extra.items() if v is not None})
        self.events.append(item)
        self.updated = at

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "planArn": self.plan.arn,
            "executionId": self.id,
            "version": str(self.plan.doc.get("version", "1")),
            "updatedAt": _ts(self.updated),
            "startTime": _ts(self.start),
            "mode": self.mode,
            "executionState": self.state,
            "executionAction": self.action,
            "executionRegion": self.region,
        }
        if self.comment:
            out["comment"] = self.comment
        if self.end is not None:
            out["endTime"] = _ts(self.end)
            out["actualRecoveryTime"] = _iso_duration(self.end - self.start)
        return out


class _Timestamp:
    """A timestamp member: CBOR tag 1 on the CBOR wire, epoch seconds on the JSON wire."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)


def _ts(seconds: float) -> _Timestamp:
    return _Timestamp(seconds)


def _cbor2() -> Any:
    """cbor2, imported on first use: it comes with the sandbox extra, and the CLI imports
    the sandbox's modules to build its parser (a production install has no cbor2)."""
    import cbor2

    return cbor2


def _wire(value: Any, cbor: bool) -> Any:
    """``value`` with every :class:`_Timestamp` as the protocol writes it."""
    if isinstance(value, _Timestamp):
        return _cbor2().CBORTag(1, value.seconds) if cbor else value.seconds
    if isinstance(value, dict):
        return {k: _wire(v, cbor) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wire(v, cbor) for v in value]
    return value


def _iso_duration(seconds: float) -> str:
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    out = "PT"
    if hours:
        out += f"{hours}H"
    if minutes:
        out += f"{minutes}M"
    if secs or out == "PT":
        out += f"{secs}S"
    return out


def _steps_of(plan: Mapping[str, Any], action: str, target_region: str) -> list[dict[str, Any]]:
    """The steps of the plan's workflow for ``action`` on ``target_region``: the one naming
    that region, else the one naming none."""
    generic: list[dict[str, Any]] | None = None
    for workflow in plan.get("workflows") or []:
        if workflow.get("workflowTargetAction") != action:
            continue
        region = workflow.get("workflowTargetRegion")
        if region == target_region:
            return list(workflow.get("steps") or [])
        if region is None and generic is None:
            generic = list(workflow.get("steps") or [])
    if generic is None:
        raise _ApiError(
            "IllegalArgumentException",
            f"plan {plan['arn']} has no {action} workflow for {target_region}",
        )
    return generic


def _check_plan(doc: Mapping[str, Any]) -> None:
    """The ``Plan`` shape's required members and constraints that matter here."""
    for key in ("arn", "workflows", "executionRole", "name", "regions", "recoveryApproach"):
        if key not in doc:
            raise ValueError(f"plan is missing {key!r}")
    match = PLAN_ARN_RE.match(str(doc["arn"]))
    if match is None or match.group(2) != doc["name"]:
        raise ValueError(f"plan arn {doc['arn']!r} is not a plan ARN for {doc['name']!r}")
    regions = doc["regions"]
    if not isinstance(regions, list) or len(regions) != 2 or len(set(regions)) != 2:
        raise ValueError(f"a plan has exactly 2 distinct regions, got {regions!r}")
    for region in regions:
        if not isinstance(region, str) or not _REGION_RE.match(region):
            raise ValueError(f"not a region: {region!r}")
    if doc["recoveryApproach"] not in ("activeActive", "activePassive"):
        raise ValueError("recoveryApproach must be activeActive or activePassive")
    names: set[str] = set()
    for workflow in doc["workflows"]:
        if workflow.get("workflowTargetAction") not in ("activate", "deactivate", "postRecovery"):
            raise ValueError(f"bad workflowTargetAction in {workflow!r}")
        for step in workflow.get("steps") or []:
            for key in ("name", "executionBlockType", "executionBlockConfiguration"):
                if key not in step:
                    raise ValueError(f"step {step!r} is missing {key!r}")
            if step["executionBlockType"] not in BLOCK_TYPES:
                raise ValueError(f"unknown executionBlockType {step['executionBlockType']!r}")
            config = step["executionBlockConfiguration"]
            if not isinstance(config, dict) or len(config) != 1:
                raise ValueError(f"step {step['name']!r}: the configuration is a union of one")
            names.add(step["name"])


class RegionSwitchEmulator(LoopbackServer):
    """ARC Region switch for one emulated account, served on a loopback port. Control
    methods are thread-safe and take effect for the next request. ``start``/``stop`` serve on
    the caller's loop; ``start_background``/``stop_background`` on a thread of their own."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        account_id: str = DEFAULT_ACCOUNT,
        clock: Clock = SYSTEM_CLOCK,
        default_step_duration: float = 2.0,
        default_page_size: int = 20,
    ) -> None:
        super().__init__(host, port)
        if not re.fullmatch(r"\d{12}", account_id):
            raise ValueError(f"account_id must be 12 digits, got {account_id!r}")
        if default_step_duration < 0:
            raise ValueError("default_step_duration must not be negative")
        if not 1 <= default_page_size <= MAX_PAGE:
            raise ValueError(f"default_page_size must be 1..{MAX_PAGE}")
        self.account_id = account_id
        self.default_step_duration = default_step_duration
        self.default_page_size = default_page_size
        self._clock = clock
        self._lock = threading.RLock()
        self._plans: dict[str, _Plan] = {}
        self._executions: dict[str, _Execution] = {}
        # (region, client token) -> (request parameters, execution id)
        self._tokens: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self._down: set[str] = set()
        self._mode = "normal"
        self._mode_calls: int | None = None
        self.calls: Counter[tuple[str, str]] = Counter()  # (operation, region) -> answered
        self._requests: deque[dict[str, Any]] = deque(maxlen=1000)
        self._nonce = secrets.token_hex(4)

    # --- lifecycle (LoopbackServer: start/stop, start_background/stop_background) ----------
    what = "the Region switch emulator"
    event = "region_switch_emulator"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_post("/", self._json_api)
        app.router.add_post("/service/{service}/operation/{operation}", self._cbor_api)
        app.router.add_post("/_emulator/plan", self._ctl_plan)
        app.router.add_post("/_emulator/region", self._ctl_region)
        app.router.add_post("/_emulator/mode", self._ctl_mode)
        app.router.add_post("/_emulator/reset", self._ctl_reset)
        app.router.add_get("/_emulator/state", self._ctl_state)
        return app

    # --- control ----------------------------------------------------------------------------
    def add_plan(
        self, plan: Mapping[str, Any], steps: Mapping[str, Mapping[str, Any]] | None = None
    ) -> str:
        """Seed (or replace) a plan, given as AWS's ``Plan`` shape (see :func:`plan_document`);
        ``steps`` sets :class:`StepBehaviour` per step name. Returns the plan's ARN."""
        doc = dict(plan)
        doc.setdefault("owner", self.account_id)
        doc.setdefault("version", "1")
        _check_plan(doc)
        now = self._clock.now()
        doc.setdefault("updatedAt", now)
        with self._lock:
            self._plans[str(doc["arn"])] = _Plan(doc=doc, created=now, evaluated_at=now)
        for name, knobs in (steps or {}).items():
            self.set_step(str(doc["arn"]), name, **dict(knobs))
        log.info("region_switch_plan_added", arn=doc["arn"])
        return str(doc["arn"])

    def set_step(
        self,
        arn: str,
        step: str,
        *,
        duration: float | None = None,
        fail: str | None = None,
        pause_on_failure: bool = False,
        skip_when_ungraceful: bool = False,
    ) -> None:
        """How ``step`` of plan ``arn`` runs in executions started from now on."""
        if duration is not None and (not isinstance(duration, int | float) or duration < 0):
            raise ValueError(f"duration must be a non-negative number, got {duration!r}")
        with self._lock:
            plan = self._plan(arn)
            known = {s["name"] for w in plan.doc["workflows"] for s in (w.get("steps") or [])}
            if step not in known:
                raise ValueError(f"plan {arn} has no step {step!r}; it has {sorted(known)}")
            plan.behaviour[step] = StepBehaviour(
                duration=self.default_step_duration if duration is None else float(duration),
                fail=fail,
                pause_on_failure=pause_on_failure,
                skip_when_ungraceful=skip_when_ungraceful,
            )

    def set_evaluation(self, arn: str, state: str = "passed", warnings: Iterable[str] = ()) -> None:
        """The plan's evaluation (``passed``, ``actionRequired``, ``pendingEvaluation``,
        ``unknown``) and its active warnings' messages."""
        if state not in ("passed", "actionRequired", "pendingEvaluation", "unknown"):
            raise ValueError(f"unknown evaluation state {state!r}")
        with self._lock:
            plan = self._plan(arn)
            plan.evaluation_state = state
            plan.warnings = [str(w) for w in warnings]
            plan.evaluated_at = self._clock.now()

    def set_region_down(self, region: str, down: bool = True) -> None:
        """Drop (or serve again) every call addressed to ``region``'s endpoint."""
        if not _REGION_RE.match(region):
            raise ValueError(f"not a region: {region!r}")
        with self._lock:
            (self._down.add if down else self._down.discard)(region)

    def set_mode(self, mode: str, calls: int | None = None) -> None:
        """``throttle`` (ThrottlingException) or ``unavailable`` (503) for the next ``calls``
        API calls (all of them when None); ``normal`` ends it."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if calls is not None and calls < 1:
            raise ValueError("calls must be at least 1")
        with self._lock:
            self._mode = mode
            self._mode_calls = None if mode == "normal" else calls

    def use_clock(self, clock: Clock) -> None:
        """Run executions on ``clock`` from now on (tests share their virtual clock)."""
        with self._lock:
            self._clock = clock

    def reset(self) -> None:
        """No plans, no executions, every region up, normal mode, counters cleared."""
        with self._lock:
            self._plans.clear()
            self._executions.clear()
            self._tokens.clear()
            self._down.clear()
            self._mode, self._mode_calls = "normal", None
            self.calls.clear()
            self._requests.clear()

    def executions(self, arn: str | None = None) -> list[dict[str, Any]]:
        """Every execution (of plan ``arn``), oldest first, as plain data: id, region,
        state, mode, action, target region, comment and each step's status."""
        with self._lock:
            out = []
            for ex in self._executions.values():
                if arn is not None and ex.plan.arn != arn:
                    continue
                self._advance(ex)
                out.append(
                    {
                        "id": ex.id,
                        "plan": ex.plan.arn,
                        "region": ex.region,
                        "state": ex.state,
                        "mode": ex.mode,
                        "action": ex.action,
                        "target_region": ex.target_region,
                        "comment": ex.comment,
                        "steps": {s.name: s.status for s in ex.steps},
                    }
                )
            return out

    def requests(self) -> list[dict[str, Any]]:
        """The latest API requests (operation, region, decoded body), oldest first."""
        with self._lock:
            return list(self._requests)

    def _plan(self, arn: str) -> _Plan:
        plan = self._plans.get(arn)
        if plan is None:
            raise ValueError(f"no such plan: {arn!r}")
        return plan

    # --- execution state machine (under the lock) -------------------------------------------
    def _advance(self, ex: _Execution) -> None:
        """Bring ``ex`` up to the clock: every transition due by now, at the time it was due."""
        now = self._clock.now()
        while ex.state not in FINAL_STATES and ex.cursor < len(ex.steps):
            step = ex.steps[ex.cursor]
            if step.status == "notStarted":
                at = ex.steps[ex.cursor - 1].end if ex.cursor else ex.start
                assert at is not None
                if ex.mode == "ungraceful" and step.behaviour.skip_when_ungraceful:
                    step.status, step.start, step.end = "skipped", at, at
                    ex.event(at, "stepSkipped", step, description="skipped: ungraceful")
                    ex.cursor += 1
                    continue
                step.status, step.start = "running", at
                ex.event(at, "stepStarted", step)
                if step.block_type == "ManualApproval":
                    step.status = "pendingApproval"
                    ex.state = "pendingManualApproval"
                    ex.event(at, "stepPendingApproval", step)
                    ex.event(at, "executionPendingApproval")
            if step.status == "pendingApproval":
                if step.timeout is not None and step.start is not None:
                    expires = step.start + step.timeout
                    if now >= expires:
                        self._fail(ex, step, expires, "approval timed out", pause=False)
                return
            if step.status != "running" or step.start is None:
                return  # paused on a failed step: the operator's move
            done = step.start + step.behaviour.duration
            if now < done:
                return
            if step.behaviour.fail is not None:
                self._fail(ex, step, done, step.behaviour.fail, step.behaviour.pause_on_failure)
                return
            step.status, step.end = "completed", done
            ex.event(done, "stepSucceeded", step)
            ex.cursor += 1
        if ex.state not in FINAL_STATES and ex.cursor >= len(ex.steps):
            at = ex.steps[-1].end if ex.steps else ex.start
            assert at is not None
            ex.state, ex.end = "completed", at
            ex.event(at, "executionSucceeded")

    def _fail(self, ex: _Execution, step: _StepRun, at: float, error: str, pause: bool) -> None:
        step.status, step.end = "failed", at
        if pause:
            ex.state = "pausedByFailedStep"
            ex.event(at, "stepPausedByError", step, error=error)
            ex.event(at, "executionPaused")
            return
        ex.event(at, "stepFailed", step, error=error)
        ex.state, ex.end = "failed", at
        ex.event(at, "executionFailed", error=f"step {step.name} failed: {error}")

    # --- the API ------------------------------------------------------------------------------
    async def _cbor_api(self, request: web.Request) -> web.StreamResponse:
        """Smithy RPC v2 CBOR: ``POST /service/ArcRegionSwitch/operation/<Operation>``."""
        request_id = str(uuid.uuid4())
        try:
            if request.match_info["service"] != TARGET_PREFIX:
                raise _ApiError(
                    "UnknownOperationException", f"unknown service {request.match_info['service']}"
                )
            if request.headers.get(PROTOCOL_HEADER) != PROTOCOL:
                raise _ApiError(
                    "SerializationException", f"missing or wrong {PROTOCOL_HEADER} header"
                )
            region = self._scope_region(request)
            raw = await request.read()
            body: Any = {}
            if raw:
                if request.content_type != CBOR_CONTENT_TYPE:
                    raise _ApiError(
                        "SerializationException", f"expected Content-Type {CBOR_CONTENT_TYPE}"
                    )
                cbor2 = _cbor2()
                try:
                    body = cbor2.loads(raw)
                except (cbor2.CBORDecodeError, ValueError) as exc:
                    raise _ApiError("SerializationException", f"body is not CBOR: {exc}") from None
            result = self._call(request.match_info["operation"], region, body)
            return self._answer(200, result, request_id, cbor=True)
        except _Dropped:
            return self._drop(request)
        except _ApiError as err:
            return self._answer(err.status, err.body(), request_id, cbor=True)

    async def _json_api(self, request: web.Request) -> web.StreamResponse:
        """JSON 1.0: ``POST /`` with ``X-Amz-Target: ArcRegionSwitch.<Operation>`` (what
        botocore picks: its protocol priority puts ``json`` before ``smithy-rpc-v2-cbor``)."""
        request_id = str(uuid.uuid4())
        try:
            target = request.headers.get("X-Amz-Target", "")
            prefix, _, operation = target.partition(".")
            if prefix != TARGET_PREFIX or not operation:
                raise _ApiError("UnknownOperationException", f"unknown target {target!r}")
            region = self._scope_region(request)
            if request.content_type != JSON_CONTENT_TYPE:
                raise _ApiError(
                    "SerializationException", f"expected Content-Type {JSON_CONTENT_TYPE}"
                )
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError as exc:
                raise _ApiError("SerializationException", f"body is not JSON: {exc}") from None
            result = self._call(operation, region, body)
            return self._answer(200, result, request_id, cbor=False)
        except _Dropped:
            return self._drop(request)
        except _ApiError as err:
            return self._answer(err.status, err.body(), request_id, cbor=False)

    def _call(self, operation: str, region: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _ApiError("SerializationException", "the body must be a map")
        served_by = CONTROL_PLANE_REGION if operation in CONTROL_PLANE_OPERATIONS else region
        with self._lock:
            if served_by in self._down:
                raise _Dropped()
            self._requests.append({"operation": operation, "region": region, "body": body})
            handler = _HANDLERS.get(operation)
            if handler is None:
                raise _ApiError("UnknownOperationException", f"unknown operation {operation}")
            self._fault()
            result: dict[str, Any] = handler(self, region, body)
            self.calls[(operation, region)] += 1
            return result

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)  # never written: the connection is gone

    def _scope_region(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        match = _SCOPE_RE.search(auth)
        if match is None:
            raise _ApiError(
                "MissingAuthenticationTokenException", "request is missing a SigV4 signature"
            )
        region, service = match.group(1), match.group(2)
        if service != SERVICE or not _REGION_RE.match(region):
            raise _ApiError(
                "AccessDeniedException", f"credential scope {region}/{service} is not valid here"
            )
        return region

    def _fault(self) -> None:
        if self._mode == "normal":
            return
        if self._mode_calls is not None:
            self._mode_calls -= 1
            if self._mode_calls <= 0:
                mode, self._mode, self._mode_calls = self._mode, "normal", None
            else:
                mode = self._mode
        else:
            mode = self._mode
        if mode == "throttle":
            raise _ApiError("ThrottlingException", "Rate exceeded")
        raise _ApiError("ServiceUnavailableException", "Service unavailable")

    @staticmethod
    def _answer(
        status: int, body: Mapping[str, Any], request_id: str, *, cbor: bool
    ) -> web.Response:
        if cbor:
            return web.Response(
                status=status,
                body=_cbor2().dumps(_wire(dict(body), cbor=True)),
                headers={
                    "Content-Type": CBOR_CONTENT_TYPE,
                    PROTOCOL_HEADER: PROTOCOL,
                    "x-amzn-requestid": request_id,
                },
            )
        return web.Response(
            status=status,
            body=json.dumps(_wire(dict(body), cbor=False)).encode(),
            headers={"Content-Type": JSON_CONTENT_TYPE, "x-amzn-requestid": request_id},
        )

    # --- request helpers ------------------------------------------------------------------
    def _plan_in(self, region: str, arn: Any, member: str = "planArn") -> _Plan:
        if not isinstance(arn, str) or not PLAN_ARN_RE.match(arn):
            raise _ApiError(
                "ValidationException",
                f"1 validation error detected: Value at '{member}' failed to satisfy"
                " constraint: Member must satisfy the plan ARN pattern",
            )
        plan = self._plans.get(arn)
        if plan is None or region not in plan.regions:
            raise _ApiError("ResourceNotFoundException", f"plan {arn} not found in {region}")
        return plan

    def _execution(self, region: str, body: Mapping[str, Any]) -> _Execution:
        plan = self._plan_in(region, body.get("planArn"))
        ex_id = _required_str(body, "executionId")
        ex = self._executions.get(ex_id)
        if ex is None or ex.plan.arn != plan.arn or ex.region != region:
            raise _ApiError(
                "ResourceNotFoundException", f"execution {ex_id} of {plan.arn} not found"
            )
        self._advance(ex)
        return ex

    def _page(
        self, body: Mapping[str, Any], items: Sequence[Any], scope: str
    ) -> tuple[list[Any], str | None]:
        size = body.get("maxResults", self.default_page_size)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE:
            raise _ApiError(
                "ValidationException",
                f"1 validation error detected: Value {size!r} at 'maxResults' failed to satisfy"
                f" constraint: Member must have value between 1 and {MAX_PAGE}",
            )
        digest = hashlib.sha256(f"{self._nonce}|{scope}".encode()).hexdigest()[:12]
        offset = 0
        token = body.get("nextToken")
        if token is not None:
            parts = str(token).split(".")
            if len(parts) != 2 or parts[0] != digest or not parts[1].isdigit():
                raise _ApiError("IllegalArgumentException", "invalid nextToken")
            offset = int(parts[1])
        page = list(items[offset : offset + size])
        more = offset + size < len(items)
        return page, f"{digest}.{offset + size}" if more else None

    # --- operations -----------------------------------------------------------------------
    def _start(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        plan = self._plan_in(region, body.get("planArn"))
        target = _required_str(body, "targetRegion")
        action = _required_str(body, "action")
        if action not in ("activate", "deactivate", "postRecovery"):
            raise _ApiError("ValidationException", f"action {action!r} is not a valid value")
        mode = body.get("mode", "graceful")
        if mode not in ("graceful", "ungraceful"):
            raise _ApiError("ValidationException", f"mode {mode!r} is not a valid value")
        comment = body.get("comment", "")
        if not isinstance(comment, str) or len(comment) > 1024:
            raise _ApiError("ValidationException", "comment must be at most 1024 characters")
        token = body.get("clientToken")
        if token is not None and (not isinstance(token, str) or not _TOKEN_RE.match(token)):
            raise _ApiError("ValidationException", "clientToken must be 1-128 printable ASCII")
        params = {k: v for k, v in body.items() if k != "clientToken"}
        if token is not None:
            seen = self._tokens.get((region, token))
            if seen is not None:
                if seen[0] != params:
                    raise _ApiError(
                        "ConflictException",
                        "The client token was already used with different request parameters",
                    )
                return self._start_answer(self._executions[seen[1]])
        if target not in plan.regions:
            raise _ApiError(
                "IllegalArgumentException", f"{target} is not one of the plan's regions"
            )
        for other in self._executions.values():
            self._advance(other)
            if other.plan.arn == plan.arn and other.state in ACTIVE_STATES:
                raise _ApiError(
                    "IllegalStateException",
                    f"plan {plan.arn} already has an active execution ({other.id})",
                )
        steps = []
        for step in _steps_of(plan.doc, action, target):
            name = str(step["name"])
            behaviour = plan.behaviour.get(name) or StepBehaviour(self.default_step_duration)
            approval = step["executionBlockConfiguration"].get("executionApprovalConfig") or {}
            minutes = approval.get("timeoutMinutes")
            timeout = float(minutes) * 60 if isinstance(minutes, int | float) else None
            steps.append(
                _StepRun(name, str(step["executionBlockType"]), behaviour, timeout=timeout)
            )
        now = self._clock.now()
        ex = _Execution(
            id=secrets.token_hex(8),
            plan=plan,
            region=region,
            action=action,
            target_region=target,
            mode=mode,
            comment=comment,
            start=now,
            steps=steps,
            updated=now,
        )
        ex.event(now, "executionStarted", description=f"{action} {target} ({mode})")
        self._executions[ex.id] = ex
        if token is not None:
            self._tokens[(region, token)] = (params, ex.id)
        self._advance(ex)
        log.info("region_switch_execution_started", id=ex.id, plan=plan.arn, region=region)
        return self._start_answer(ex)

    @staticmethod
    def _start_answer(ex: _Execution) -> dict[str, Any]:
        out = {
            "executionId": ex.id,
            "plan": ex.plan.arn,
            "planVersion": str(ex.plan.doc.get("version", "1")),
        }
        if ex.action == "activate":
            out["activateRegion"] = ex.target_region
        else:
            out["deactivateRegion"] = ex.target_region
        return out

    def _get_execution(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(region, body)
        states = [s.shape(ex.mode) for s in ex.steps]
        page, token = self._page(body, states, f"steps|{ex.id}")
        out = ex.summary()
        out["stepStates"] = page
        out["plan"] = _plan_shape(ex.plan.doc)
        if token is not None:
            out["nextToken"] = token
        return out

    def _list_executions(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        plan = self._plan_in(region, body.get("planArn"))
        state = body.get("state")
        found = []
        for ex in self._executions.values():
            if ex.plan.arn != plan.arn or ex.region != region:
                continue
            self._advance(ex)
            if state is None or ex.state == state:
                found.append(ex)
        found.sort(key=lambda e: e.start, reverse=True)
        page, token = self._page(
            body, [e.summary() for e in found], f"executions|{plan.arn}|{region}|{state}"
        )
        out: dict[str, Any] = {"items": page}
        if token is not None:
            out["nextToken"] = token
        return out

    def _list_events(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(region, body)
        name = body.get("name")
        events = [e for e in ex.events if name is None or e.get("stepName") == name]
        page, token = self._page(body, events, f"events|{ex.id}|{name}")
        out: dict[str, Any] = {"items": page}
        if token is not None:
            out["nextToken"] = token
        return out

    def _approve(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(region, body)
        name = _required_str(body, "stepName")
        approval = _required_str(body, "approval")
        if approval not in ("approve", "decline"):
            raise _ApiError("ValidationException", f"approval {approval!r} is not a valid value")
        comment = body.get("comment", "")
        if not isinstance(comment, str) or len(comment) > 1024:
            raise _ApiError("ValidationException", "comment must be at most 1024 characters")
        step = next((s for s in ex.steps if s.name == name), None)
        if step is None or step.status != "pendingApproval":
            raise _ApiError(
                "ResourceNotFoundException",
                f"no step {name} pending approval in execution {ex.id}",
            )
        now = self._clock.now()
        if approval == "decline":
            self._fail(ex, step, now, f"declined: {comment}" if comment else "declined", False)
            return {}
        step.status, step.end = "completed", now
        ex.state = "inProgress"
        ex.event(
            now,
            "stepSucceeded",
            step,
            description=f"approved: {comment}" if comment else "approved",
        )
        ex.cursor += 1
        self._advance(ex)
        return {}

    def _cancel(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        ex = self._execution(region, body)
        if ex.state in FINAL_STATES:
            return {}
        now = self._clock.now()
        comment = body.get("comment")
        ex.event(
            now, "executionCanceling", description=comment if isinstance(comment, str) else None
        )
        for step in ex.steps:
            if step.status in ("running", "pendingApproval"):
                step.status, step.end = "canceled", now
                ex.event(now, "stepCanceled", step)
        ex.state, ex.end = "canceled", now
        ex.event(now, "executionCanceled")
        return {}

    def _get_plan_in_region(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        plan = self._plan_in(region, body.get("arn"), member="arn")
        return {"plan": _plan_shape(plan.doc)}

    def _get_plan(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        # Served by the control plane: any region's client reaches it (see the docstring).
        arn = body.get("arn")
        plan = self._plans.get(arn) if isinstance(arn, str) else None
        if plan is None:
            raise _ApiError("ResourceNotFoundException", f"plan {arn} not found")
        return {"plan": _plan_shape(plan.doc)}

    def _evaluation(self, region: str, body: dict[str, Any]) -> dict[str, Any]:
        plan = self._plan_in(region, body.get("planArn"))
        warnings = [
            {
                "version": str(plan.doc.get("version", "1")),
                "warningStatus": "active",
                "warningUpdatedTime": _ts(plan.evaluated_at),
                "warningMessage": message,
            }
            for message in plan.warnings
        ]
        page, token = self._page(body, warnings, f"warnings|{plan.arn}")
        out: dict[str, Any] = {
            "planArn": plan.arn,
            "lastEvaluationTime": _ts(plan.evaluated_at),
            "lastEvaluatedVersion": str(plan.doc.get("version", "1")),
            "region": region,
            "evaluationState": plan.evaluation_state,
            "warnings": page,
        }
        if token is not None:
            out["nextToken"] = token
        return out

    def _list_plans(self, region: str | None, body: dict[str, Any]) -> dict[str, Any]:
        plans = [p for p in self._plans.values() if region is None or region in p.regions]
        summaries = []
        for p in sorted(plans, key=lambda x: x.arn):
            active = next(
                (
                    e.id
                    for e in self._executions.values()
                    if e.plan is p and e.state in ACTIVE_STATES
                ),
                None,
            )
            item = {
                "arn": p.arn,
                "owner": p.doc["owner"],
                "name": p.doc["name"],
                "regions": p.regions,
                "recoveryApproach": p.doc["recoveryApproach"],
                "version": str(p.doc.get("version", "1")),
            }
            if active is not None:
                item["activePlanExecution"] = active
            summaries.append(item)
        page, token = self._page(body, summaries, f"plans|{region}")
        out: dict[str, Any] = {"plans": page}
        if token is not None:
            out["nextToken"] = token
        return out

    # --- the control API over HTTP ----------------------------------------------------------
    async def _ctl_json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"error": "body is not JSON"}') from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}')
        return body

    async def _ctl_plan(self, request: web.Request) -> web.Response:
        body = await self._ctl_json(request)
        try:
            arn = self.add_plan(body["plan"], body.get("steps"))
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"arn": arn}, status=201)

    async def _ctl_region(self, request: web.Request) -> web.Response:
        body = await self._ctl_json(request)
        try:
            self.set_region_down(str(body["region"]), bool(body.get("down", True)))
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"down": sorted(self._down)})

    async def _ctl_mode(self, request: web.Request) -> web.Response:
        body = await self._ctl_json(request)
        try:
            self.set_mode(str(body.get("mode")), body.get("calls"))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"mode": self._mode})

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _ctl_state(self, request: web.Request) -> web.Response:
        with self._lock:
            calls = {f"{op} {region}": n for (op, region), n in sorted(self.calls.items())}
            down = sorted(self._down)
        return web.json_response(
            {"mode": self._mode, "down": down, "calls": calls, "executions": self.executions()}
        )


def _required_str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise _ApiError(
            "ValidationException",
            f"1 validation error detected: Value at '{key}' failed to satisfy constraint:"
            " Member must not be null",
        )
    return value


def _plan_shape(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    updated = out.get("updatedAt")
    if isinstance(updated, int | float):
        out["updatedAt"] = _ts(updated)
    return out


_HANDLERS: dict[str, Any] = {
    "StartPlanExecution": RegionSwitchEmulator._start,
    "GetPlanExecution": RegionSwitchEmulator._get_execution,
    "ListPlanExecutions": RegionSwitchEmulator._list_executions,
    "ListPlanExecutionEvents": RegionSwitchEmulator._list_events,
    "ApprovePlanExecutionStep": RegionSwitchEmulator._approve,
    "CancelPlanExecution": RegionSwitchEmulator._cancel,
    "GetPlanInRegion": RegionSwitchEmulator._get_plan_in_region,
    "GetPlan": RegionSwitchEmulator._get_plan,
    "GetPlanEvaluationStatus": RegionSwitchEmulator._evaluation,
    "ListPlansInRegion": lambda self, region, body: self._list_plans(region, body),
    "ListPlans": lambda self, region, body: self._list_plans(None, body),
}

"""An emulator of an ARC routing-control cluster (``route53-recovery-cluster``) on loopback.

moto has no Application Recovery Controller, so the sandbox and the tests run this instead.
Any AWS SDK pointed at one of its endpoints works unchanged (botocore, boto3 and aiobotocore
are tested against it). Like a real cluster it has **five regional endpoints sharing one
state** (us-east-1, us-west-2, eu-west-1, ap-northeast-1, ap-southeast-2 by default), each on
its own 127.0.0.1 port, each with a path ``/v1`` as AWS's cluster endpoints have
(``https://host-xxxx.us-west-2.example.com/v1``), and each with faults of its own.

Wire protocol (botocore's ``route53-recovery-cluster`` 2019-12-02 model): JSON 1.0, ``POST``
with ``X-Amz-Target: ToggleCustomerAPI.<Operation>`` and ``Content-Type:
application/x-amz-json-1.0``, signed with SigV4 (the signature is not checked, an
``Authorization`` header must be present); errors are ``{"__type", "message", ...}`` with
the error shape's own fields, HTTP 400 except ``InternalServerException`` (500), as the API
reference lists them.

Operations: ``GetRoutingControlState``, ``UpdateRoutingControlState``,
``UpdateRoutingControlStates`` (one transaction: all entries or none), ``ListRoutingControls``
(optional ``ControlPanelArn``, ``MaxResults`` >= 1, default 500, opaque ``NextToken``).

Rules enforced as AWS documents them:

* states are exactly ``On`` / ``Off``; ARNs 1-255 characters of ``[A-Za-z0-9:./_-]``;
  ``ValidationException`` with ``reason`` (``unknownOperation``, ``cannotParse``,
  ``fieldValidationFailed``) and ``fields`` otherwise;
* an unknown routing control or control panel: ``ResourceNotFoundException`` with
  ``resourceId`` and ``resourceType`` (``RoutingControl`` / ``ControlPanel``);
* at most 10 routing controls per ``UpdateRoutingControlStates``
  (``ServiceLimitExceededException``), at most 3 mutating calls per second per endpoint
  (``ThrottlingException`` with ``retryAfterSeconds``) — ARC's published quotas;
* **safety rules** of the routing controls' control panel, except those named in
  ``SafetyRulesToOverride``: an *assertion rule* must hold on the states the transaction
  leaves (``ATLEAST`` n / ``AND`` / ``OR`` On among its asserted controls, ``Inverted``
  negating) whenever the transaction changes one of its asserted controls; a *gating rule*
  must hold on its gating controls, as they are before the transaction, for the transaction
  to change any of its target controls. A refusal is ``ConflictException`` whose
  ``resourceId`` is the safety rule's ARN, ``resourceType`` ``SafetyRule``, and whose message
  names the rule.

Choices where AWS documents nothing (say so when relying on them): the exact text of
refusals and the fields of a safety-rule ``ConflictException``; gating rules judged on the
states before the transaction; an ``UpdateRoutingControlStates`` may span control panels.
Not emulated: safety rules' ``WaitPeriodMs`` (no refusal during a rule's wait period), rule
deployment status, IAM (``AccessDeniedException`` is never answered), the control-config
API (clusters, panels, controls and rules are made with the Python methods below), and the
eventual consistency between endpoints (all five read one state at once).

Faults per endpoint (:meth:`ArcClusterEmulator.set_endpoint_mode`):

* ``up`` — answers;
* ``refuse`` — nothing listens: a connection is refused at once (open connections are cut);
* ``blackhole`` — the port stops accepting: its accept queue is filled and shrunk to one,
  so the kernel drops new SYNs and a client's *connect* times out, as with a region whose
  network is gone; requests on connections already open are never answered;
* ``unavailable`` — ``EndpointTemporarilyUnavailableException`` ("try another endpoint");
* ``throttle`` — ``ThrottlingException``;
* ``internal_error`` — ``InternalServerException`` (500).

:meth:`~ArcClusterEmulator.set_delay` holds an endpoint's answers (a slow endpoint).

Control, from Python (thread-safe: the endpoints may run on another thread's loop)::

    cluster = ArcClusterEmulator()
    await cluster.start()                    # on the running loop, or
    cluster.start_background()               # on a thread of its own (sync tests)
    panel = cluster.create_control_panel("shop")
    use1 = cluster.create_routing_control(panel, "use1", state="On")
    cluster.create_assertion_rule(panel, "one-on", [use1, usw2], "ATLEAST", threshold=1)
    cluster.set_endpoint_mode("us-east-1", "blackhole")
    cluster.endpoints                        # {region: "http://127.0.0.1:PORT/v1"}
    await cluster.stop()   /   cluster.stop_background()
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import json
import re
import socket
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from aiohttp import web

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.sandbox.loopback import LoopbackServer
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.arc_cluster")

SERVICE: Final = "route53-recovery-cluster"
TARGET_PREFIX: Final = "ToggleCustomerAPI"
JSON_CONTENT_TYPE: Final = "application/x-amz-json-1.0"
ENDPOINT_PATH: Final = "/v1"
DEFAULT_REGIONS: Final = ("us-east-1", "us-west-2", "eu-west-1", "ap-northeast-1", "ap-southeast-2")
DEFAULT_ACCOUNT: Final = "123456789012"
STATES: Final = ("On", "Off")
RULE_TYPES: Final = ("ATLEAST", "AND", "OR")
MAX_UPDATE_ENTRIES: Final = 10  # routing controls per UpdateRoutingControlStates (ARC quota)
MUTATIONS_PER_SECOND: Final = 3  # mutating calls per cluster endpoint (ARC quota)
DEFAULT_PAGE: Final = 500
MAX_ARN: Final = 255
MAX_TOKEN: Final = 8096
Mode = Literal["up", "refuse", "blackhole", "unavailable", "throttle", "internal_error"]
MODES: Final[tuple[Mode, ...]] = (
    "up",
    "refuse",
    "blackhole",
    "unavailable",
    "throttle",
    "internal_error",
)
LISTEN_BACKLOG: Final = 128
HANG_CAP: Final = 600.0  # seconds a blackholed request is held at most
_ARN = re.compile(r"^[A-Za-z0-9:./_-]*$")
_NAME = re.compile(r"^\S{1,64}$")
MUTATING = frozenset({"UpdateRoutingControlState", "UpdateRoutingControlStates"})


class ArcApiError(Exception):
    """An error answer of the emulated API: its ``__type``, HTTP status and extra fields."""

    def __init__(self, type_: str, message: str, *, status: int = 400, **fields: Any) -> None:
        super().__init__(message)
        self.type = type_
        self.message = message
        self.status = status
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return {"__type": self.type, "message": self.message, **self.fields}


def _validation(
    field_name: str, message: str, reason: str = "fieldValidationFailed"
) -> ArcApiError:
    return ArcApiError(
        "ValidationException",
        f"1 validation error detected: {field_name}: {message}",
        reason=reason,
        fields=[{"name": field_name, "message": message}],
    )


def _not_found(resource_id: str, resource_type: str) -> ArcApiError:
    return ArcApiError(
        "ResourceNotFoundException",
        f"{resource_type} {resource_id} was not found",
        resourceId=resource_id,
        resourceType=resource_type,
    )


@dataclass(slots=True)
class _ControlPanel:
    arn: str
    name: str


@dataclass(slots=True)
class _RoutingControl:
    arn: str
    name: str
    panel: str
    state: str


@dataclass(slots=True)
class _SafetyRule:
    arn: str
    name: str
    panel: str
    kind: Literal["assertion", "gating"]
    controls: tuple[str, ...]  # asserted controls, or gating controls
    targets: tuple[str, ...]  # gating rules' target controls
    rule_type: str
    threshold: int
    inverted: bool

    def holds(self, states: Mapping[str, str]) -> bool:
        on = sum(1 for arn in self.controls if states.get(arn) == "On")
        if self.rule_type == "AND":
            ok = on == len(self.controls)
        elif self.rule_type == "OR":
            ok = on >= 1
        else:
            ok = on >= self.threshold
        return ok != self.inverted

    def describe(self) -> str:
        wanted = {"AND": "all", "OR": "at least 1", "ATLEAST": f"at least {self.threshold}"}
        text = f"{wanted[self.rule_type]} of {len(self.controls)} controls On"
        return f"not ({text})" if self.inverted else text


@dataclass
class _Endpoint:
    region: str
    port: int = 0
    mode: Mode = "up"
    delay: float = 0.0
    sock: socket.socket | None = None
    accept_task: asyncio.Task[None] | None = None
    fillers: list[socket.socket] = field(default_factory=list)
    mutations: deque[float] = field(default_factory=deque)


class ArcClusterEmulator(LoopbackServer):
    """One ARC cluster: its control panels, routing controls and safety rules, served on one
    loopback endpoint per region. Model methods and fault controls are thread-safe and take
    effect for the next request; ``start``/``stop`` (or ``start_background``/
    ``stop_background``, from :class:`LoopbackServer`) are bounded and idempotent to stop.
    Unlike the other emulators it listens on five ports, each accepting (or not) by itself.
    """

    what = "the ARC cluster emulator"
    event = "arc_cluster"

    def __init__(
        self,
        *,
        regions: Sequence[str] = DEFAULT_REGIONS,
        host: str = "127.0.0.1",
        account_id: str = DEFAULT_ACCOUNT,
        name: str = "sandbox",
        mutations_per_second: int | None = MUTATIONS_PER_SECOND,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if host not in ("127.0.0.1", "localhost"):
            # The emulator has no authentication: it must never be reachable from elsewhere.
            raise ValueError(f"host must be a loopback address, got {host!r}")
        super().__init__("127.0.0.1", 0)
        if len(set(regions)) != len(regions) or not regions:
            raise ValueError(f"regions must be distinct and not empty, got {list(regions)}")
        if not re.fullmatch(r"\d{12}", account_id):
            raise ValueError(f"account_id must be 12 digits, got {account_id!r}")
        self.host = "127.0.0.1"
        self.account_id = account_id
        self.name = name
        self.mutations_per_second = mutations_per_second
        self._clock = clock
        self._lock = threading.RLock()
        self._panels: dict[str, _ControlPanel] = {}
        self._controls: dict[str, _RoutingControl] = {}
        self._rules: dict[str, _SafetyRule] = {}
        self._endpoints = {r: _Endpoint(r) for r in regions}
        self._changed_at: dict[
            str, float
        ] = {}  # routing control -> wall-clock time of its last change
        self._calls: Counter[tuple[str, str]] = Counter()
        self._requests: deque[dict[str, Any]] = deque(maxlen=1000)
        self._nonce = uuid.uuid4().hex[:8]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Condition | None = None

    # --- identity -------------------------------------------------------------------------

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self._endpoints)

    @property
    def cluster_arn(self) -> str:
        return (
            f"arn:aws:route53-recovery-control::{self.account_id}:cluster/{self._id(self.name, 32)}"
        )

    @property
    def endpoints(self) -> dict[str, str]:
        """Region -> endpoint URL, as a policy or ``DescribeCluster`` names them."""
        return {
            r: f"http://{self.host}:{e.port}{ENDPOINT_PATH}" for r, e in self._endpoints.items()
        }

    def cluster_endpoints(self) -> list[dict[str, str]]:
        """``ClusterEndpoints`` as ``DescribeCluster`` answers them."""
        return [{"Endpoint": url, "Region": region} for region, url in self.endpoints.items()]

    def _id(self, seed: str, length: int) -> str:
        # Deterministic, so the sandbox's ARNs read the same from run to run.
        return hashlib.sha256(f"{self.account_id}/{seed}".encode()).hexdigest()[:length]

    # --- the model --------------------------------------------------------------------------

    def create_control_panel(self, name: str) -> str:
        _check_name(name)
        arn = (
            f"arn:aws:route53-recovery-control::{self.account_id}:controlpanel/{self._id(name, 32)}"
        )
        with self._lock:
            if arn in self._panels:
                raise ValueError(f"control panel {name!r} exists")
            self._panels[arn] = _ControlPanel(arn, name)
        return arn

    def create_routing_control(self, panel_arn: str, name: str, *, state: str = "Off") -> str:
        _check_name(name)
        if state not in STATES:
            raise ValueError(f"state must be On or Off, got {state!r}")
        with self._lock:
            if panel_arn not in self._panels:
                raise ValueError(f"no control panel {panel_arn}")
            if any(c.name == name and c.panel == panel_arn for c in self._controls.values()):
                raise ValueError(f"routing control {name!r} exists in that control panel")
            arn = f"{panel_arn}/routingcontrol/{self._id(panel_arn + '/' + name, 16)}"
            self._controls[arn] = _RoutingControl(arn, name, panel_arn, state)
        return arn

    def create_assertion_rule(
        self,
        panel_arn: str,
        name: str,
        asserted_controls: Sequence[str],
        rule_type: str,
        *,
        threshold: int | None = None,
        inverted: bool = False,
    ) -> str:
        """Asserted controls must satisfy the rule after every transaction touching them."""
        return self._rule(
            panel_arn, name, "assertion", asserted_controls, (), rule_type, threshold, inverted
        )

    def create_gating_rule(
        self,
        panel_arn: str,
        name: str,
        gating_controls: Sequence[str],
        target_controls: Sequence[str],
        rule_type: str,
        *,
        threshold: int | None = None,
        inverted: bool = False,
    ) -> str:
        """Target controls change only while the gating controls satisfy the rule."""
        if not target_controls:
            raise ValueError("a gating rule needs target controls")
        return self._rule(
            panel_arn,
            name,
            "gating",
            gating_controls,
            target_controls,
            rule_type,
            threshold,
            inverted,
        )

    def _rule(
        self,
        panel_arn: str,
        name: str,
        kind: Literal["assertion", "gating"],
        controls: Sequence[str],
        targets: Sequence[str],
        rule_type: str,
        threshold: int | None,
        inverted: bool,
    ) -> str:
        _check_name(name)
        if rule_type not in RULE_TYPES:
            raise ValueError(f"rule type must be one of {', '.join(RULE_TYPES)}, got {rule_type!r}")
        if not controls:
            raise ValueError("a safety rule needs routing controls")
        if rule_type == "ATLEAST" and (threshold is None or not 1 <= threshold <= len(controls)):
            raise ValueError("an ATLEAST rule needs a threshold from 1 to the number of controls")
        with self._lock:
            if panel_arn not in self._panels:
                raise ValueError(f"no control panel {panel_arn}")
            for arn in (*controls, *targets):
                control = self._controls.get(arn)
                if control is None or control.panel != panel_arn:
                    raise ValueError(f"no routing control {arn} in control panel {panel_arn}")
            arn = f"{panel_arn}/safetyrule/{self._id(panel_arn + '/rule/' + name, 16)}"
            if arn in self._rules:
                raise ValueError(f"safety rule {name!r} exists in that control panel")
            self._rules[arn] = _SafetyRule(
                arn,
                name,
                panel_arn,
                kind,
                tuple(controls),
                tuple(targets),
                rule_type,
                threshold or 0,
                inverted,
            )
        return arn

    def state(self, routing_control_arn: str) -> str:
        with self._lock:
            return self._controls[routing_control_arn].state

    def states(self) -> dict[str, str]:
        with self._lock:
            return {arn: c.state for arn, c in self._controls.items()}

    def set_state(self, routing_control_arn: str, state: str) -> None:
        """Set a state directly, past the safety rules (seeding, tests)."""
        if state not in STATES:
            raise ValueError(f"state must be On or Off, got {state!r}")
        with self._lock:
            self._set(routing_control_arn, state)

    def changed_at(self, routing_control_arn: str) -> float | None:
        """When (wall clock, the emulator's clock) the routing control last changed state
        through the API or :meth:`set_state`; None if it never did."""
        with self._lock:
            return self._changed_at.get(routing_control_arn)

    def _set(self, arn: str, state: str) -> None:
        control = self._controls[arn]
        if control.state != state:
            control.state = state
            self._changed_at[arn] = self._clock.now()

    def control_arn(self, name: str, panel_arn: str | None = None) -> str:
        """The ARN of the routing control called ``name`` (in ``panel_arn`` if given)."""
        with self._lock:
            for control in self._controls.values():
                if control.name == name and panel_arn in (None, control.panel):
                    return control.arn
        raise KeyError(name)

    def reset(self) -> None:
        """No panels, controls or rules; every endpoint up, no delay; counters cleared."""
        with self._lock:
            self._panels.clear()
            self._controls.clear()
            self._rules.clear()
            self._changed_at.clear()
            self._calls.clear()
            self._requests.clear()
        for region, endpoint in self._endpoints.items():
            endpoint.mutations.clear()
            self.set_endpoint_mode(region, "up")
            self.set_delay(region, 0.0)

    def calls(self, operation: str | None = None, region: str | None = None) -> int:
        """API requests received by operation and/or endpoint (faulted ones too)."""
        with self._lock:
            return sum(
                n
                for (op, reg), n in self._calls.items()
                if operation in (None, op) and region in (None, reg)
            )

    def requests(self) -> list[dict[str, Any]]:
        """The last API requests: ``{"region", "operation", "signing_region", "body"}``."""
        with self._lock:
            return [dict(r) for r in self._requests]

    # --- faults -----------------------------------------------------------------------------

    def endpoint_mode(self, region: str) -> Mode:
        return self._endpoint(region).mode

    def set_delay(self, region: str, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError(f"delay must be a non-negative number of seconds, got {seconds!r}")
        self._endpoint(region).delay = float(seconds)

    def set_endpoint_mode(self, region: str, mode: str) -> None:
        """Put one endpoint in a fault ``mode`` (see the module docstring); callable from any
        thread, the emulator's own loop included. Idempotent."""
        endpoint = self._endpoint(region)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        loop = self._loop
        if loop is None or not loop.is_running():
            endpoint.mode = mode
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._apply_mode(endpoint, mode)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def apply() -> None:
            try:
                self._apply_mode(endpoint, mode)
                done.set_result(None)
            except BaseException as exc:  # handed to the calling thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(apply)
        done.result(timeout=10.0)

    def _endpoint(self, region: str) -> _Endpoint:
        try:
            return self._endpoints[region]
        except KeyError:
            known = ", ".join(self._endpoints)
            raise ValueError(
                f"the cluster has no endpoint in {region!r} (it has {known})"
            ) from None

    def _apply_mode(self, endpoint: _Endpoint, mode: Mode) -> None:
        """On the emulator's loop: make the listening socket match ``mode``."""
        previous, endpoint.mode = endpoint.mode, mode
        if previous == mode:
            return
        log.info("arc_endpoint_mode", region=endpoint.region, mode=mode)
        if previous == "blackhole":
            for filler in endpoint.fillers:
                filler.close()
            endpoint.fillers.clear()
            if endpoint.sock is not None:
                endpoint.sock.listen(LISTEN_BACKLOG)
        if mode == "refuse":
            self._stop_accepting(endpoint)
            if endpoint.sock is not None:
                endpoint.sock.close()
                endpoint.sock = None
            self._cut_connections(endpoint)
        elif mode == "blackhole":
            self._stop_accepting(endpoint)
            if endpoint.sock is None:
                endpoint.sock = self._listen(endpoint.port)
            # A full accept queue of length one: the kernel drops every further SYN.
            endpoint.sock.listen(0)
            for _ in range(2):
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                filler.setblocking(False)
                filler.connect_ex((self.host, endpoint.port))
                endpoint.fillers.append(filler)
        else:
            if endpoint.sock is None:
                endpoint.sock = self._listen(endpoint.port)
            self._start_accepting(endpoint)
        if self._changed is not None:
            changed = self._changed

            async def notify() -> None:
                async with changed:
                    changed.notify_all()

            asyncio.get_running_loop().create_task(notify())

    def _cut_connections(self, endpoint: _Endpoint) -> None:
        if self._runner is None or self._runner.server is None:
            return
        for handler in list(self._runner.server.connections):
            transport = handler.transport
            if transport is None:
                continue
            sockname = transport.get_extra_info("sockname")
            if sockname and sockname[1] == endpoint.port:
                transport.abort()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve every endpoint on the running loop. OSError when a port cannot be bound."""
        if self._runner is not None:
            raise RuntimeError("the ARC cluster emulator is already running")
        app = web.Application()
        app.router.add_post(ENDPOINT_PATH, self._api)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        try:
            for endpoint in self._endpoints.values():
                endpoint.sock = self._listen(0)
                endpoint.port = int(endpoint.sock.getsockname()[1])
                wanted, endpoint.mode = endpoint.mode, "up"
                self._start_accepting(endpoint)
                if wanted != "up":
                    self._apply_mode(endpoint, wanted)
        except BaseException:
            await self.stop()
            raise
        log.info("arc_cluster_started", endpoints=self.endpoints)

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        for endpoint in self._endpoints.values():
            self._stop_accepting(endpoint)
            for filler in endpoint.fillers:
                filler.close()
            endpoint.fillers.clear()
            if endpoint.sock is not None:
                endpoint.sock.close()
                endpoint.sock = None
        runner, self._runner = self._runner, None
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()
        if runner is not None:
            await runner.cleanup()
            log.info("arc_cluster_stopped")
        self._loop = None

    @property
    def endpoint_url(self) -> str:
        """A cluster has five: :attr:`endpoints`."""
        raise AttributeError("an ARC cluster has one endpoint per region: use .endpoints")

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _start_accepting(self, endpoint: _Endpoint) -> None:
        if endpoint.accept_task is None or endpoint.accept_task.done():
            endpoint.accept_task = asyncio.get_running_loop().create_task(
                self._accept(endpoint), name=f"arc-accept-{endpoint.region}"
            )

    @staticmethod
    def _stop_accepting(endpoint: _Endpoint) -> None:
        task, endpoint.accept_task = endpoint.accept_task, None
        if task is not None:
            task.cancel()

    async def _accept(self, endpoint: _Endpoint) -> None:
        loop = asyncio.get_running_loop()
        runner = self._runner
        assert runner is not None and runner.server is not None
        sock = endpoint.sock
        assert sock is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError:
                return  # the socket was closed under us: a mode change or stop
            conn.setblocking(False)
            try:
                await loop.connect_accepted_socket(runner.server, conn)
            except OSError:
                conn.close()

    # --- the API ----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        endpoint = next(
            (e for e in self._endpoints.values() if sockname and e.port == sockname[1]), None
        )
        if endpoint is None:
            raise web.HTTPNotFound()
        raw = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        prefix, _, operation = target.partition(".")
        auth = request.headers.get("Authorization", "")
        self._record(endpoint.region, operation or target, auth, raw)
        if endpoint.mode == "blackhole" and not await self._hang(endpoint, request):
            return web.Response(status=504)  # nobody is waiting for it any more
        if endpoint.mode == "refuse":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if endpoint.delay:
            await asyncio.sleep(endpoint.delay)
        try:
            fault = _FAULTS.get(endpoint.mode)
            if fault is not None:
                raise fault()
            if prefix != TARGET_PREFIX or not operation:
                raise _validation(
                    "X-Amz-Target", f"unknown operation {target!r}", "unknownOperation"
                )
            handler = self._handlers().get(operation)
            if handler is None:
                raise _validation(
                    "X-Amz-Target", f"unknown operation {operation!r}", "unknownOperation"
                )
            if not auth:
                raise ArcApiError(
                    "MissingAuthenticationTokenException",
                    "Missing Authentication Token",
                    status=403,
                )
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != JSON_CONTENT_TYPE:
                raise _validation("Content-Type", f"expected {JSON_CONTENT_TYPE}", "cannotParse")
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise _validation("body", "the request body is not JSON", "cannotParse") from None
            if not isinstance(body, dict):
                raise _validation("body", "the request body must be a JSON object", "cannotParse")
            if operation in MUTATING:
                self._take_mutation(endpoint)
            with self._lock:
                payload = handler(body)
            return _json_response(200, payload)
        except ArcApiError as err:
            return _json_response(err.status, err.body(), err.type)

    async def _hang(self, endpoint: _Endpoint, request: web.Request) -> bool:
        """Hold a request that reached a blackholed endpoint on an open connection: never
        answered while the mode lasts (bounded by :data:`HANG_CAP`). False when the client
        left meanwhile."""
        changed = self._changed
        assert changed is not None
        deadline = asyncio.get_running_loop().time() + HANG_CAP
        while endpoint.mode == "blackhole" and self._runner is not None:
            transport = request.transport
            if transport is None or transport.is_closing():
                return False
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            async with changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=min(1.0, remaining))
        return True

    def _take_mutation(self, endpoint: _Endpoint) -> None:
        limit = self.mutations_per_second
        if limit is None:
            return
        now = self._clock.monotonic()
        with self._lock:
            while endpoint.mutations and endpoint.mutations[0] <= now - 1.0:
                endpoint.mutations.popleft()
            if len(endpoint.mutations) >= limit:
                raise ArcApiError(
                    "ThrottlingException",
                    f"Rate exceeded: at most {limit} mutating calls per second per endpoint",
                    retryAfterSeconds=1,
                )
            endpoint.mutations.append(now)

    def _record(self, region: str, operation: str, auth: str, raw: bytes) -> None:
        match = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", auth)
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        with self._lock:
            self._calls[(operation, region)] += 1
            self._requests.append(
                {
                    "region": region,
                    "operation": operation,
                    "signing_region": match.group(1) if match else None,
                    "body": body,
                }
            )

    def _handlers(self) -> dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]]:
        return {
            "GetRoutingControlState": self._get_state,
            "UpdateRoutingControlState": self._update_state,
            "UpdateRoutingControlStates": self._update_states,
            "ListRoutingControls": self._list,
        }

    def _control(self, body: Mapping[str, Any], key: str = "RoutingControlArn") -> _RoutingControl:
        arn = _arn(body.get(key), key)
        control = self._controls.get(arn)
        if control is None:
            raise _not_found(arn, "RoutingControl")
        return control

    def _get_state(self, body: Mapping[str, Any]) -> dict[str, Any]:
        control = self._control(body)
        return {
            "RoutingControlArn": control.arn,
            "RoutingControlState": control.state,
            "RoutingControlName": control.name,
        }

    def _update_state(self, body: Mapping[str, Any]) -> dict[str, Any]:
        entry = {k: body.get(k) for k in ("RoutingControlArn", "RoutingControlState")}
        self._transact([entry], body.get("SafetyRulesToOverride"), prefix="")
        return {}

    def _update_states(self, body: Mapping[str, Any]) -> dict[str, Any]:
        entries = body.get("UpdateRoutingControlStateEntries")
        if not isinstance(entries, list):
            raise _validation("UpdateRoutingControlStateEntries", "must be a list of entries")
        if not entries:
            raise _validation("UpdateRoutingControlStateEntries", "must not be empty")
        if len(entries) > MAX_UPDATE_ENTRIES:
            raise ArcApiError(
                "ServiceLimitExceededException",
                f"At most {MAX_UPDATE_ENTRIES} routing control states can be updated in one"
                f" request, got {len(entries)}",
                limitCode="RoutingControlsPerUpdate",
                serviceCode="route53-recovery-cluster",
            )
        self._transact(
            entries, body.get("SafetyRulesToOverride"), prefix="UpdateRoutingControlStateEntries"
        )
        return {}

    def _transact(self, entries: list[Any], overrides: Any, *, prefix: str) -> None:
        """Validate, check the safety rules against the whole change, apply all or none."""
        wanted: dict[str, str] = {}
        for i, entry in enumerate(entries):
            where = f"{prefix}.{i + 1}." if prefix else ""
            if not isinstance(entry, dict):
                raise _validation(f"{prefix}.{i + 1}", "must be an object")
            arn = _arn(entry.get("RoutingControlArn"), f"{where}RoutingControlArn")
            state = entry.get("RoutingControlState")
            if state not in STATES:
                raise _validation(
                    f"{where}RoutingControlState", f"must be one of On, Off; got {state!r}"
                )
            if arn in wanted:
                raise _validation(f"{where}RoutingControlArn", f"{arn} is listed twice")
            if arn not in self._controls:
                raise _not_found(arn, "RoutingControl")
            wanted[arn] = str(state)
        skip: set[str] = set()
        if overrides is not None:
            if not isinstance(overrides, list):
                raise _validation("SafetyRulesToOverride", "must be a list of ARNs")
            skip = {_arn(a, f"SafetyRulesToOverride.{i + 1}") for i, a in enumerate(overrides)}
        before = {arn: c.state for arn, c in self._controls.items()}
        after = {**before, **wanted}
        changed = {arn for arn, state in wanted.items() if before[arn] != state}
        for rule in self._rules.values():
            if rule.arn in skip or not changed:
                continue
            if rule.kind == "assertion":
                broken = bool(changed & set(rule.controls)) and not rule.holds(after)
            else:
                broken = bool(changed & set(rule.targets)) and not rule.holds(before)
            if broken:
                raise ArcApiError(
                    "ConflictException",
                    f"The {rule.kind} safety rule {rule.name} ({rule.describe()}) is not"
                    f" satisfied by this request; the routing control states were not changed."
                    f" Override it with SafetyRulesToOverride to proceed anyway.",
                    resourceId=rule.arn,
                    resourceType="SafetyRule",
                )
        for arn, state in wanted.items():
            self._set(arn, state)

    def _list(self, body: Mapping[str, Any]) -> dict[str, Any]:
        panel = body.get("ControlPanelArn")
        if panel is not None:
            panel = _arn(panel, "ControlPanelArn")
            if panel not in self._panels:
                raise _not_found(panel, "ControlPanel")
        size = body.get("MaxResults", DEFAULT_PAGE)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise _validation("MaxResults", f"must be an integer of at least 1, got {size!r}")
        items = sorted(
            (c for c in self._controls.values() if panel in (None, c.panel)),
            key=lambda c: (self._panels[c.panel].name, c.name),
        )
        digest = hashlib.sha256(f"{panel}".encode()).hexdigest()[:12]
        offset = 0
        token = body.get("NextToken")
        if token is not None:
            offset = self._read_token(token, digest)
        page = items[offset : offset + size]
        out: dict[str, Any] = {
            "RoutingControls": [
                {
                    "ControlPanelArn": c.panel,
                    "ControlPanelName": self._panels[c.panel].name,
                    "RoutingControlArn": c.arn,
                    "RoutingControlName": c.name,
                    "RoutingControlState": c.state,
                    "Owner": self.account_id,
                }
                for c in page
            ]
        }
        end = offset + len(page)
        if end < len(items):
            raw = json.dumps({"o": end, "q": digest, "n": self._nonce}).encode()
            out["NextToken"] = base64.urlsafe_b64encode(raw).decode()
        return out

    def _read_token(self, token: object, digest: str) -> int:
        invalid = _validation("NextToken", "the token is not valid for this request")
        if not isinstance(token, str) or not 1 <= len(token) <= MAX_TOKEN:
            raise invalid
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
        except (ValueError, binascii.Error):
            raise invalid from None
        if (
            not isinstance(data, dict)
            or data.get("q") != digest
            or data.get("n") != self._nonce
            or not isinstance(data.get("o"), int)
            or data["o"] < 0
        ):
            raise invalid
        offset: int = data["o"]
        return offset


_FAULTS: dict[str, Callable[[], ArcApiError]] = {
    "unavailable": lambda: ArcApiError(
        "EndpointTemporarilyUnavailableException",
        "The cluster endpoint isn't available. Try another cluster endpoint.",
    ),
    "throttle": lambda: ArcApiError("ThrottlingException", "Rate exceeded", retryAfterSeconds=1),
    "internal_error": lambda: ArcApiError(
        "InternalServerException",
        "There was an unexpected error during processing of the request.",
        status=500,
        retryAfterSeconds=1,
    ),
}


def _arn(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _validation(where, "must be a non-empty string")
    if len(value) > MAX_ARN:
        raise _validation(where, f"must be at most {MAX_ARN} characters")
    if not _ARN.match(value):
        raise _validation(where, f"must match {_ARN.pattern}")
    return value


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"a name is 1-64 characters without white space, got {name!r}")


def _json_response(
    status: int, payload: Mapping[str, Any], error: str | None = None
) -> web.Response:
    headers = {"x-amzn-RequestId": str(uuid.uuid4())}
    if error is not None:
        headers["x-amzn-ErrorType"] = error
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )

"""The sandbox's control endpoint: faults injected into the running sandbox over HTTP.

``POST /faults`` with ``{"fault": "<name>", "arg": "<region|duration|service>"}`` applies a
fault at once and answers ``{"ok": true, "message": ...}``; an unknown fault or a bad
argument is a 400 ``{"ok": false, "message": ...}`` that says what is wrong. ``GET /state``
answers the endpoints' modes and the replica lag being published. The endpoint listens on
127.0.0.1 only and has no authentication: it can break the sandbox, nothing else.

:func:`send_fault` is the client (``failoverd sandbox fault``).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.policy.durations import DurationError, parse_duration
from orchestrator.sandbox.arc_cluster import ArcClusterEmulator
from orchestrator.sandbox.aws_faults import AwsFaultError, parse_error_rate, parse_region
from orchestrator.sandbox.fault_proxy import FaultProxy, ThrottleSpecError, parse_throttle
from orchestrator.sandbox.health_api import HealthApiEmulator
from orchestrator.sandbox.region_endpoints import RegionEndpoints, local_down_supported
from orchestrator.sandbox.region_switch_api import RegionSwitchEmulator
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.control")

FAULTS = (
    "region-down",
    "region-up",
    "slow",
    "aws-errors",
    "blackhole",
    "flap",
    "health-event",
    "lag",
    "throttle",
    "local-down",
    "control-plane-down",
    "arc-endpoint-down",
)
HEALTH_SERVICE = "EC2"  # one of the services the example's aws_health signal watches
CLIENT_TIMEOUT = 10.0  # seconds, per control request


class FaultError(ValueError):
    """A fault that cannot be applied: unknown, or a bad argument. The message says why."""


@dataclass
class Faults:
    """What the faults act on. ``apply`` is atomic per fault and idempotent (the same fault
    twice leaves the sandbox as once), except ``health-event``, which opens one more event."""

    endpoints: RegionEndpoints
    health: HealthApiEmulator
    publish_lag: Callable[[float], None]  # blocking; puts one datapoint now
    lag_seconds: float = 5.0
    health_events: dict[str, list[str]] = field(default_factory=dict)
    proxy: FaultProxy | None = None  # between the daemon and moto; None: no throttling
    arc: ArcClusterEmulator | None = None  # the ARC cluster's five endpoints
    # Endpoints of the cluster taken down by `control-plane-down` (restored by its `off`).
    held_arc_endpoints: set[str] = field(default_factory=set)
    # Told when a region goes down (False) or comes back (True): the emulated world beyond
    # the endpoints (Aurora replication stops shipping from a region that is down).
    on_region: Callable[[str, bool], None] | None = None
    # More of the world's state for GET /state (e.g. Aurora positions and lost writes).
    world_state: Callable[[], dict[str, Any]] | None = None
    # ARC Region switch: region-down/up take the region's Region switch endpoint with it.
    region_switch: RegionSwitchEmulator | None = None

    async def apply(self, fault: str, arg: str) -> str:
        if fault in ("aws-errors", "blackhole"):
            return self._aws_fault(fault, arg)
        if fault in ("region-down", "region-up", "slow", "flap", "health-event", "local-down"):
            self.endpoints.get(arg)  # a clear error for an unknown region
        if fault == "region-down":
            self.endpoints.set_mode(arg, "down")
            if self.on_region is not None:
                self.on_region(arg, False)
            if self.region_switch is not None:
                self.region_switch.set_region_down(arg)
            return f"{arg}: the endpoint answers 503"
        if fault == "slow":
            self.endpoints.set_mode(arg, "slow")
            return f"{arg}: the endpoint answers after the probe timeout"
        if fault == "flap":
            self.endpoints.set_mode(arg, "flap")
            return f"{arg}: the endpoint alternates between 200 and 503"
        if fault == "local-down":
            if not local_down_supported():
                raise FaultError("local-down needs Linux: it tells the daemon's probes by /proc")
            self.endpoints.set_mode(arg, "local-down")
            return f"{arg}: the endpoint answers 503 to the daemon's own probes, 200 to agents"
        if fault == "region-up":
            self.endpoints.set_mode(arg, "up")
            if self.on_region is not None:
                self.on_region(arg, True)
            if self.region_switch is not None:
                self.region_switch.set_region_down(arg, down=False)
            for arn in self.health_events.pop(arg, []):
                self.health.close_event(arn)
            return f"{arg}: the endpoint is healthy, its Health events closed"
        if fault == "health-event":
            arn = self.health.open_event(
                HEALTH_SERVICE, arg, description=f"sandbox: operational issue in {arg}"
            )
            self.health_events.setdefault(arg, []).append(arn)
            return f"{arg}: AWS Health event open ({arn})"
        if fault == "lag":
            try:
                seconds = parse_duration(arg)
            except DurationError as exc:
                raise FaultError(f"lag: {exc}") from None
            if seconds < 0:
                raise FaultError("lag: must not be negative")
            self.lag_seconds = seconds
            await asyncio.to_thread(self.publish_lag, seconds)
            return f"replica lag is now {arg}"
        if fault == "control-plane-down":
            return self._control_plane_down(arg)
        if fault == "arc-endpoint-down":
            return self._arc_endpoint_down(arg)
        if fault == "throttle":
            if self.proxy is None:
                raise FaultError("throttle: this sandbox has no fault proxy in front of moto")
            try:
                spec = parse_throttle(arg)
            except ThrottleSpecError as exc:
                raise FaultError(str(exc)) from None
            return self.proxy.set_throttle(spec)
        raise FaultError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")

    def _aws_fault(self, fault: str, arg: str) -> str:
        if self.proxy is None:
            raise FaultError(f"{fault}: this sandbox has no fault proxy in front of moto")
        try:
            if fault == "aws-errors":
                return self.proxy.chaos.set_errors(parse_error_rate(arg))
            return self.proxy.chaos.set_blackhole(parse_region(arg, fault))
        except AwsFaultError as exc:
            raise FaultError(str(exc)) from None

    def _control_plane_down(self, arg: str) -> str:
        """Every AWS API of a region fails (the proxy), its ARC endpoint is blackholed, and
        when the region is us-east-1 the AWS Health API (served from there) is unavailable.
        ``off`` undoes all of it."""
        if self.proxy is None:
            raise FaultError("control-plane-down: this sandbox has no fault proxy in front of moto")
        region = arg.strip()
        if region in ("off", "none"):
            message = self.proxy.set_control_plane_down(None)
            for held in sorted(self.held_arc_endpoints):
                if self.arc is not None:
                    self.arc.set_endpoint_mode(held, "up")
            self.held_arc_endpoints.clear()
            self.health.set_mode("normal")
            return message
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", region):
            raise FaultError(
                f"control-plane-down: expected a region (us-east-1) or off, got {arg!r}"
            )
        message = self.proxy.set_control_plane_down(region)
        if self.arc is not None and region in self.arc.regions:
            self.arc.set_endpoint_mode(region, "blackhole")
            self.held_arc_endpoints.add(region)
            message += f"; the ARC cluster's {region} endpoint is blackholed"
        if region == "us-east-1":
            self.health.set_mode("unavailable")
            message += "; the AWS Health API (us-east-1) answers 503"
        return message + "; DNS answers and region endpoints go on"

    def _arc_endpoint_down(self, arg: str) -> str:
        """Blackhole the ARC cluster's endpoint in each listed region (comma-separated,
        added to those already down); ``off`` brings them back."""
        if self.arc is None:
            raise FaultError("arc-endpoint-down: this sandbox runs no ARC cluster")
        text = arg.strip()
        if text in ("off", "none"):
            for region in self.arc.regions:
                if region not in self.held_arc_endpoints:
                    self.arc.set_endpoint_mode(region, "up")
            return "ARC cluster: every endpoint answers" + (
                f" but {', '.join(sorted(self.held_arc_endpoints))} (control-plane-down)"
                if self.held_arc_endpoints
                else ""
            )
        regions = [r.strip() for r in text.split(",") if r.strip()]
        unknown = [r for r in regions if r not in self.arc.regions]
        if not regions or unknown:
            raise FaultError(
                f"arc-endpoint-down: the cluster's endpoints are in {', '.join(self.arc.regions)}"
                f" (or off); got {arg!r}"
            )
        for region in regions:
            self.arc.set_endpoint_mode(region, "blackhole")
        down = [r for r in self.arc.regions if self.arc.endpoint_mode(r) != "up"]
        return (
            f"ARC cluster: {', '.join(regions)} blackholed (connections time out);"
            f" {len(self.arc.regions) - len(down)} of {len(self.arc.regions)} endpoints answer"
        )

    def state(self) -> dict[str, Any]:
        return {
            "endpoints": {r: e.mode for r, e in self.endpoints.endpoints.items()},
            "aws_faults": None if self.proxy is None else self.proxy.chaos.describe(),
            "lag_seconds": self.lag_seconds,
            "health_events": self.health_events,
            "throttled": None if self.proxy is None else self.proxy.throttled.service,
            "control_plane_down": None if self.proxy is None else self.proxy.control_plane_down,
            "arc_endpoints": {}
            if self.arc is None
            else {r: self.arc.endpoint_mode(r) for r in self.arc.regions},
            **(self.world_state() if self.world_state is not None else {}),
        }


class ControlServer:
    """The control endpoint on 127.0.0.1 (kernel-chosen port). ``stop`` is idempotent."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/faults", self._fault)
        app.router.add_get("/state", self._state)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"ok": False, "message": "the body is not JSON"}, status=400)
        if not isinstance(body, dict):
            body = {}
        fault, arg = body.get("fault"), body.get("arg")
        if not isinstance(fault, str) or not isinstance(arg, str):
            message = 'expected {"fault": "<name>", "arg": "<argument>"} with strings'
            return web.json_response({"ok": False, "message": message}, status=400)
        try:
            message = await self.faults.apply(fault, arg)
        except (FaultError, ValueError) as exc:
            return web.json_response({"ok": False, "message": str(exc)}, status=400)
        log.info("sandbox_fault_injected", fault=fault, arg=arg)
        return web.json_response({"ok": True, "message": message})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.state())


def send_fault(control_url: str, fault: str, arg: str) -> str:
    """Ask the sandbox at ``control_url`` to apply a fault; its message. Raises
    :class:`FaultError` when the sandbox refuses, OSError when it cannot be reached."""
    request = urllib.request.Request(
        f"{control_url.rstrip('/')}/faults",
        data=json.dumps({"fault": fault, "arg": arg}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as response:
            return str(json.loads(response.read())["message"])
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise FaultError(str(message)) from None

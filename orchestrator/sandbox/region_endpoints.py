"""Loopback HTTP servers standing in for each region's service endpoint in the sandbox.

Each region gets one small aiohttp server answering ``GET /healthz`` with 200
``{"status":"ok"}`` while healthy. A fault mode changes what the probes see:

* ``down`` — 503 (the service is reachable but failing, as behind a load balancer);
* ``slow`` — the answer is held for :data:`SLOW_DELAY` seconds, past any sandbox probe
  timeout, so the probe times out;
* ``flap`` — alternates between a 200 and a 503, request by request;
* ``up`` — healthy again.

The same port also accepts TCP connections, so a ``tcp`` signal can point at it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.endpoints")

Mode = Literal["up", "down", "slow", "flap"]
MODES: tuple[Mode, ...] = ("up", "down", "slow", "flap")
SLOW_DELAY = 5.0  # seconds; well past the sandbox policy's 500 ms probe timeout
OK_BODY = '{"status":"ok"}'


@dataclass
class RegionEndpoint:
    """One region's endpoint: its fault mode and the requests it has answered."""

    region: str
    mode: Mode = "up"
    port: int = 0
    hits: int = 0
    _flap_next_ok: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(SLOW_DELAY)
            return web.Response(text=OK_BODY, content_type="application/json")
        if mode == "flap":
            self._flap_next_ok = not self._flap_next_ok
            if self._flap_next_ok:
                return web.Response(text=OK_BODY, content_type="application/json")
            return web.Response(status=503, text='{"status":"flapping"}')
        if mode == "down":
            return web.Response(status=503, text='{"status":"down"}')
        return web.Response(text=OK_BODY, content_type="application/json")


class RegionEndpoints:
    """The servers for a set of regions on 127.0.0.1 (kernel-chosen ports).

    ``start`` and ``stop`` run on the caller's loop; ``stop`` is idempotent. ``set_mode``
    takes effect for the next request.
    """

    def __init__(self, regions: list[str]) -> None:
        if not regions:
            raise ValueError("at least one region is needed")
        self.endpoints = {region: RegionEndpoint(region) for region in regions}
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        for endpoint in self.endpoints.values():
            app = web.Application()
            app.router.add_get("/healthz", endpoint.handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            self._runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            endpoint.port = int(runner.addresses[0][1])
            log.info("sandbox_endpoint_started", region=endpoint.region, port=endpoint.port)

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    def get(self, region: str) -> RegionEndpoint:
        try:
            return self.endpoints[region]
        except KeyError:
            known = ", ".join(sorted(self.endpoints))
            raise ValueError(f"unknown region {region!r}; the sandbox has {known}") from None

    def set_mode(self, region: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        endpoint = self.get(region)
        endpoint.mode = mode
        log.info("sandbox_endpoint_mode", region=region, mode=mode)

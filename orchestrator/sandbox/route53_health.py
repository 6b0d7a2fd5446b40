"""What Route 53's health checkers would see in the sandbox: the status of each health check.

moto stores health checks but never evaluates them. The sandbox's DNS server and its
``GetHealthCheckStatus`` (see :mod:`orchestrator.sandbox.moto_route53_fixups`) ask this
module instead, so that answers follow the emulated world:

* ``RECOVERY_CONTROL`` — healthy while the routing control is ``On`` in the ARC cluster
  emulator (unknown routing control: unhealthy);
* ``HTTP``/``HTTPS``/``*_STR_MATCH``/``TCP`` — the region endpoint the check points at, by
  ``IPAddress``/``Port`` (a sandbox endpoint's port) or by a region name in its
  ``FullyQualifiedDomainName`` (``catalog.us-east-1.shop.example.com``): unhealthy while that
  endpoint is ``down`` or ``slow`` (a checker sees 503s or time-outs); ``flap`` stays
  healthy (three failures in a row never come), ``local-down`` too (only the daemon's own
  probes fail); a check of something the sandbox does not run is healthy;
* ``CALCULATED`` — healthy while at least ``HealthThreshold`` children are;
* ``CLOUDWATCH_METRIC`` — healthy (the sandbox runs no alarms for Route 53);
* ``Disabled`` counts as healthy and ``Inverted`` negates, as Route 53 documents.

Statuses change at once; real Route 53 needs the failure threshold times the request interval
(routing-control health checks: seconds) before DNS answers follow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

RECOVERY_CONTROL = "RECOVERY_CONTROL"
ENDPOINT_TYPES = frozenset({"HTTP", "HTTPS", "HTTP_STR_MATCH", "HTTPS_STR_MATCH", "TCP"})
UNHEALTHY_MODES = frozenset({"down", "slow"})
_MAX_DEPTH = 8  # calculated health checks nest; a loop must not hang the evaluator


class RoutingControlStates(Protocol):
    def state(self, routing_control_arn: str) -> str: ...


class Endpoint(Protocol):
    @property
    def port(self) -> int: ...

    @property
    def mode(self) -> str: ...


class SandboxHealth:
    """Evaluates health-check configurations (``HealthCheckConfig`` as Route 53 returns
    them) against the ARC cluster and the region endpoints. Thread-safe: reads only."""

    def __init__(
        self,
        arc: RoutingControlStates | None = None,
        endpoints: Mapping[str, Endpoint] | None = None,
    ) -> None:
        self.arc = arc
        self.endpoints = dict(endpoints or {})

    def healthy(
        self, health_check_id: str, checks: Mapping[str, Mapping[str, Any]], _depth: int = 0
    ) -> bool:
        """The status of ``health_check_id`` among ``checks`` (id -> HealthCheckConfig).
        A health check that does not exist counts as healthy."""
        config = checks.get(health_check_id)
        if config is None or _depth > _MAX_DEPTH:
            return True
        base = True if config.get("Disabled") else self._measured(config, checks, _depth)
        return base != bool(config.get("Inverted"))

    def _measured(
        self, config: Mapping[str, Any], checks: Mapping[str, Mapping[str, Any]], depth: int
    ) -> bool:
        kind = config.get("Type")
        if kind == RECOVERY_CONTROL:
            arn = config.get("RoutingControlArn")
            if self.arc is None or not isinstance(arn, str):
                return False
            try:
                return self.arc.state(arn) == "On"
            except KeyError:
                return False
        if kind == "CALCULATED":
            children = list(config.get("ChildHealthChecks") or [])
            threshold = int(config.get("HealthThreshold") or 0)
            up = sum(1 for child in children if self.healthy(child, checks, depth + 1))
            return up >= threshold
        if kind in ENDPOINT_TYPES:
            endpoint = self._endpoint(config)
            return endpoint is None or endpoint.mode not in UNHEALTHY_MODES
        return True

    def _endpoint(self, config: Mapping[str, Any]) -> Endpoint | None:
        port = config.get("Port")
        if config.get("IPAddress") in ("127.0.0.1", "::1") and port is not None:
            for endpoint in self.endpoints.values():
                if endpoint.port == int(port):
                    return endpoint
        name = str(config.get("FullyQualifiedDomainName") or "").lower()
        for region, endpoint in self.endpoints.items():
            if re.search(rf"(^|[.-]){re.escape(region)}([.-]|$)", name):
                return endpoint
        return None

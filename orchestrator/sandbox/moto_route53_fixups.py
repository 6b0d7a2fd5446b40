"""Fix-ups of moto's Route 53 for routing-control health checks and DNS in the sandbox.

The patches live here and are registered, by name, in :data:`orchestrator.sandbox.moto_fixups.
FIXUPS` (applied with the others by ``apply_moto_fixups``; ``without_moto_fixups(name)``
restores moto's own behaviour); each is shown by a test
(tests/integration/sandbox/test_moto_route53_fixups.py) to close a real gap:

* ``route53_recovery_control_health_checks`` — a health check of type ``RECOVERY_CONTROL``
  keeps the ``RoutingControlArn`` it was created with, and reads back without the
  ``IPAddress``/``Port``/``RequestInterval``/``FailureThreshold`` moto invents for it (AWS
  shows the type and the routing control); moto drops the ARN, so nothing could tell which
  routing control a record follows.
* ``route53_soa_record`` — a new zone's SOA record reads back as the SOA text (``ns-2048.
  awsdns-64.com. hostmaster.example.com. 1 7200 900 1209600 86400``); moto answers the
  Python repr of a dict (``{'Value': ...}``), which no DNS server could serve.
* ``route53_health_check_status`` — ``GetHealthCheckStatus`` reports what the sandbox's
  health evaluation says (:func:`set_health_status_provider`: routing-control health checks
  follow ARC, the others the sandbox's region endpoints), as the DNS answers do; moto always
  reports success.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from moto.core.responses import ActionResult
from moto.route53.models import HealthCheck, Route53Backend
from moto.route53.responses import Route53

RECOVERY_CONTROL = "RECOVERY_CONTROL"
# Health check id -> healthy (True/False), or None when the provider cannot tell.
HealthStatusProvider = Callable[[str], bool | None]
_provider: HealthStatusProvider | None = None

_ORIGINAL_CREATE = Route53.create_health_check
_ORIGINAL_STATUS = Route53.get_health_check_status
_ORIGINAL_CONFIG = HealthCheck.health_check_config
_ORIGINAL_ZONE = Route53Backend.create_hosted_zone


def set_health_status_provider(provider: HealthStatusProvider | None) -> None:
    """Who answers ``GetHealthCheckStatus`` (None: every check succeeds, moto's way)."""
    global _provider
    _provider = provider


def _create_health_check(self: Any) -> ActionResult:
    result = _ORIGINAL_CREATE(self)
    config = self._get_param("HealthCheckConfig") or {}
    health_check = result.result["HealthCheck"]  # type: ignore[index]
    health_check.routing_control_arn = config.get("RoutingControlArn")
    return result


def _health_check_config(self: Any) -> dict[str, Any]:
    config: dict[str, Any] = _ORIGINAL_CONFIG.fget(self)  # type: ignore[attr-defined]
    if self.type_ == RECOVERY_CONTROL:
        for invented in ("IPAddress", "Port", "RequestInterval", "FailureThreshold"):
            config.pop(invented, None)
        config.pop("MeasureLatency", None)
        config["RoutingControlArn"] = getattr(self, "routing_control_arn", None)
    return config


def _create_hosted_zone(self: Any, *args: Any, **kwargs: Any) -> Any:
    zone = _ORIGINAL_ZONE(self, *args, **kwargs)
    for rrset in zone.rrsets:
        if rrset.type == "SOA":
            rrset.records = [r["Value"] if isinstance(r, dict) else r for r in rrset.records]
    return zone


def _get_health_check_status(self: Any) -> ActionResult:
    provider = _provider
    if provider is None:
        return _ORIGINAL_STATUS(self)
    health_check_id = self._get_param("HealthCheckId")
    self.backend.get_health_check(health_check_id)  # NoSuchHealthCheck, as moto answers it
    healthy = provider(health_check_id)
    if healthy is None:
        status = "Failure: the sandbox cannot tell this health check's status"
    elif healthy:
        status = "Success: HTTP Status Code 200, OK"
    else:
        status = "Failure: the endpoint (or routing control) is unhealthy"
    observation = {
        "Region": "us-east-1",
        "IPAddress": "127.0.0.1",
        "StatusReport": {"Status": status, "CheckedTime": datetime.now(UTC)},
    }
    return ActionResult({"HealthCheckObservations": [observation]})


def health_status_from_backend(
    evaluate: Callable[[str, dict[str, dict[str, Any]]], bool],
) -> HealthStatusProvider:
    """A provider that evaluates a health check with the configurations moto's (in-process)
    backend holds, e.g. :meth:`SandboxHealth.healthy`."""
    from moto.route53.models import route53_backends

    def provider(health_check_id: str) -> bool | None:
        checks: dict[str, dict[str, Any]] = {}
        for account in list(route53_backends.keys()):
            backend = route53_backends[account]["aws"]
            for check_id, check in list(backend.health_checks.items()):
                checks[check_id] = check.health_check_config
        if health_check_id not in checks:
            return None
        return evaluate(health_check_id, checks)

    return provider


# name -> (class, attribute, replacement), for moto_fixups.FIXUPS
PATCHES: dict[str, tuple[Any, str, Any]] = {
    "route53_recovery_control_health_checks": (
        Route53,
        "create_health_check",
        _create_health_check,
    ),
    "route53_recovery_control_health_check_config": (
        HealthCheck,
        "health_check_config",
        property(_health_check_config),
    ),
    "route53_soa_record": (Route53Backend, "create_hosted_zone", _create_hosted_zone),
    "route53_health_check_status": (
        Route53,
        "get_health_check_status",
        _get_health_check_status,
    ),
}

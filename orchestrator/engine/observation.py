"""The one record every signal source produces."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FailureKind(StrEnum):
    """Why a probe failed: a small fixed vocabulary, safe as a metric label."""

    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    STATUS = "status"
    BODY = "body"
    EVENT = "event"  # an AWS Health event is open
    ALARM = "alarm"  # a CloudWatch alarm is in ALARM
    HEALTH_API_UNAVAILABLE = "health_api_unavailable"
    NO_DATA = "no_data"


@dataclass(frozen=True, slots=True)
class Observation:
    """What one vantage point saw of one signal of one region at one moment.

    ``ok`` is True (success), False (failure) or None (the observer could not tell: that is
    *unknown*, never healthy and never down). ``at`` is seconds on the daemon's clock (the
    scenario simulator's virtual clock in tests).
    """

    service: str
    region: str
    signal: str
    vantage: str
    ok: bool | None
    at: float
    source: str = ""
    target: str = ""
    latency: float | None = None
    detail: str = ""

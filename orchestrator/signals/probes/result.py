"""What one probe saw, and the contract every prober keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from orchestrator.engine.observation import FailureKind

# The reasons a synthetic probe can fail for: a fixed vocabulary, safe as a metric label.
PROBE_FAILURE_KINDS = frozenset(
    {
        FailureKind.DNS,
        FailureKind.CONNECT,
        FailureKind.TLS,
        FailureKind.TIMEOUT,
        FailureKind.STATUS,
        FailureKind.BODY,
    }
)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome.

    ``latency`` is the seconds the probe took, success or not (as blackbox_exporter's
    ``probe_duration_seconds``). ``reason`` is set exactly when ``ok`` is False and is one of
    :data:`PROBE_FAILURE_KINDS`; ``detail`` is a short human explanation (logs, evidence), never
    a metric label.
    """

    ok: bool
    latency: float
    reason: FailureKind | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.ok and self.reason is not None:
            raise ValueError(f"a successful probe has no failure reason, got {self.reason}")
        if not self.ok and self.reason not in PROBE_FAILURE_KINDS:
            raise ValueError(
                f"a failed probe needs a reason out of"
                f" {', '.join(sorted(PROBE_FAILURE_KINDS))}, got {self.reason!r}"
            )

    @classmethod
    def success(cls, latency: float, detail: str = "") -> ProbeResult:
        return cls(True, latency, None, detail)

    @classmethod
    def failure(cls, reason: FailureKind, latency: float, detail: str) -> ProbeResult:
        return cls(False, latency, reason, detail)


class Prober(Protocol):
    """Probes one kind of target with one signal's expectations.

    Contract:

    * ``probe`` never raises for anything the target, the network or a resolver does: every
      such failure is a :class:`ProbeResult` with a reason. An exception out of it is a bug
      (the scheduler reports that observation as *unknown*). Cancellation propagates.
    * ``probe`` is bounded in time: it returns within ``timeout`` seconds (plus event-loop
      scheduling slack), with reason ``timeout`` when the deadline cut it short.
    * ``probe`` is read-only toward the target (a GET, a connect, a handshake, a query) and
      safe to call concurrently, for the same target or different ones.
    * ``validate`` is cheap, does no I/O, and raises ``ValueError`` with a specific message
      when ``target`` cannot be probed at all (malformed URL, missing port...), so that a
      bad target is refused when the scheduler is built rather than at every probe.
    """

    type: str
    timeout: float

    def validate(self, target: str) -> None: ...

    async def probe(self, target: str) -> ProbeResult: ...


def clip(text: str, limit: int = 120) -> str:
    """Keep details short: they end up in logs and evidence."""
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""The controller's intake: a burst of failures (closer together than the probe interval
allows) is refused by the health book, counted by source and reason, and logged once per
minute per vantage point; it never makes a region down."""

from __future__ import annotations

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from orchestrator.daemon.controller import Controller
from orchestrator.engine.vocabulary import Verdict
from tests.fixtures.clock import VirtualClock
from tests.unit.daemon.controller_support import see


def rejected(reason: str, source: str = "test") -> float:
    value = REGISTRY.get_sample_value(
        "failoverd_observations_rejected_total", {"source": source, "reason": reason}
    )
    return value or 0.0


async def test_a_burst_is_refused_counted_and_logged_once(
    controller: Controller, clock: VirtualClock
) -> None:
    before = rejected("too_soon")
    with capture_logs() as logs:
        for _ in range(3):  # the policy: 2 failures at a 1 s interval make the region down
            see(controller, clock, "us-east-1", False)
            clock.advance(0.1)
    await controller.evaluate("shop")
    snap = controller.snapshot("shop")
    assert snap is not None
    assert snap.verdicts["us-east-1"].verdict is not Verdict.DOWN
    assert rejected("too_soon") - before == 2
    lines = [e for e in logs if e["event"] == "observation_rejected"]
    assert len(lines) == 1, lines  # rate-limited: one line for the burst
    assert lines[0]["vantage"] == "local" and lines[0]["reason"] == "too_soon"


async def test_observations_of_an_unknown_service_are_counted(
    controller: Controller, clock: VirtualClock
) -> None:
    before = rejected("unexpected")
    see(controller, clock, "us-east-1", False, service="nope")
    assert rejected("unexpected") - before == 1

"""A stand-in for the controller as the flight recorder sees it: one service (the shop
policy of tests.fixtures.controller) with a real health book, a state and a run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.daemon.flight_recorder import ServiceView
from orchestrator.engine.healthbook import HealthBook
from orchestrator.engine.state import ServiceState
from orchestrator.policy.loader import load_policy_text
from orchestrator.runbook.rto import RunProgress
from tests.fixtures.controller import policy_text

POLICY = load_policy_text(policy_text(), "shop.yaml")


@dataclass
class FakeSource:
    book: HealthBook = field(default_factory=lambda: HealthBook(POLICY))
    state: ServiceState = field(default_factory=lambda: ServiceState("shop", "us-east-1"))
    progress: RunProgress | None = None
    leader: bool = True

    def services(self) -> Sequence[str]:
        return ["shop"]

    def service_view(self, service: str) -> ServiceView | None:
        return ServiceView(POLICY, self.book, self.state, {}, self.progress, "v1")

    def is_leader(self) -> bool:
        return self.leader

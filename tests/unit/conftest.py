"""Fixtures shared by the unit tests, registered once for tests/unit/."""

from __future__ import annotations

from tests.fixtures.sqlite_store import store
from tests.unit.daemon.controller_support import (
    action,
    clock,
    controller,
    lease_ttl,
    policy_dir,
    policy_yaml,
)

__all__ = ["action", "clock", "controller", "lease_ttl", "policy_dir", "policy_yaml", "store"]

"""Shared fixtures live in tests/fixtures/ and are registered here, once."""

from __future__ import annotations

pytest_plugins: list[str] = [
    "tests.fixtures.arc_cluster",
    "tests.fixtures.etcd",
    "tests.fixtures.filesystems",
    "tests.fixtures.health_emulator",
    "tests.fixtures.mosquitto",
    "tests.fixtures.moto_server",
    "tests.fixtures.region_switch_emulator",
]

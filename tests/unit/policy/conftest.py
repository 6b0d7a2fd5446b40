"""Shared fixtures for the policy tests: a small valid policy to break, and a way to see
exactly where and how the loader reports what is wrong with it.

Every error test builds its bad policy by editing a copy of :data:`BASELINE`, dumps it to
YAML, and asserts the reported ``file:line:column``, field path and message. The expected
line is found in the dumped text (``Rejected.where``), so the tests do not depend on how
PyYAML lays out the document, only on the loader pointing at the right place.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.yamlsource import SourceError, SourceErrors

ROOT = Path(__file__).resolve().parents[3]
FILE = "policies/shop.yaml"

BASELINE: dict[str, Any] = {
    "service": "shop",
    "regions": ["us-east-1", "us-west-2"],
    "rto": "15m",
    "rpo": "1m",
    "vantage_points": ["local", "agent-eu"],
    "detection": {
        "interval": "10s",
        "timeout": "5s",
        "consecutive_failures": 3,
        "quorum": 2,
        "staleness": "45s",
    },
    "signals": [
        {"name": "api", "type": "http", "target": "https://api.{region}.example.com/healthz"},
        {
            "name": "db",
            "type": "tcp",
            "targets": {"us-east-1": "db.use1.internal:5432", "us-west-2": "db.usw2.internal:5432"},
            "vantage": ["local"],
        },
    ],
    "replication": {
        "sources": {"us-west-2": {"type": "rds_replica_lag", "db_instance": "db-usw2"}}
    },
    "runbooks": {
        "failover": [
            {
                "name": "promote",
                "action": "rds.promote_read_replica",
                "params": {"db_instance": "db-usw2"},
            },
            {
                "name": "dns",
                "action": "route53.set_record",
                "after": ["promote"],
                "params": {
                    "hosted_zone_id": "Z0SHOP",
                    "name": "api.example.com",
                    "value": "api.{target_region}.example.com",
                },
            },
        ]
    },
}


def dump(data: Any) -> str:
    """Block-style YAML in insertion order (so a test's edit lands where it is expected)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def where(text: str, pattern: str, nth: int | None = None) -> tuple[int, int]:
    """1-based (line, column) of the ``nth`` match of a multi-line ``pattern`` in ``text``:
    of its first group when it has one, else of the match. Fails when the match is missing,
    or not unique and no ``nth`` was asked for, so an expected location is never ambiguous."""
    matches = list(re.finditer(pattern, text, re.MULTILINE))
    assert matches, f"{pattern!r} not found in:\n{text}"
    if nth is None:
        assert len(matches) == 1, f"{pattern!r} is ambiguous in:\n{text}"
    m = matches[nth or 0]
    pos = m.start(1) if m.re.groups else m.start()
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, column


@dataclass
class Rejected:
    """What the loader said about one bad policy."""

    file: str
    text: str
    errors: list[SourceError]

    def where(self, pattern: str, nth: int | None = None) -> tuple[int, int]:
        return where(self.text, pattern, nth)

    def only(self) -> SourceError:
        assert len(self.errors) == 1, "expected exactly one error, got:\n" + self.listing()
        return self.errors[0]

    def at(self, path: str) -> SourceError:
        found = [e for e in self.errors if e.path == path]
        assert len(found) == 1, f"expected one error at {path!r}, got:\n" + self.listing()
        return found[0]

    def listing(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def assert_error(
    error: SourceError, file: str, location: tuple[int, int], path: str, *words: str
) -> None:
    """The error names this file, line, column and field path, and says all of ``words``."""
    assert (error.file, (error.line, error.column), error.path) == (file, location, path), str(
        error
    )
    for word in words:
        assert word in error.message, f"{word!r} not in {error.message!r}"


@pytest.fixture
def baseline() -> dict[str, Any]:
    """A fresh, valid policy to edit."""
    return copy.deepcopy(BASELINE)


@pytest.fixture
def reject() -> Callable[[Any], Rejected]:
    """Load edited policy data (dumped to YAML) and return the errors it must raise."""

    def _reject(data: Any, file: str = FILE) -> Rejected:
        text = data if isinstance(data, str) else dump(data)
        with pytest.raises(SourceErrors) as info:
            load_policy_text(text, file)
        return Rejected(file, text, info.value.errors)

    return _reject

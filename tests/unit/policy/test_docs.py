"""The policy reference is generated from the models and must stay current."""

from __future__ import annotations

from pathlib import Path

from orchestrator.policy.actions import ACTION_PARAMS
from orchestrator.policy.docs import policy_reference
from orchestrator.policy.models import Detection, Guards, Policy

ROOT = Path(__file__).resolve().parents[3]


def test_committed_reference_is_current() -> None:
    committed = (ROOT / "docs" / "policy-reference.md").read_text(encoding="utf-8")
    assert committed == policy_reference(), (
        "docs/policy-reference.md is out of date with orchestrator/policy/models.py;"
        " run `make schema` and commit the result"
    )


def test_reference_documents_every_key_and_action() -> None:
    text = policy_reference()
    for model in (Policy, Detection, Guards):
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} is not documented"
    for action in ACTION_PARAMS:
        assert f"### `{action}`" in text


def test_defaults_are_written_as_policy_authors_write_them() -> None:
    text = policy_reference()
    # Durations appear in policy notation, not as float seconds.
    assert "| `interval` | duration | `10s` |" in text
    assert "| `cooldown` | duration | `30m` |" in text

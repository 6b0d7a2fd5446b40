"""JSON Schema for policy files, generated from the pydantic models (never written by hand).

``policies/schema.json`` is this output, committed so that editors can autocomplete policy
files (``# yaml-language-server: $schema=schema.json``); a test keeps it current.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.policy.durations import DURATION_PATTERN, format_duration
from orchestrator.policy.models import Policy

SCHEMA_ID = "https://failoverd.dev/schema/policy.json"


def policy_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema(mode="validation")
    _durations_as_written(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def _durations_as_written(node: Any) -> None:
    """Defaults of duration fields are held as seconds; write them as authors do (`30s`),
    so that an editor never suggests a value the schema's own pattern rejects."""
    if isinstance(node, dict):
        if node.get("pattern") == DURATION_PATTERN and isinstance(node.get("default"), int | float):
            node["default"] = format_duration(float(node["default"]))
        for value in node.values():
            _durations_as_written(value)
    elif isinstance(node, list):
        for value in node:
            _durations_as_written(value)


def policy_schema_text() -> str:
    return json.dumps(policy_schema(), indent=2, sort_keys=False) + "\n"

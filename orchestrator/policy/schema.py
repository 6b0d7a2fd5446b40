"""JSON Schema for policy files, generated from the pydantic models (never written by hand).

``policies/schema.json`` is this output, committed so that editors can autocomplete policy
files (``# yaml-language-server: $schema=schema.json``); a test keeps it current.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.policy.models import Policy

SCHEMA_ID = "https://failoverd.dev/schema/policy.json"


def policy_schema() -> dict[str, Any]:
    schema = Policy.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def policy_schema_text() -> str:
    return json.dumps(policy_schema(), indent=2, sort_keys=False) + "\n"

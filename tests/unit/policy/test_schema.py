"""The JSON Schema editors use to autocomplete policies: generated, committed, current."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.policy.durations import DURATION_PATTERN
from orchestrator.policy.loader import policy_files
from orchestrator.policy.models import PROBE_TYPES, Policy
from orchestrator.policy.schema import SCHEMA_ID, policy_schema, policy_schema_text

from .conftest import BASELINE, ROOT

SCHEMA_FILE = ROOT / "policies" / "schema.json"


def test_committed_schema_is_current() -> None:
    committed = SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == policy_schema_text(), (
        "policies/schema.json is out of date with orchestrator/policy/models.py;"
        " run `make schema` and commit the result"
    )


def test_schema_text_is_the_schema_as_json() -> None:
    assert json.loads(policy_schema_text()) == policy_schema()
    assert policy_schema_text().endswith("}\n")


def test_schema_identifies_itself() -> None:
    schema = policy_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID
    assert schema["type"] == "object"


def test_schema_requires_the_keys_every_policy_must_have() -> None:
    assert set(policy_schema()["required"]) == {
        "service",
        "regions",
        "rto",
        "rpo",
        "signals",
        "runbooks",
    }


def test_every_object_in_the_schema_forbids_unknown_keys() -> None:
    # So an editor flags a misspelt key just as `failoverd validate` does.
    schema = policy_schema()
    objects = {"(policy)": schema, **schema["$defs"]}
    for name, sub in objects.items():
        if "properties" in sub:
            assert sub.get("additionalProperties") is False, name


def test_every_signal_type_is_in_the_schema() -> None:
    mapping = policy_schema()["properties"]["signals"]["items"]["discriminator"]["mapping"]
    assert set(mapping) == {*PROBE_TYPES, "aws_health", "cloudwatch_alarm"}


def test_top_level_properties_are_the_policy_fields() -> None:
    assert list(policy_schema()["properties"]) == list(Policy.model_fields)


def test_duration_defaults_are_written_in_policy_notation() -> None:
    bad = []
    for path, node in _walk(policy_schema()):
        patterns = {node.get("pattern"), *(a.get("pattern") for a in node.get("anyOf", []))}
        default = node.get("default")
        if DURATION_PATTERN not in patterns or default is None:
            continue
        if not isinstance(default, str) or not re.fullmatch(DURATION_PATTERN, default):
            bad.append(f"{path}: {default!r}")
    assert bad == []


# ---------------------------------------------------------------------------------------
# The schema accepts the example policy and rejects what the loader rejects.
# A small validator for the subset of JSON Schema pydantic emits (no new dependency).


@pytest.mark.parametrize(
    "path", policy_files([ROOT / "policies"]), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_schema_accepts_the_example_policies(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert _validate(policy_schema(), data) == []


def test_schema_accepts_the_baseline_test_policy() -> None:
    assert _validate(policy_schema(), copy.deepcopy(BASELINE)) == []


@pytest.mark.parametrize("key", ["service", "regions", "rto", "rpo", "signals", "runbooks"])
def test_schema_rejects_a_policy_without_a_required_key(key: str) -> None:
    data = copy.deepcopy(BASELINE)
    del data[key]
    assert f"$: missing {key!r}" in _validate(policy_schema(), data)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(servce="x"), "$: unknown key 'servce'"),
        (lambda d: d["detection"].update(intervall="10s"), "$.detection: unknown key"),
        (lambda d: d.update(rto="15"), "$.rto: '15' does not match"),
        (lambda d: d.update(rto=900), "$.rto: expected string"),
        (lambda d: d["signals"][0].update(type="htp"), "$.signals[0]: unknown type 'htp'"),
        (lambda d: d["signals"][0].update(bodyy="x"), "$.signals[0]: unknown key 'bodyy'"),
        (
            lambda d: d["signals"].append({"name": "aws", "type": "aws_health"}),
            "$.signals[2]: missing 'services'",
        ),
        (lambda d: d["runbooks"]["failover"][0].update(retries=50), "$.runbooks.failover[0]"),
        (lambda d: d.update(regions=["us-east-1"]), "$.regions: fewer than 2 items"),
        (lambda d: d.update(mode="auto"), "$.mode: 'auto' is not one of"),
    ],
)
def test_schema_rejects_what_the_loader_rejects(edit: Any, expected: str) -> None:
    data = copy.deepcopy(BASELINE)
    edit(data)
    problems = _validate(policy_schema(), data)
    assert any(p.startswith(expected) for p in problems), problems


def _walk(node: Any, path: str = "#") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _validate(schema: dict[str, Any], data: Any) -> list[str]:
    root = schema
    problems: list[str] = []

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            assert node["$ref"].startswith("#/$defs/"), node["$ref"]
            node = {
                **root["$defs"][node["$ref"].split("/")[-1]],
                **{k: v for k, v in node.items() if k != "$ref"},
            }
        return node

    def check(node: dict[str, Any], value: Any, at: str) -> None:
        node = resolve(node)
        if "anyOf" in node:
            if not any(_ok(option, value) for option in node["anyOf"]):
                problems.append(f"{at}: matches none of anyOf")
            return
        if "oneOf" in node:
            tag_key = node["discriminator"]["propertyName"]
            tag = value.get(tag_key) if isinstance(value, dict) else None
            target = node["discriminator"]["mapping"].get(tag)
            if target is None:
                problems.append(f"{at}: unknown {tag_key} {tag!r}")
                return
            check({"$ref": target}, value, at)
            return
        kind = node.get("type")
        if kind is not None:
            expected = _TYPES[kind]
            if not isinstance(value, expected) or (
                kind in ("integer", "number") and isinstance(value, bool)
            ):
                problems.append(f"{at}: expected {kind}, got {value!r}")
                return
        if "const" in node and value != node["const"]:
            problems.append(f"{at}: expected {node['const']!r}")
        if "enum" in node and value not in node["enum"]:
            problems.append(f"{at}: {value!r} is not one of {node['enum']}")
        if "pattern" in node and not re.search(node["pattern"], value):
            problems.append(f"{at}: {value!r} does not match {node['pattern']}")
        if "minimum" in node and value < node["minimum"]:
            problems.append(f"{at}: below {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            problems.append(f"{at}: above {node['maximum']}")
        if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
            problems.append(f"{at}: not above {node['exclusiveMinimum']}")
        if isinstance(value, list):
            if len(value) < node.get("minItems", 0):
                problems.append(f"{at}: fewer than {node['minItems']} items")
            for i, item in enumerate(value):
                if "items" in node:
                    check(node["items"], item, f"{at}[{i}]")
        if isinstance(value, dict):
            props = node.get("properties", {})
            for key in node.get("required", []):
                if key not in value:
                    problems.append(f"{at}: missing {key!r}")
            for key, item in value.items():
                if key in props:
                    check(props[key], item, f"{at}.{key}")
                    continue
                matched = [p for p in node.get("patternProperties", {}) if re.search(p, key)]
                for pattern in matched:
                    check(node["patternProperties"][pattern], item, f"{at}.{key}")
                if not matched and node.get("additionalProperties") is False:
                    problems.append(f"{at}: unknown key {key!r}")

    def _ok(option: dict[str, Any], value: Any) -> bool:
        before = len(problems)
        check(option, value, "")
        ok = len(problems) == before
        del problems[before:]
        return ok

    check(schema, data, "$")
    return problems

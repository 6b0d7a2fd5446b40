"""Loading policy files: field-level errors located at file:line, and policy sets.

Cross-field rules (cycles, quorum, targets...) are in ``test_checks.py``.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator.policy.actions import ACTION_NAMES
from orchestrator.policy.loader import (
    PolicySet,
    load_policy_file,
    load_policy_set,
    load_policy_text,
    policy_files,
)
from orchestrator.policy.models import (
    Detection,
    Failback,
    HttpSignal,
    Policy,
    RdsReplicaLag,
    Step,
)
from orchestrator.policy.yamlsource import SourceErrors

from .conftest import BASELINE, FILE, ROOT, assert_error, dump

GIT_CONFIG = ("-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false")
VERSION = re.compile(r"^[0-9a-f]{12}(\+g[0-9a-f]{10})?$")


def test_baseline_policy_is_valid() -> None:
    # Every error test below breaks this policy in exactly one place.
    policy = load_policy_text(dump(BASELINE), FILE)
    assert policy.service == "shop"
    assert policy.primary == "us-east-1"
    assert policy.rto == 900.0
    assert policy.detection.staleness == 45.0
    assert [s.name for s in policy.signals] == ["api", "db"]
    assert [s.name for s in policy.runbooks.failover] == ["promote", "dns"]


# ---------------------------------------------------------------------------------------
# Unknown keys


def _set(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    target: Any = data
    for part in path[:-1]:
        target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
    target[path[-1]] = value


@pytest.mark.parametrize(
    ("where_", "key", "model", "path", "pattern"),
    [
        ((), "servce", Policy, "servce", r"^(servce):"),
        (("detection",), "intervall", Detection, "detection.intervall", r"^  (intervall):"),
        (("signals", 0), "bodyy", HttpSignal, "signals[0].bodyy", r"^  (bodyy):"),
        (
            ("runbooks", "failover", 1),
            "paramz",
            Step,
            "runbooks.failover[1].paramz",
            r"^    (paramz):",
        ),
        (
            ("replication", "sources", "us-west-2"),
            "db_instanse",
            RdsReplicaLag,
            "replication.sources.us-west-2.db_instanse",
            r"^      (db_instanse):",
        ),
        (("guards", "failback"), "mod", Failback, "guards.failback.mod", r"^    (mod):"),
    ],
)
def test_unknown_key_lists_the_expected_keys(
    baseline: dict[str, Any],
    reject: Any,
    where_: tuple[str | int, ...],
    key: str,
    model: type[BaseModel],
    path: str,
    pattern: str,
) -> None:
    _set(baseline, (*where_, key), "x")
    rejected = reject(baseline)
    expected = f"unknown key {key!r}; expected one of: {', '.join(model.model_fields)}"
    error = rejected.only()
    assert_error(error, FILE, rejected.where(pattern), path)
    assert error.message == expected


# ---------------------------------------------------------------------------------------
# Durations


@pytest.mark.parametrize(
    ("path", "value", "data_path", "pattern", "got"),
    [
        (("detection", "interval"), "10", "detection.interval", r"^  (interval): '10'", "'10'"),
        (("rto",), "15 m", "rto", r"^(rto): 15 m", "'15 m'"),
        (("rpo",), "-5s", "rpo", r"^(rpo): -5s", "'-5s'"),
        (("signals", 1, "timeout"), "", "signals[1].timeout", r"^  (timeout): ''", "''"),
        (
            ("runbooks", "failover", 0, "timeout"),
            "1.5m",
            "runbooks.failover[0].timeout",
            r"^    (timeout): 1.5m",
            "'1.5m'",
        ),
    ],
)
def test_bad_duration_names_the_expected_format(
    baseline: dict[str, Any],
    reject: Any,
    path: tuple[str | int, ...],
    value: str,
    data_path: str,
    pattern: str,
    got: str,
) -> None:
    _set(baseline, path, value)
    rejected = reject(baseline)
    assert_error(
        rejected.only(), FILE, rejected.where(pattern), data_path, "500ms, 30s, 5m", f"got {got}"
    )


def test_bare_number_duration_asks_for_a_unit(baseline: dict[str, Any], reject: Any) -> None:
    baseline["rto"] = 900
    rejected = reject(baseline)
    assert_error(
        rejected.only(), FILE, rejected.where(r"^(rto): 900"), "rto", "a string with a unit"
    )


def test_float_duration_is_rejected_like_an_int(baseline: dict[str, Any], reject: Any) -> None:
    baseline["rto"] = 900.0
    rejected = reject(baseline)
    assert_error(
        rejected.only(), FILE, rejected.where(r"^(rto): 900.0"), "rto", "a string with a unit"
    )


# ---------------------------------------------------------------------------------------
# Other field-level errors


def test_unknown_action_lists_the_known_ones(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"][0]["action"] = "rds.promote"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (action): rds.promote$"),
        "runbooks.failover[0].action",
        "unknown action 'rds.promote'",
        f"expected one of: {', '.join(sorted(ACTION_NAMES))}",
    )


def test_wrong_signal_type_names_the_known_types(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"][0]["type"] = "htp"
    rejected = reject(baseline)
    error = rejected.only()
    assert error.file == FILE
    assert error.path == "signals[0].type"
    assert error.message == (
        "unknown type 'htp'; expected one of: http, tcp, dns, tls, aws_health, cloudwatch_alarm"
    )


def test_wrong_signal_type_points_at_the_type_key(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"][0]["type"] = "htp"
    rejected = reject(baseline)
    assert_error(
        rejected.only(), FILE, rejected.where(r"^  (type): htp"), "signals[0].type", "'htp'"
    )


def test_missing_signal_type_is_reported_on_the_signal(
    baseline: dict[str, Any], reject: Any
) -> None:
    del baseline["signals"][1]["type"]
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^- (name): db"),
        "signals[1].type",
        "missing `type`",
        "expected one of",
        "http",
    )


def test_missing_required_key(baseline: dict[str, Any], reject: Any) -> None:
    del baseline["rto"]
    rejected = reject(baseline)
    # Nowhere to point inside the file: the top of the document.
    assert_error(rejected.only(), FILE, (1, 1), "rto", "missing required key")


def test_missing_required_key_of_a_signal_points_at_the_signal(
    baseline: dict[str, Any], reject: Any
) -> None:
    baseline["signals"].append({"name": "aws", "type": "aws_health"})
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^- (name): aws"),
        "signals[2].services",
        "missing required key",
    )


def test_region_name_must_look_like_an_aws_region(baseline: dict[str, Any], reject: Any) -> None:
    baseline["regions"][1] = "US-West"
    rejected = reject(baseline)
    # The name is checked before any cross-field rule (targets, replication) sees it.
    assert_error(rejected.only(), FILE, rejected.where(r"^- (US-West)"), "regions[1]", "'US-West'")


def test_enum_value_lists_the_allowed_ones(baseline: dict[str, Any], reject: Any) -> None:
    baseline["guards"] = {"on_lag_unknown": "ignore"}
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^  (on_lag_unknown):"),
        "guards.on_lag_unknown",
        "'wait'",
        "'require_approval'",
        "'proceed'",
        "got 'ignore'",
    )


@pytest.mark.parametrize(
    "text",
    [
        "- service: shop\n",
        "shop\n",
        pytest.param(
            "---\n",
        ),
    ],
)
def test_top_level_must_be_a_mapping(reject: Any, text: str) -> None:
    rejected = reject(text)
    assert_error(rejected.only(), FILE, (1, 1), "", "expected a mapping", "service:")


def test_every_field_error_of_a_file_is_reported(baseline: dict[str, Any], reject: Any) -> None:
    baseline["mode"] = "auto"
    baseline["detection"]["interval"] = "10"
    baseline["signals"][0]["bodyy"] = "ok"
    baseline["runbooks"]["failover"][1]["action"] = "route53.set"
    rejected = reject(baseline)
    found = {(e.path, e.line) for e in rejected.errors}
    assert found == {
        ("mode", rejected.where(r"^(mode): auto")[0]),
        ("detection.interval", rejected.where(r"^  (interval): '10'")[0]),
        ("signals[0].bodyy", rejected.where(r"^  (bodyy):")[0]),
        ("runbooks.failover[1].action", rejected.where(r"^    (action): route53.set$")[0]),
    }, rejected.listing()


def test_invalid_region_key_path_names_the_key(baseline: dict[str, Any], reject: Any) -> None:
    baseline["signals"][1]["targets"]["US-EAST"] = "db.x:5432"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^    (US-EAST):"),
        "signals[1].targets.US-EAST",
        "'US-EAST'",
    )


# ---------------------------------------------------------------------------------------
# Policy sets: several files


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else dump(data), encoding="utf-8")
    return path


def _variant(service: str, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASELINE)
    out["service"] = service
    out.update(changes)
    return out


def test_loads_every_policy_of_a_folder(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", _variant("alpha"))
    b = _write(tmp_path / "team" / "b.yml", _variant("beta"))
    policies = load_policy_set([tmp_path])
    assert isinstance(policies, PolicySet)
    assert len(policies) == 2
    assert sorted(p.service for p in policies) == ["alpha", "beta"]
    assert dict(policies.files) == {"alpha": str(a), "beta": str(b)}
    assert VERSION.match(policies.version), policies.version


def test_errors_of_every_file_are_all_reported(tmp_path: Path) -> None:
    bad_field = _write(tmp_path / "a.yaml", _variant("alpha", rto="15"))
    _write(tmp_path / "b.yaml", _variant("beta"))
    bad_rule = _write(
        tmp_path / "c.yaml",
        _variant("gamma", detection={**BASELINE["detection"], "quorum": 3}),
    )
    bad_yaml = _write(tmp_path / "d.yaml", "service: delta\nservice: delta\n")
    with pytest.raises(SourceErrors) as info:
        load_policy_set([tmp_path])
    found = [(e.file, e.path) for e in info.value.errors]
    assert found == [
        (str(bad_field), "rto"),
        (str(bad_rule), "detection.quorum"),
        (str(bad_yaml), "service"),
    ]
    assert all(e.line > 0 for e in info.value.errors)


def test_a_service_defined_twice_is_an_error_naming_both_files(tmp_path: Path) -> None:
    first = _write(tmp_path / "a.yaml", _variant("shop"))
    second = _write(tmp_path / "b.yaml", {"description": "copy", **_variant("shop")})
    with pytest.raises(SourceErrors) as info:
        load_policy_set([tmp_path])
    (error,) = info.value.errors
    text = second.read_text(encoding="utf-8")
    line = text.splitlines().index("service: shop") + 1
    assert (error.file, error.line, error.column, error.path) == (str(second), line, 1, "service")
    assert error.message == f"service 'shop' is already defined in {first}"


def test_folder_walk_skips_scenario_and_hidden_folders(tmp_path: Path) -> None:
    keep = [
        _write(tmp_path / "shop.yaml", _variant("shop")),
        _write(tmp_path / "team" / "other.yml", _variant("other")),
    ]
    scenario = "scenario: not a policy\npolicy: ../shop.yaml\n"
    _write(tmp_path / "tests" / "outage.yaml", scenario)
    _write(tmp_path / "team" / "tests" / "outage.yaml", scenario)
    _write(tmp_path / ".cache" / "junk.yaml", "not: a policy\n")
    _write(tmp_path / "README.md", "# not yaml\n")
    assert policy_files([tmp_path]) == sorted(keep)
    assert sorted(p.service for p in load_policy_set([tmp_path])) == ["other", "shop"]


def test_a_file_named_explicitly_is_loaded_even_beside_others(tmp_path: Path) -> None:
    one = _write(tmp_path / "one.yaml", _variant("one"))
    _write(tmp_path / "two.yaml", _variant("two"))
    assert policy_files([one]) == [one]
    assert [p.service for p in load_policy_set([one])] == ["one"]


def test_a_folder_without_policies_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "tests" / "s.yaml", "scenario: x\n")
    with pytest.raises(SourceErrors) as info:
        load_policy_set([tmp_path])
    (error,) = info.value.errors
    assert error.file == str(tmp_path)
    assert "no policy files" in error.message


# ---------------------------------------------------------------------------------------
# The policy set version


def test_version_is_stable_for_the_same_content(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", _variant("alpha"))
    _write(tmp_path / "b.yaml", _variant("beta"))
    assert load_policy_set([tmp_path]).version == load_policy_set([tmp_path]).version


def test_version_changes_when_a_file_changes_and_comes_back_with_it(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", _variant("alpha"))
    f = _write(tmp_path / "b.yaml", _variant("beta"))
    original = f.read_text(encoding="utf-8")
    before = load_policy_set([tmp_path]).version
    f.write_text(original.replace("rto: 15m", "rto: 20m"), encoding="utf-8")
    changed = load_policy_set([tmp_path]).version
    f.write_text(original, encoding="utf-8")
    after = load_policy_set([tmp_path]).version
    assert changed != before
    assert after == before


def test_version_changes_when_a_file_is_added(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", _variant("alpha"))
    before = load_policy_set([tmp_path]).version
    _write(tmp_path / "b.yaml", _variant("beta"))
    assert load_policy_set([tmp_path]).version != before


def test_version_does_not_depend_on_the_order_of_the_paths(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", _variant("alpha"))
    b = _write(tmp_path / "b.yaml", _variant("beta"))
    assert load_policy_set([a, b]).version == load_policy_set([b, a]).version


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")
def test_version_carries_the_git_commit_of_the_policy_folder(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", _variant("alpha"))
    plain = load_policy_set([tmp_path]).version

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *GIT_CONFIG, *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    git("add", "a.yaml")
    git("commit", "-q", "-m", "policies")
    commit = git("rev-parse", "HEAD")
    version = load_policy_set([tmp_path]).version
    assert version == f"{plain}+g{commit[:10]}"


# ---------------------------------------------------------------------------------------
# The example policies shipped in policies/


def _example_files() -> list[Path]:
    return policy_files([ROOT / "policies"])


def test_there_are_example_policies() -> None:
    assert ROOT / "policies" / "webapp" / "webapp.yaml" in _example_files()


@pytest.mark.parametrize("path", _example_files(), ids=lambda p: p.name)
def test_example_policy_loads(path: Path) -> None:
    policy = load_policy_file(path)
    assert policy.service


def test_example_policy_set_loads_with_a_version() -> None:
    policies = load_policy_set([ROOT / "policies"])
    assert "webapp" in policies.policies
    assert len(policies) == len(_example_files())
    assert VERSION.match(policies.version), policies.version

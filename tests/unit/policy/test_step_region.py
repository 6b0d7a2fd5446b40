"""A step's `region`: where a regional action acts. Only the policy's own regions, or a
placeholder for a region of the run, get past `failoverd validate`, reported at
file:line:column with the field's path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli.main import EXIT_FAILED, EXIT_OK, main
from orchestrator.policy.loader import load_policy_text

from .conftest import FILE, assert_error, dump

SCALE_DOWN = {
    "name": "scale-down-old",
    "action": "ecs.set_desired_count",
    "after": ["dns"],
    "params": {"region": "{source_region}", "cluster": "c", "service": "s", "desired": 0},
}


def with_step(baseline: dict[str, Any], **params: Any) -> dict[str, Any]:
    step = {**SCALE_DOWN, "params": {**SCALE_DOWN["params"], **params}}
    baseline["runbooks"]["failover"].append(step)
    return baseline


@pytest.mark.parametrize("region", ["{source_region}", "{target_region}", "{primary_region}"])
def test_a_region_placeholder_is_accepted(baseline: dict[str, Any], region: str) -> None:
    policy = load_policy_text(dump(with_step(baseline, region=region)), FILE)
    assert policy.runbooks.failover[2].params["region"] == region


def test_one_of_the_policys_regions_is_accepted(baseline: dict[str, Any]) -> None:
    load_policy_text(dump(with_step(baseline, region="us-west-2")), FILE)


def test_a_region_outside_the_policy_is_an_error_at_its_line(
    baseline: dict[str, Any], reject: Any
) -> None:
    rejected = reject(with_step(baseline, region="eu-west-1"))
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^      (region): eu-west-1$"),
        "runbooks.failover[2].params.region",
        "region 'eu-west-1' is not one of the policy's regions; expected one of: us-east-1,"
        " us-west-2, {target_region}, {source_region}, {primary_region}",
    )


@pytest.mark.parametrize("region", ["{service}", "{source_region}-x", "us-east-1 "])
def test_anything_else_is_an_error_too(baseline: dict[str, Any], reject: Any, region: str) -> None:
    rejected = reject(with_step(baseline, region=region))
    error = rejected.at("runbooks.failover[2].params.region")
    assert "is not one of the policy's regions" in error.message


def test_an_action_without_a_region_says_why(baseline: dict[str, Any], reject: Any) -> None:
    baseline["runbooks"]["failover"][1]["params"]["region"] = "us-west-2"
    rejected = reject(baseline)
    assert_error(
        rejected.only(),
        FILE,
        rejected.where(r"^      (region): us-west-2$"),
        "runbooks.failover[1].params.region",
        "route53.set_record takes no region: Route 53 is global",
    )


def test_validate_prints_file_line_column_field_and_message(
    baseline: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shop.yaml"
    text = dump(with_step(baseline, region="us-east-2"))
    path.write_text(text, encoding="utf-8")
    assert main(["validate", str(path)]) == EXIT_FAILED
    out = capsys.readouterr()
    line = 1 + text.splitlines().index("      region: us-east-2")
    expected = (
        f"{path}:{line}:7: runbooks.failover[2].params.region: region 'us-east-2' is not one"
        " of the policy's regions; expected one of: us-east-1, us-west-2"
    )
    assert re.search(f"^{re.escape(expected)}", out.out + out.err, re.MULTILINE), out
    assert "1 error(s)" in out.out + out.err


def test_validate_accepts_the_source_region_placeholder(
    baseline: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(dump(with_step(baseline)), encoding="utf-8")
    assert main(["validate", str(path)]) == EXIT_OK

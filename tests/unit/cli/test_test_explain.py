"""``failoverd test`` and ``failoverd explain``: exit codes, the PASS/FAIL lines and the
summary line of the scenario contract (SCENARIOS.md), errors naming file:line:field, and an
explanation in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli.main import main
from tests.unit.engine.conftest import PRIMARY, STANDBY, all_up, sim_policy_data

OUTAGE = [*all_up([PRIMARY, STANDBY]), {"at": "2m", "probes": {"region": PRIMARY, "state": "down"}}]
PASSING_EXPECT = [
    {"phase": {"at": "1m", "is": "steady"}},
    {"failover": {"to": STANDBY, "between": ["2m", "2m30s"]}},
    {"active_region": {"at": "5m", "is": STANDBY}},
]
FAILING_EXPECT = [{"no_failover": {}}, {"failovers": {"count": 1}}]


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def scenario(
    name: str, expect: list[dict[str, Any]], policy: Any = "../shop.yaml"
) -> dict[str, Any]:
    return {
        "scenario": name,
        "policy": policy,
        "duration": "10m",
        "timeline": OUTAGE,
        "expect": expect,
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A policy file and a scenario folder beside it, like policies/webapp/."""
    write(tmp_path / "shop.yaml", sim_policy_data())
    write(tmp_path / "tests" / "outage.yaml", scenario("outage fails over", PASSING_EXPECT))
    return tmp_path


INVALID = """\
scenario: a typo in a probe state
policy: ../shop.yaml
duration: 10m
timeline:
  - at: 0s
    probes: {region: us-east-1, state: up}
  - at: 1m
    probes: {region: us-east-1, state: sideways}
expect:
  - no_failover: {}
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


# -- failoverd test -----------------------------------------------------------------------


def test_all_passing_exits_0(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run_cli(capsys, "test", str(project / "tests" / "outage.yaml"))
    assert code == 0
    assert lines == ["PASS outage fails over", "1 passed, 0 failed"]


def test_a_failing_scenario_exits_1_with_a_diff(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(project / "tests" / "wrong.yaml", scenario("expects no failover", FAILING_EXPECT))
    code, lines, _ = run_cli(capsys, "test", str(project / "tests"))
    assert code == 1
    assert "PASS outage fails over" in lines
    assert f"FAIL expects no failover  ({bad})" in lines
    assert "    expected: no failover ever" in lines
    assert any(
        line.startswith("    actual:   2m20s: failover us-east-1 -> us-west-2") for line in lines
    )
    assert not any("exactly 1" in line for line in lines)  # the count holds: not reported
    assert lines[-1] == "1 passed, 1 failed"


def test_an_invalid_scenario_exits_2_naming_file_line_and_field(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = project / "tests" / "invalid.yaml"
    bad.write_text(INVALID, encoding="utf-8")
    code, lines, _ = run_cli(capsys, "test", str(project / "tests"))
    assert code == 2
    assert f"INVALID {bad}" in lines
    errors = [line.strip() for line in lines if line.startswith("    ")]
    assert errors
    assert all(e.startswith(f"{bad}:8:") for e in errors), errors  # line of `state: sideways`
    assert any("timeline[1].probes.state" in e and "'sideways'" in e for e in errors)
    assert "PASS outage fails over" in lines  # the valid ones still run
    assert lines[-1] == "1 passed, 0 failed, 1 invalid"


def test_a_scenario_naming_an_unknown_region_is_invalid(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = scenario("typo", [{"no_failover": {}}])
    data["timeline"] = [*OUTAGE, {"at": "3m", "probes": {"region": "us-east-9", "state": "up"}}]
    bad = write(project / "tests" / "typo.yaml", data)
    code, lines, _ = run_cli(capsys, "test", str(bad))
    assert code == 2
    assert any("timeline[3].probes.region" in line and "us-east-9" in line for line in lines)
    assert any(line.strip().startswith(f"{bad}:") for line in lines)


def test_an_inline_policy_runs_and_its_errors_name_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path / "inline.yaml", scenario("inline", PASSING_EXPECT, sim_policy_data()))
    code, lines, _ = run_cli(capsys, "test", str(good))
    assert (code, lines) == (0, ["PASS inline", "1 passed, 0 failed"])
    policy = sim_policy_data(detection={"quorum": 5})
    bad = write(tmp_path / "bad_inline.yaml", scenario("bad inline", PASSING_EXPECT, policy))
    quorum_line = 1 + bad.read_text().splitlines().index("    quorum: 5")
    code, lines, _ = run_cli(capsys, "test", str(bad))
    assert code == 2
    assert any(
        line.strip().startswith(f"{bad}:{quorum_line}:") and "quorum" in line for line in lines
    ), lines


def test_a_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "test", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "no such file" in err


def test_a_folder_without_scenarios_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "shop.yaml", sim_policy_data())  # a policy, not a scenario
    code, lines, err = run_cli(capsys, "test", str(tmp_path))
    assert code == 2
    assert lines[-1] == "0 passed, 0 failed"
    assert "no scenario files" in err


def test_verbose_prints_the_timeline(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run_cli(capsys, "test", "-v", str(project / "tests" / "outage.yaml"))
    assert code == 0
    assert "    | 0s steady (active us-east-1)" in lines


# -- failoverd explain --------------------------------------------------------------------


def test_explain_prints_verdicts_phase_and_reasons_in_words(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = scenario("blocked by lag", [{"no_failover": {}}])
    data["policy"] = {
        **sim_policy_data(),
        "replication": {
            "sources": {STANDBY: {"type": "rds_replica_lag", "db_instance": "shop-db-usw2"}}
        },
        "guards": {"cooldown": "0s", "on_lag_unknown": "wait"},
    }
    path = write(project / "tests" / "lag.yaml", data)
    code, lines, _ = run_cli(capsys, "explain", str(path), "--at", "5m")
    assert code == 0
    text = "\n".join(lines)
    assert lines[0].startswith("shop at 5m")
    assert "us-east-1 (active): DOWN since 2m20s" in text
    assert "us-west-2: HEALTHY since 0s" in text
    assert "failing: local, agent-eu, agent-ap" in text
    assert "failing (connect) since 2m20s" in text
    assert "us-west-2: unknown" in text  # replication lag
    assert "  phase: blocked" in lines
    assert "  action: take no action" in lines
    assert "    - active_down: the active region is down" in text
    assert "    - lag_unknown: replication lag to the target is unknown or too old" in text
    assert "RTO: outage detected at 2m20s; 12m20s of 15m left" in text


def test_explain_after_a_failover_lists_the_run(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run_cli(
        capsys, "explain", str(project / "tests" / "outage.yaml"), "--at", "5m"
    )
    assert code == 0
    text = "\n".join(lines)
    assert "primary us-east-1; active us-west-2" in text
    assert "  phase: steady" in lines
    assert "Runs" in lines
    assert "run-1 failover us-east-1 -> us-west-2 at 2m20s: completed" in text


@pytest.mark.parametrize("at", ["5 minutes", "5", "-1m", "soon"])
def test_explain_with_a_bad_at_exits_2(
    project: Path, capsys: pytest.CaptureFixture[str], at: str
) -> None:
    code, lines, err = run_cli(
        capsys, "explain", str(project / "tests" / "outage.yaml"), f"--at={at}"
    )
    assert code == 2
    assert lines == []
    assert "--at" in err


def test_explain_after_the_end_exits_2(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "explain", str(project / "tests" / "outage.yaml"), "--at", "1h")
    assert code == 2
    assert "after the scenario's end" in err


def test_explain_an_invalid_scenario_exits_2(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = project / "tests" / "invalid.yaml"
    bad.write_text(INVALID, encoding="utf-8")
    code, _, err = run_cli(capsys, "explain", str(bad), "--at", "1m")
    assert code == 2
    assert f"{bad}:8:" in err

"""``failoverd diff OLD NEW [SCENARIO_PATH...]`` on policy files, folders and git revisions:
the CHANGED lines with the first difference, the expectations, the summary line, ``--json``,
and the exit codes (0 nothing changed, 1 decisions changed, 2 unusable input)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli.main import main
from tests.fixtures.git_repo import commit_all, git, init_repo
from tests.unit.engine.conftest import PRIMARY, STANDBY, _merge, all_up, sim_policy_data

OUTAGE = [*all_up([PRIMARY, STANDBY]), {"at": "2m", "probes": {"region": PRIMARY, "state": "down"}}]
QUIET = all_up([PRIMARY, STANDBY])


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def scenario(name: str, timeline: list[dict[str, Any]], expect: list[dict[str, Any]]) -> Any:
    return {
        "scenario": name,
        "policy": "../shop.yaml",
        "duration": "10m",
        "timeline": timeline,
        "expect": expect,
    }


def policies(root: Path, consecutive: int = 3) -> Path:
    """shop.yaml with ``consecutive`` failures to fail, and two tests: an outage (fails
    over at 2m20s with 3) and a quiet day."""
    data = _merge(sim_policy_data(), {"detection": {"consecutive_failures": consecutive}})
    write(root / "shop.yaml", data)
    failover = {"failover": {"to": STANDBY, "between": ["2m20s", "2m21s"]}}
    write(root / "tests" / "outage.yaml", scenario("outage", OUTAGE, [failover]))
    write(root / "tests" / "quiet.yaml", scenario("quiet", QUIET, [{"no_failover": {}}]))
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["diff", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_same_policies_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = policies(tmp_path / "old"), policies(tmp_path / "new")
    code, out, _ = run(capsys, str(old), str(new))
    assert code == 0
    assert out.splitlines()[-1] == "2 scenarios, 0 changed, 0 now failing"
    assert "CHANGED" not in out


def test_a_longer_detection_rule_is_reported_with_its_first_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = policies(tmp_path / "old"), policies(tmp_path / "new", consecutive=5)
    code, out, _ = run(capsys, str(old), str(new))
    assert code == 1
    lines = out.splitlines()
    assert lines[-1] == "2 scenarios, 1 changed, 1 now failing"
    at = lines.index(next(x for x in lines if x.startswith("CHANGED outage")))
    assert str(new / "tests" / "outage.yaml") in lines[at]
    assert lines[at + 1] == "    first difference at 2m20s"
    assert lines[at + 2].startswith("      old: failing_over: failover -> us-west-2 [active_down")
    assert lines[at + 3].startswith("      new: suspect: none [active_unknown")
    assert "2m20s failover us-east-1 -> us-west-2 automatically" in out
    assert "2m40s failover us-east-1 -> us-west-2 automatically" in out
    assert "    expectations: pass -> FAIL" in out
    assert "quiet" not in out  # unchanged scenarios are not listed (-v lists them)
    code, verbose, _ = run(capsys, "-v", str(old), str(new))
    assert code == 1 and "SAME quiet" in verbose


def test_json_for_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = policies(tmp_path / "old"), policies(tmp_path / "new", consecutive=5)
    code, out, _ = run(capsys, "--json", str(old), str(new))
    assert code == 1
    body = json.loads(out)
    assert body["summary"] == {"scenarios": 2, "changed": 1, "now_failing": 1, "skipped": 0}
    by_name = {s["name"]: s for s in body["scenarios"]}
    outage = by_name["outage"]
    assert outage["status"] == "changed"
    assert outage["first_difference"]["at"] == 140.0
    assert outage["first_difference"]["old"]["phase"] == "failing_over"
    assert outage["first_difference"]["new"]["phase"] == "suspect"
    assert outage["expectations"] == {"old": "pass", "new": "fail"}
    assert [r["started_at"] for r in outage["runs"]["new"]] == [160.0]
    assert by_name["quiet"]["status"] == "same"
    assert body["old"]["kind"] == "folder" and body["new"]["services"] == ["shop"]


def test_policy_files_and_extra_scenario_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = policies(tmp_path / "old"), policies(tmp_path / "new", consecutive=5)
    # A scenario kept elsewhere (an incident), naming its own copy of the policy.
    write(tmp_path / "incidents" / "shop.yaml", sim_policy_data())
    incident = scenario("incident", OUTAGE, [{"failovers": {"count": 1}}])
    write(tmp_path / "incidents" / "tests" / "incident.yaml", incident)
    code, out, _ = run(
        capsys,
        str(old / "shop.yaml"),
        str(new / "shop.yaml"),
        str(tmp_path / "incidents" / "tests"),
    )
    assert code == 1
    assert "CHANGED incident" in out  # run under the old and new shop policies, not its own
    assert out.splitlines()[-1] == "3 scenarios, 2 changed, 1 now failing"


def test_a_scenario_that_no_longer_fits_the_new_policy_is_changed_and_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = policies(tmp_path / "old")
    new = policies(tmp_path / "new")
    data = _merge(sim_policy_data(), {"regions": [PRIMARY, "eu-west-1"]})
    write(new / "shop.yaml", data)
    (new / "tests").rename(tmp_path / "unused")
    code, out, _ = run(capsys, str(old), str(new))
    assert code == 1
    assert "new: " in out and "unknown region 'us-west-2'" in out
    assert "expectations: pass -> INVALID" in out
    assert out.splitlines()[-1] == "2 scenarios, 2 changed, 2 now failing"


def test_a_service_only_in_one_version_is_added_or_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = policies(tmp_path / "old")
    new = tmp_path / "new"
    shop = _merge(sim_policy_data(), {"service": "cart"})
    write(new / "cart.yaml", shop)
    cart = {
        **scenario("cart outage", OUTAGE, [{"failovers": {"count": 1}}]),
        "policy": "../cart.yaml",
    }
    write(new / "tests" / "cart.yaml", cart)
    code, out, _ = run(capsys, str(old), str(new))
    assert code == 1
    assert "ADDED cart outage" in out
    assert "REMOVED outage" in out and "REMOVED quiet" in out
    assert out.splitlines()[-1] == "3 scenarios, 3 changed, 0 now failing"


def test_unusable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = policies(tmp_path / "old")
    code, _, err = run(capsys, str(old), str(tmp_path / "missing"))
    assert code == 2 and "is neither a file or folder nor a" in err
    bad = policies(tmp_path / "bad")
    (bad / "shop.yaml").write_text((bad / "shop.yaml").read_text().replace("rto: 15m", "rto: soon"))
    code, _, err = run(capsys, str(old), str(bad))
    assert code == 2 and f"{bad / 'shop.yaml'}:" in err and "rto" in err
    code, _, err = run(capsys, str(old), str(old), str(tmp_path / "nowhere.yaml"))
    assert code == 2 and "no such file or folder" in err
    write(tmp_path / "broken" / "x.yaml", {"scenario": "broken", "policy": "../none.yaml"})
    code, out, _ = run(capsys, str(old), str(old), str(tmp_path / "broken"))
    assert code == 2 and "INVALID" in out


# -- git revisions ---------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: the policies; branch `slower`: one more commit with a longer detection rule."""
    root = init_repo(tmp_path / "repo")
    policies(root / "policies")
    (root / "README").write_text("a policy repository\n")
    commit_all(root, "policies")
    git(root, "checkout", "-q", "-b", "slower")
    policies(root / "policies", consecutive=5)
    commit_all(root, "detect later")
    return root


def test_git_revisions_are_read_from_the_objects_without_a_checkout(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An uncommitted edit in the work tree: neither the diff nor its cleanup may touch it.
    (repo / "policies" / "shop.yaml").write_text("service: [this is not read]\n")
    status = git(repo, "status", "--porcelain")
    head = git(repo, "rev-parse", "HEAD")
    monkeypatch.chdir(repo / "policies")  # anywhere inside the repository
    code, out, _ = run(capsys, "main", "HEAD")
    assert code == 1
    assert "old: main (git " in out and "policies/)" in out
    assert "CHANGED outage  (HEAD:policies/tests/outage.yaml)" in out
    assert out.splitlines()[-1] == "2 scenarios, 1 changed, 1 now failing"
    assert git(repo, "status", "--porcelain") == status
    assert git(repo, "rev-parse", "HEAD") == head
    code, out, _ = run(capsys, "HEAD~1", "main")
    assert code == 0, out


def test_a_revision_against_the_work_tree_and_another_policies_folder(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    git(repo, "checkout", "-q", "main")
    code, out, _ = run(capsys, "slower", "policies")
    assert code == 1 and "1 changed" in out.splitlines()[-1]
    git(repo, "mv", "policies", "rules")
    commit_all(repo, "rename the folder")
    code, out, err = run(capsys, "--policies-path", "rules", "HEAD", "rules")
    assert code == 0, err
    code, _, err = run(capsys, "HEAD", "rules")
    assert code == 2 and "has no files below policies/" in err


def test_bad_revisions_and_invalid_policies_in_a_revision_exit_2(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(repo)
    code, _, err = run(capsys, "main", "no-such-branch")
    assert code == 2 and "'no-such-branch' is neither a file or folder nor a revision" in err
    text = (repo / "policies" / "shop.yaml").read_text().replace("rto: 15m", "rto: soon")
    (repo / "policies" / "shop.yaml").write_text(text)
    commit_all(repo, "typo")
    code, _, err = run(capsys, "main", "HEAD")
    assert code == 2
    assert "HEAD:policies/shop.yaml:" in err and "rto" in err
    monkeypatch.chdir(tmp_path)  # not a repository
    code, _, err = run(capsys, "main", "HEAD")
    assert code == 2 and "not in a git repository" in err

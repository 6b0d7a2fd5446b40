"""docs/policy-ci.md, run: its pre-commit hook installed in a throw-away git repository (with a
bare "origin"), and its GitHub Actions workflow's `run:` steps executed the way a runner
executes them (bash -eo pipefail, GITHUB_BASE_REF, GITHUB_STEP_SUMMARY; a failed step stops
the steps after it unless their `if:` says otherwise), on a pull request branch that makes
webapp's detection slower. The page's blocks are read from the page itself, so the page and
what was tested cannot drift apart."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.git_repo import git, git_env

ROOT = Path(__file__).parents[2]
PAGE = ROOT / "docs" / "policy-ci.md"
SKIPPED_STEPS = {"install failoverd"}  # the test's PATH has the failoverd under test


def block(name: str) -> str:
    """The fenced block that follows ``<!-- policy-ci: NAME -->`` on the page."""
    text = PAGE.read_text()
    found = re.search(rf"<!-- policy-ci: {name} -->\n```\w+\n(.*?)\n```\n", text, re.DOTALL)
    assert found, f"docs/policy-ci.md has no block {name!r}"
    return found[1] + "\n"


def env(**extra: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**git_env(), "PATH": path, **extra}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A clone of a bare origin whose main holds the example policies."""
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    work = tmp_path / "work"
    subprocess.run(
        ["git", "clone", "-q", str(origin), str(work)],
        check=True,
        env=git_env(),
        capture_output=True,
    )
    git(work, "checkout", "-q", "-b", "main")
    shutil.copytree(ROOT / "policies", work / "policies")
    return work


def commit(work: Path, message: str) -> subprocess.CompletedProcess[str]:
    """``git commit`` with the hook's output (git sends a hook's stdout to stderr) as stdout."""
    git(work, "add", "-A")
    return subprocess.run(
        ["git", "commit", "-q", "-m", message],
        cwd=work,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def slower_webapp(work: Path) -> None:
    path = work / "policies" / "webapp" / "webapp.yaml"
    text = path.read_text()
    assert "consecutive_failures: 3 " in text
    path.write_text(text.replace("consecutive_failures: 3 ", "consecutive_failures: 6 ", 1))


def test_the_pre_commit_hook_refuses_broken_policies_and_failing_scenarios(work: Path) -> None:
    hook = work / ".git" / "hooks" / "pre-commit"
    hook.write_text(block("pre-commit-hook"))
    hook.chmod(0o755)
    first = commit(work, "policies")  # no HEAD yet: validate and test only
    assert first.returncode == 0, first.stdout + first.stderr
    head = git(work, "rev-parse", "HEAD")

    webapp = work / "policies" / "webapp" / "webapp.yaml"
    good = webapp.read_text()
    webapp.write_text(good.replace("rto: 15m", "rto: soon"))
    broken = commit(work, "a typo")
    assert broken.returncode != 0
    assert "webapp.yaml:" in broken.stdout and "rto" in broken.stdout
    assert git(work, "rev-parse", "HEAD") == head

    webapp.write_text(good)
    slower_webapp(work)
    failing = commit(work, "detect later")
    assert failing.returncode != 0
    assert "FAIL primary region outage" in failing.stdout
    assert git(work, "rev-parse", "HEAD") == head

    webapp.write_text(good.replace("Customer-facing web app", "The customer-facing web app"))
    described = commit(work, "a better description")
    assert described.returncode == 0, described.stdout + described.stderr
    assert described.stdout.splitlines()[-1].endswith("scenarios, 0 changed, 0 now failing")
    (work / "README").write_text("not a policy\n")
    assert commit(work, "no policy staged: nothing run").returncode == 0


def test_the_pre_commit_framework_config_runs_the_same_commands() -> None:
    config = yaml.safe_load(block("pre-commit-config"))
    hooks = config["repos"][0]["hooks"]
    assert [h["entry"] for h in hooks] == [
        "failoverd validate policies",
        "failoverd test policies",
    ]
    assert all(h["language"] == "system" and h["pass_filenames"] is False for h in hooks)


def run_workflow(work: Path, summary: Path) -> list[tuple[str, int | None, str]]:
    """Every job step the way a runner would: `uses:` steps are the runner's (the checkout
    is ``work``), `run:` steps in bash -eo pipefail; after a failure, only steps whose `if:`
    does not require success run. Returns (name, exit code or None if not run, output)."""
    workflow: dict[Any, Any] = yaml.safe_load(block("workflow"))
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert trigger["pull_request"]["paths"] == ["policies/**"]
    steps = workflow["jobs"]["policies"]["steps"]
    variables = env(
        **{k: str(v) for k, v in workflow.get("env", {}).items()},
        GITHUB_BASE_REF="main",
        GITHUB_STEP_SUMMARY=str(summary),
        CI="true",
    )
    failed = False
    out: list[tuple[str, int | None, str]] = []
    for step in steps:
        if "run" not in step:
            continue
        name = step.get("name", step["run"])
        runs_after_failure = "cancelled()" in str(step.get("if", "")) or "always()" in str(
            step.get("if", "")
        )
        if name in SKIPPED_STEPS or (failed and not runs_after_failure):
            out.append((name, None, ""))
            continue
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=work,
            env=variables,
            capture_output=True,
            text=True,
            timeout=300,
        )
        failed = failed or done.returncode != 0
        out.append((name, done.returncode, done.stdout + done.stderr))
    return out


def test_the_workflow_shows_what_a_pull_request_does_in_the_job_summary(
    work: Path, tmp_path: Path
) -> None:
    assert commit(work, "policies").returncode == 0
    git(work, "push", "-q", "origin", "main")
    git(work, "checkout", "-q", "-b", "detect-later")
    slower_webapp(work)
    assert commit(work, "webapp: six failures in a row").returncode == 0
    git(work, "fetch", "-q", "origin")
    summary = tmp_path / "summary.md"
    steps = {name: (code, output) for name, code, output in run_workflow(work, summary)}
    assert steps["validate"][0] == 0, steps["validate"][1]
    assert steps["test"][0] == 1  # the webapp scenarios expect the old timing
    code, output = steps["diff against the base branch"]
    assert code == 0, output  # changed decisions are for the reviewer, not a failure
    text = summary.read_text()
    assert text.startswith("## failoverd diff: main -> this pull request")
    last = re.search(r"\*\*(\d+) scenarios, (\d+) changed, (\d+) now failing\*\*", text)
    assert last is not None, text
    total, changed, failing = map(int, last.groups())
    assert total >= 40 and changed >= 1 and failing >= 1
    assert "CHANGED primary region outage fails over to us-west-2 within the RTO" in text
    assert "(HEAD:policies/webapp/tests/primary_outage.yaml)" in text
    assert "old: origin/main (git " in text
    body = yaml.safe_load((work / "failoverd-diff.json").read_text())  # JSON is YAML
    assert body["summary"]["changed"] == changed
    assert git(work, "status", "--porcelain", "--", "policies") == ""  # no checkout happened

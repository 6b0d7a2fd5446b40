"""`failoverd sandbox env` and the sandbox's own secrets: the lines an operator evals to
point the CLI at a running sandbox, the message when none runs, and the example policies'
secret files made inside the sandbox (readable by the daemon, found by readiness)."""

from __future__ import annotations

import json
import shlex
import tempfile
from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.policy.loader import load_policy_set
from orchestrator.sandbox.runner import env_lines, pointer_file, sandbox_secrets
from orchestrator.sandbox.seed import example_policy

STATE = {
    "aws_endpoint": "http://127.0.0.1:4566",
    "health_endpoint": "http://127.0.0.1:4567",
    "api": "http://127.0.0.1:8080",
    "token_file": "/tmp/a dir/token",
    "policies": "/tmp/a dir/policies",
    "workdir": "/tmp/a dir",
}


def test_the_env_lines_point_aws_and_the_cli_at_the_sandbox() -> None:
    lines = env_lines(STATE)
    words = [shlex.split(line) for line in lines]
    exported = {w.split("=", 1)[0]: w.split("=", 1)[1] for ws in words for w in ws[1:] if "=" in w}
    assert exported["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"
    assert exported["AWS_ENDPOINT_URL_HEALTH"] == "http://127.0.0.1:4567"
    assert exported["AWS_ACCESS_KEY_ID"] == "testing"
    assert exported["FAILOVERD_API"] == "http://127.0.0.1:8080"
    assert exported["FAILOVERD_TOKEN_FILE"] == "/tmp/a dir/token"  # quoted for the shell
    assert exported["FAILOVERD_POLICIES"] == "/tmp/a dir/policies"
    assert ["unset", "AWS_PROFILE", "AWS_SESSION_TOKEN"] in words  # a real profile is not used


def test_sandbox_env_prints_the_running_sandbox_s_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run-file is looked for
    assert main(["sandbox", "env"]) == 2
    assert "no running sandbox found" in capsys.readouterr().err
    pointer_file().write_text(json.dumps(STATE))
    assert main(["sandbox", "env"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("# failoverd sandbox /tmp/a dir")
    assert out.splitlines()[1:] == env_lines(STATE)


def test_the_example_secrets_are_made_in_the_sandbox(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    zones = {"reports": "ZREPORTS", "webapp": "ZWEB", "ledger": "ZL", "catalog": "ZC"}
    ports = {r: 9000 + i for i, r in enumerate(("us-east-1", "us-west-2", "eu-west-1"))}
    text = example_policy("reports", zones, ports, ["local"])
    assert "/etc/failoverd/secrets/reports-webhook" in text
    (policies / "reports.yaml").write_text(text)
    made = sandbox_secrets(policies, tmp_path / "secrets")
    assert made == [tmp_path / "secrets" / "reports-webhook"]
    assert made[0].stat().st_mode & 0o777 == 0o600 and len(made[0].read_text().strip()) > 30
    policy = yaml.safe_load((policies / "reports.yaml").read_text())
    (step,) = [s for s in policy["runbooks"]["failover"] if s["action"] == "webhook"]
    assert step["params"]["secret_file"] == str(made[0])
    load_policy_set([policies])  # still a valid policy
    # Again (a restart of the same sandbox): the secret is kept, not replaced.
    secret = made[0].read_text()
    assert sandbox_secrets(policies, tmp_path / "secrets") == []
    assert made[0].read_text() == secret

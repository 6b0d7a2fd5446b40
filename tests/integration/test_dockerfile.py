"""The Dockerfile: what the image promises, and its install steps replayed without Docker."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from orchestrator import __version__

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction, continuations joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def test_image_runs_as_a_non_root_user_with_state_volume() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    users = [args for k, args in stage if k == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert ("VOLUME", "/var/lib/failoverd") in stage
    assert ("EXPOSE", "8080") in stage
    # The venv comes from the builder; the final stage installs nothing itself.
    assert any(k == "COPY" and args.startswith("--from=builder") for k, args in stage)


def test_entrypoint_and_cmd_start_the_daemon() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["failoverd"]
    assert json.loads(stage["CMD"]) == ["run", "--config", "/etc/failoverd/failoverd.yaml"]


def test_healthcheck_probes_healthz_without_the_cli() -> None:
    stage = dict(final_stage())
    options, _, command = stage["HEALTHCHECK"].partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "http://127.0.0.1:8080/healthz" in argv[2]
    assert "timeout=" in argv[2], "the probe itself must be bounded"
    ast.parse(argv[2])  # a syntax error would make the container unhealthy forever


def test_install_steps_replayed_in_a_fresh_venv_give_a_working_failoverd() -> None:
    # Reuses the host's pip cache; the first run on a machine downloads the dependencies.
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check-dockerfile.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == f"failoverd {__version__}"
    replayed = [shlex.split(line)[2:] for line in result.stderr.splitlines() if "RUN " in line]
    assert any("install" in argv for argv in replayed), result.stderr[-4000:]

"""The Dockerfile: what the image promises, and its install steps replayed without Docker."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from orchestrator import __version__
from tests.fixtures.binaries import require_binary
from tests.fixtures.controller import policy_text
from tests.fixtures.secrets import write_secret

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


PINNED_BASE = re.compile(r"python:3\.11-slim@sha256:[0-9a-f]{64}")


def test_the_base_image_is_pinned_by_digest_in_both_stages() -> None:
    bases = [args.split()[0] for keyword, args in instructions() if keyword == "FROM"]
    assert len(bases) == 2 and bases[0] == bases[1], bases
    assert PINNED_BASE.fullmatch(bases[0]), bases[0]


def test_dependencies_are_installed_from_the_hashed_lock() -> None:
    runs = [args for keyword, args in instructions() if keyword == "RUN" and "install" in args]
    deps, project = runs
    assert "--require-hashes" in deps and "-r requirements.lock" in deps and "--no-deps" in deps
    # The project itself: nothing resolved or fetched unhashed (no deps, no build isolation).
    assert project.endswith("pip install --no-deps --no-build-isolation .")
    locked = lock_entries()
    for entry, hashes in locked.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), entry
    pins = {Requirement(e).name.lower().replace("_", "-"): Requirement(e) for e in locked}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = [*declared["project"]["dependencies"], *declared["build-system"]["requires"]]
    for text in needed:
        wanted = Requirement(text)
        pin = pins.get(wanted.name.lower().replace("_", "-"))
        assert pin is not None, f"{wanted.name} is not in requirements.lock: run scripts/lock.sh"
        (version,) = [s.version for s in pin.specifier]
        assert wanted.specifier.contains(version), f"{pin} does not satisfy {wanted}"


def lock_entries() -> dict[str, list[str]]:
    """``name==version`` -> its hashes, from requirements.lock."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "requirements.lock").read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            requirement, *options = line.split()
            out[requirement] = [o.removeprefix("--hash=") for o in options]
    return out


def test_image_runs_as_a_non_root_user_with_state_volume() -> None:
    stage = final_stage()
    assert PINNED_BASE.fullmatch(stage[0][1])
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


# --- the image's command, replayed --------------------------------------------------------
# Where the image's paths are here: the venv the tests run in stands for /opt/failoverd; the
# operator's mounted /etc/failoverd and the state volume are folders of the test.
IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
CLIENT = r"""
import json, sys, urllib.request, urllib.error
port, token = sys.argv[1], sys.argv[2]
def call(method, path, headers, body=None):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
as_json = {"Content-Type": "application/json"}
print(json.dumps({
    "healthz": call("GET", "/healthz", {}),
    "status": call("GET", "/v1/status", {}),
    "pause_without_token": call("POST", "/v1/pause", as_json, b'{"reason": "r"}'),
    "pause_with_token": call(
        "POST", "/v1/pause", {**as_json, "Authorization": f"Bearer {token}"}, b'{"reason": "r"}'
    ),
}))
"""


def image_env(relocate: dict[str, str]) -> dict[str, str]:
    """The final stage's ENV, paths relocated, on the base image's PATH."""
    env = {"PATH": IMAGE_PATH, "HOME": relocate["/var/lib/failoverd"], "LANG": "C.UTF-8"}
    for keyword, args in final_stage():
        if keyword != "ENV":
            continue
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            value = value.replace("$PATH", env["PATH"])
            for old, new in relocate.items():
                value = value.replace(old, new)
            env[key] = value
    return env


def test_the_image_command_serves_its_api_on_every_address(tmp_path: Path) -> None:
    """`failoverd run` exactly as the image starts it: its ENTRYPOINT and CMD, its ENV
    (0.0.0.0, remote allowed, JSON logs), in its WORKDIR, with an operator's /etc/failoverd
    mounted; in a network namespace of its own, as a container has, so that the port and
    the HEALTHCHECK are the image's own. The API answers reads, refuses commands without
    the token, and takes them with it."""
    unshare, nsenter = require_binary("unshare"), require_binary("nsenter")
    if os.geteuid() != 0:
        pytest.skip("a network namespace of its own needs root")
    etc, state = tmp_path / "etc" / "failoverd", tmp_path / "var" / "lib" / "failoverd"
    (etc / "policies").mkdir(parents=True)
    state.mkdir(parents=True, mode=0o700)
    (etc / "policies" / "shop.yaml").write_text(policy_text(interval="1s", timeout="500ms"))
    write_secret(etc / "api-token", "container-token\n")
    (etc / "failoverd.yaml").write_text(
        f"node_id: container\npolicies: [{etc / 'policies'}]\n"
        f"state: {{path: {state / 'state.db'}}}\nhttp: {{token_file: {etc / 'api-token'}}}\n"
    )
    relocate = {"/opt/failoverd": sys.prefix, "/etc/failoverd": str(etc)}
    relocate["/var/lib/failoverd"] = str(state)
    stage = dict(final_stage())
    argv = [*json.loads(stage["ENTRYPOINT"]), *json.loads(stage["CMD"])]
    for old, new in relocate.items():
        argv = [a.replace(old, new) for a in argv]
    env = image_env(relocate)
    argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    assert argv[0] == str(Path(sys.prefix) / "bin" / "failoverd")
    workdir = relocate[stage["WORKDIR"]]
    daemon = subprocess.Popen(
        [unshare, "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv],
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            lines.append(line)
            if '"api_listening"' in line or '"daemon_not_started"' in line:
                break
        listening = json.loads(lines[-1])
        assert listening["event"] == "api_listening", "".join(lines[-20:])
        assert listening["addresses"] == ["('0.0.0.0', 8080)"]
        inside = [nsenter, f"--target={daemon.pid}", "--net"]
        healthcheck = json.loads(stage["HEALTHCHECK"].partition("CMD ")[2])
        healthcheck[0] = shutil.which(healthcheck[0], path=env["PATH"]) or healthcheck[0]
        health = subprocess.run(
            [*inside, *healthcheck],
            capture_output=True,
            timeout=30,
            check=False,
            env=env,
        )
        assert health.returncode == 0, health.stderr
        answers = subprocess.run(
            [*inside, sys.executable, "-c", CLIENT, "8080", "container-token"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert json.loads(answers.stdout) == {
            "healthz": 200,
            "status": 200,
            "pause_without_token": 401,
            "pause_with_token": 202,
        }
    finally:
        daemon.terminate()
        rest = daemon.communicate(timeout=20)[1]
        lines.append(rest)
    assert daemon.returncode == 0, "".join(lines[-20:])
    logged = "".join(lines).splitlines()
    assert logged and all(line.startswith("{") for line in logged)  # JSON lines, as the ENV says
    assert "container-token" not in "".join(lines)

"""Policy reloads never stop or freeze the daemon: the set is loaded in a worker thread
while the event loop goes on, and whatever the files hold (or the loader raises), the old
set stays with every error logged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orchestrator.daemon import support
from orchestrator.daemon.controller import Controller
from orchestrator.daemon.support import reload_policies
from orchestrator.policy.loader import PolicySet
from tests.fixtures.clock import eventually
from tests.fixtures.daemon import failoverd
from tests.unit.daemon.controller_support import SHOP_POLICY


async def test_the_set_is_loaded_off_the_event_loop(
    controller: Controller, policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    real = support.load_policy_set

    def slow(paths: list[str]) -> PolicySet:
        started.set()
        # Only the event loop sets `release`: a load on the loop would wait here in vain.
        if not release.wait(10):
            raise AssertionError("the event loop did not run while the policies loaded")
        return real(paths)

    monkeypatch.setattr(support, "load_policy_set", slow)
    (policy_dir / "shop.yaml").write_text(SHOP_POLICY.replace("rto: 15m", "rto: 10m"))
    reload = asyncio.create_task(reload_policies(controller, [str(policy_dir)], "test"))
    await eventually(started.is_set, "the load to start")
    assert not reload.done()
    release.set()
    assert await reload
    assert controller.snapshot("shop").rto == 600.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text",
    [
        SHOP_POLICY.replace("rto: 15m", "rto: " + "1" * 5000),  # ValueError in PyYAML
        "service: &s [*s]\n",  # RecursionError in the old builder
        "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
    ],
    ids=["digits", "recursive-alias", "alias-bomb"],
)
async def test_a_hostile_file_keeps_the_old_set_with_a_located_error(
    controller: Controller, policy_dir: Path, text: str
) -> None:
    old = controller.policy_version
    policy = policy_dir / "shop.yaml"
    policy.write_text(text)
    with capture_logs() as logs:
        assert not await reload_policies(controller, [str(policy_dir)], "test")
    assert controller.policy_version == old
    errors = [e["error"] for e in logs if e["event"] == "policy_error"]
    assert errors and all(e.startswith(f"{policy}:") for e in errors), errors
    assert errors[0].split(":")[1].isdigit(), "the error names the line"


async def test_an_unforeseen_loader_error_keeps_the_old_set(
    controller: Controller, policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(paths: list[str]) -> PolicySet:
        raise MemoryError

    monkeypatch.setattr(support, "load_policy_set", broken)
    old = controller.policy_version
    with capture_logs() as logs:
        assert not await reload_policies(controller, [str(policy_dir)], "test")
    assert controller.policy_version == old
    (error,) = [e["error"] for e in logs if e["event"] == "policy_error"]
    assert "could not be loaded (MemoryError)" in error


@pytest.mark.parametrize(
    "text",
    ["service: &s [*s]\n", SHOP_POLICY.replace("rto: 15m", "rto: " + "1" * 5000)],
    ids=["recursive-alias", "digits"],
)
def test_a_bad_policy_at_start_exits_2_with_the_located_error_and_no_traceback(
    tmp_path: Path, text: str
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "shop.yaml").write_text(text)
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        f"policies: [{policies}]\nstate: {{path: {tmp_path / 'state.db'}}}\nhttp: {{port: 0}}\n"
        "log: {format: json}\n"
    )
    result = failoverd("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]  # one event per line
    errors = [e["error"] for e in events if e["event"] == "policy_error"]
    assert errors and errors[0].startswith(f"{policies / 'shop.yaml'}:"), errors
    assert errors[0].split(":")[1].isdigit()
    assert [e["event"] for e in events][-1] == "daemon_not_started"


def test_the_process_is_tuned_for_a_responsive_loop() -> None:
    # In a fresh interpreter: freezing and the switch interval are process-wide.
    script = (
        "import gc, sys\n"
        "from orchestrator.daemon.support import SWITCH_INTERVAL, tune_process\n"
        "tune_process()\n"
        "print(sys.getswitchinterval() == SWITCH_INTERVAL, gc.get_freeze_count() > 10_000)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["True", "True"]

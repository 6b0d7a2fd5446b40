"""SIGKILL the executor at every step boundary and mid-step, restart it each time: the run
completes, the world ends right, and no step's change is applied twice.

The worker (``crash_worker.py``) runs the example webapp policy's failover runbook in a
subprocess against a SQLite file. One chain of incarnations covers every crash point: each
incarnation stops at the first point not yet used, the test kills it there (SIGKILL, no
cleanup) and starts the next, until one finishes on its own.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.policy.loader import load_policy_file
from orchestrator.store.base import JournalStatus
from orchestrator.store.sqlite import SqliteStore
from tests.integration.runbook.crash_worker import POLICY, RUN_ID

ROOT = Path(__file__).parents[3]
INCARNATION_DEADLINE = 30.0  # seconds for one worker to reach its crash point or finish
STEPS = [s.name for s in load_policy_file(POLICY).runbooks.failover]
POINTS = [f"{s}:{p}" for s in STEPS for p in ("started", "applied", "succeeded")]


def incarnation(folder: Path) -> str | None:
    """Run one worker; the crash point it was killed at, or None when it finished."""
    marker = folder / "marker"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.runbook.crash_worker", str(folder)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + INCARNATION_DEADLINE
        while time.monotonic() < deadline:
            if marker.exists():
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                return marker.read_text()
            if proc.poll() is not None:
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                assert proc.returncode == 0, f"worker failed ({proc.returncode}): {stderr}"
                return None
            time.sleep(0.01)
        pytest.fail(f"worker neither crashed nor finished in {INCARNATION_DEADLINE}s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_killed_at_every_step_boundary_and_mid_step_the_run_completes_once(
    tmp_path: Path,
) -> None:
    (tmp_path / "world").mkdir()
    killed_at: list[str] = []
    for _ in range(len(POINTS) + 2):
        point = incarnation(tmp_path)
        if point is None:
            break
        killed_at.append(point)
    else:
        pytest.fail(f"the run never finished; killed at {killed_at}")

    # Every crash point was reached once, each in its own incarnation.
    assert sorted(killed_at) == sorted(POINTS)

    # The world ended right: every step's effect, rendered for this failover.
    world = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "world").glob("*.json")}
    assert set(world) == set(STEPS)
    assert world["flip-dns"]["value"] == "api.us-west-2.webapp.example.com"
    assert world["scale-up"]["auto_scaling_group"] == "webapp-us-west-2"
    assert (
        world["notify-start"]["message"] == "failoverd: moving webapp from us-east-1 to us-west-2"
    )

    # No step changed the world twice, whatever attempt it was re-entered at.
    effects = (tmp_path / "effects.log").read_text().split("\n")
    assert Counter(line.split()[0] for line in effects if line) == Counter(STEPS)

    records = asyncio.run(read_journal(tmp_path / "state.db"))
    assert records[-1].status is JournalStatus.RUN_SUCCEEDED
    succeeded = [r for r in records if r.status is JournalStatus.STEP_SUCCEEDED]
    assert Counter(r.step for r in succeeded) == Counter(STEPS)  # each step ended once
    # A step killed mid-step (changed, not journaled) was re-entered and found it done.
    for r in succeeded:
        assert r.detail == (
            f"unchanged: {r.step} already in place" if r.attempt > 1 else f"changed: {r.step} set"
        ), r
    for step in STEPS:
        attempts = [
            r.attempt for r in records if r.step == step and r.status is JournalStatus.STEP_STARTED
        ]
        assert attempts == list(range(1, len(attempts) + 1))  # numbering continues
        # Its own `started` and `applied` crashes each forced a re-entry; crashes of steps
        # running beside it may have interrupted it more often.
        assert len(attempts) >= 3
    # Every incarnation wrote with a newer lease; never an older token after a newer one.
    tokens = [r.token for r in records]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(POINTS) + 1


async def read_journal(path: Path) -> list:  # type: ignore[type-arg]
    store = await SqliteStore.open(path)
    try:
        state = await store.load_state("webapp")
        assert state is not None and state.active_region == "us-west-2" and state.run is None
        assert await store.unfinished_runs() == []
        return list(await store.read_run(RUN_ID))
    finally:
        await store.close()

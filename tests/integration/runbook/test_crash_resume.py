"""SIGKILL the executor before the first step, at step boundaries and mid-step (in the middle
of the RDS promotion too), restart it each time: the run completes, the world ends right,
and no step's change reaches AWS twice.

The worker (``crash_worker.py``) runs the example webapp policy's failover runbook with the
real actions in a subprocess, against a SQLite file and this test's moto server (over HTTP
on loopback). One chain of incarnations walks the plan: each incarnation is told where to
stop, the test kills it there (SIGKILL, no cleanup) and starts the next with
``resume_unfinished()``, until the last one finishes on its own.

Crash points are only taken in steps that cannot have moved past them while another step
was being killed: ``notify-start``, ``promote-db`` and ``scale-up`` run side by side, so a
kill inside one may catch another anywhere (a free extra crash point, whose effects the
assertions cover, but not one the plan can count on). ``promote-db`` is the step worth
the detail; the others' points come after it, when they run alone.
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

from orchestrator.store.base import JournalRecord, JournalStatus
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.moto_fixups import apply_moto_fixups
from tests.fixtures.moto_server import MotoServer
from tests.integration.runbook.crash_worker import POLICY_VERSION, RUN_ID
from tests.integration.runbook.webapp_world import (
    DONE_MESSAGE,
    SERVICE,
    START_MESSAGE,
    TARGET,
    assert_failed_over,
    moto_mutations,
    notifications,
    seed_world,
)

ROOT = Path(__file__).parents[3]
WORKER = "tests.integration.runbook.crash_worker"
INCARNATION_DEADLINE = 30.0  # seconds for one worker to reach its crash point or finish
STEPS = ["notify-start", "promote-db", "scale-up", "flip-dns", "notify-done"]
PLAN = [
    "run:started",  # before the first step (and before the service state knows of the run)
    "notify-start:started",
    "promote-db:started",
    "before:PromoteReadReplica",  # tagged promoted-by, not yet promoted
    "after:PromoteReadReplica",  # promoted, execute not returned, verify not run
    "promote-db:succeeded",  # between steps
    "flip-dns:started",
    "flip-dns:applied",  # UPSERT sent, verify not run
    "flip-dns:succeeded",  # between steps
    "notify-done:succeeded",  # every step done, the run not ended
    "run:settled",  # service state moved, run_succeeded not written
]


def incarnation(folder: Path, point: str | None) -> str | None:
    """Run one worker; the crash point it was killed at, or None when it finished."""
    marker = folder / "marker"
    marker.unlink(missing_ok=True)
    with (folder / "worker.log").open("w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", WORKER, str(folder), point or "none"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + INCARNATION_DEADLINE
            while time.monotonic() < deadline:
                if marker.exists():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                    return marker.read_text()
                if proc.poll() is not None:
                    log.seek(0)
                    assert proc.returncode == 0, f"worker failed ({proc.returncode}): {log.read()}"
                    return None
                time.sleep(0.01)
            pytest.fail(f"worker neither crashed nor finished in {INCARNATION_DEADLINE}s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_killed_before_between_and_inside_steps_the_run_completes_once(
    moto: MotoServer, tmp_path: Path
) -> None:
    apply_moto_fixups()
    seeded = seed_world(moto)
    config = {"endpoint_url": moto.endpoint_url, "zone_id": seeded.zone_id}
    (tmp_path / "config.json").write_text(json.dumps(config))

    killed_at: list[str | None] = []
    with moto_mutations() as changes:
        for point in [*PLAN, None]:
            killed_at.append(incarnation(tmp_path, point))

    # Every incarnation but the last was killed where the plan said; the last finished.
    assert killed_at == [*PLAN, None]

    # The world ended right.
    assert_failed_over(moto, seeded, RUN_ID)
    # No change reached AWS twice. The promoted-by tag was written by both attempts that
    # got that far (killed before, and just after, PromoteReadReplica): the same value, and
    # the tag is what lets the third attempt know the standalone instance is its own doing.
    assert changes["PromoteReadReplica"] == 1
    assert changes["AddTagsToResource"] == 2
    assert changes["SetDesiredCapacity"] + changes["UpdateAutoScalingGroup"] == 1
    assert changes["ChangeResourceRecordSets"] == 1
    sent = Counter(n["Message"] for n in notifications(moto, seeded.queue_url))
    assert sent.total() == changes["Publish"]
    assert sent[DONE_MESSAGE] == 1

    records, state_ok = asyncio.run(read_journal(tmp_path / "state.db"))
    assert state_ok
    assert records[-1].status is JournalStatus.RUN_SUCCEEDED
    assert {r.policy_version for r in records} == {POLICY_VERSION}
    succeeded = {r.step: r for r in records if r.status is JournalStatus.STEP_SUCCEEDED}
    assert sorted(succeeded) == sorted(STEPS)
    assert Counter(r.step for r in records if r.status is JournalStatus.STEP_SUCCEEDED) == (
        Counter(STEPS)
    )  # each step ended once
    changed = Counter(r.step for r in records if r.detail.startswith("changed:"))
    assert all(n <= 1 for n in changed.values()), changed
    # The steps killed after their change found it in place when re-entered.
    assert succeeded["promote-db"].detail == "unchanged: webapp-db-usw2 already standalone"
    assert succeeded["flip-dns"].detail.startswith("unchanged: api.webapp.example.com. already")
    for step in STEPS:
        attempts = [
            r.attempt for r in records if r.step == step and r.status is JournalStatus.STEP_STARTED
        ]
        assert attempts == list(range(1, len(attempts) + 1)), step  # numbering continues
        assert attempts[-1] == succeeded[step].attempt
    # promote-db was re-entered after each of its three kills, flip-dns after its two.
    assert succeeded["promote-db"].attempt >= 4
    assert succeeded["flip-dns"].attempt >= 3
    # Notifications are at least once (nothing to read back): notify-start, killed along
    # with the steps beside it, may have published in more than one of its attempts.
    assert 1 <= sent[START_MESSAGE] <= succeeded["notify-start"].attempt
    # Every incarnation wrote with a newer lease; never an older token after a newer one.
    # (All but the one killed at run:settled, which had nothing left to journal.)
    tokens = [r.token for r in records]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(PLAN)


async def read_journal(path: Path) -> tuple[list[JournalRecord], bool]:
    store = await SqliteStore.open(path)
    try:
        state = await store.load_state(SERVICE)
        state_ok = (
            state is not None
            and state.active_region == TARGET
            and state.run is None
            and not await store.unfinished_runs()
        )
        return list(await store.read_run(RUN_ID)), state_ok
    finally:
        await store.close()

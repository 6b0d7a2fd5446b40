"""`failoverd sandbox --instances 2`: the high-availability sandbox as a user starts it.

One subprocess (no agents, API ports chosen by the kernel): it starts a 3-member etcd
cluster and two daemons, prints each instance's API and which one leads; the test checks that
against the instances' own /v1/status, kills the leader daemon and waits for the summary
line naming the new leader, then stops the sandbox with SIGINT and checks that every process
it printed is gone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from tests.e2e.support import COMMAND, ROOT, alive, get_json, read_until, stop
from tests.fixtures.binaries import require_binary

START_DEADLINE = 90.0  # moto, the emulators, 3 etcd members and 2 daemons on 2 cores
TAKEOVER_DEADLINE = 20.0  # the sandbox's 5 s lease, an election, a 2 s summary period
STOP_DEADLINE = 30.0


def test_the_ha_sandbox_runs_two_instances_one_leads_and_another_takes_over() -> None:
    require_binary("etcd", "/usr/bin/etcd")
    proc = subprocess.Popen(
        [*COMMAND, "--instances", "2", "--port", "0", "--no-agents"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        read_until(
            proc, r"sandbox: etcd +http://127\.0\.0\.1:\d+(,http://127\.0\.0\.1:\d+){2} ", 90
        )
        line = r"sandbox: instance +(sandbox-\d) (http://127\.0\.0\.1:\d+) \((leader|follower)\)"
        first = read_until(proc, line, 5)
        second = read_until(proc, line, 5)
        roles = {m[1]: (m[2], m[3]) for m in (first, second)}
        assert sorted(role for _, role in roles.values()) == ["follower", "leader"], roles
        for node, (url, role) in roles.items():
            status = get_json(f"{url}/v1/status")
            assert status["node_id"] == node
            assert status["is_leader"] is (role == "leader"), status
        pids = dict(kv.split("=") for kv in read_until(proc, r"sandbox: pids (.*)$", 10)[1].split())
        assert {"etcd0", "etcd1", "etcd2", "daemon-1", "daemon-2"} <= set(pids), pids

        leader = next(n for n, (_, role) in roles.items() if role == "leader")
        follower = next(n for n in roles if n != leader)
        os.kill(int(pids[f"daemon-{leader[-1]}"]), signal.SIGKILL)
        read_until(proc, rf"leader: {follower} {re.escape(roles[follower][0])}$", TAKEOVER_DEADLINE)
        assert get_json(f"{roles[follower][0]}/v1/status")["is_leader"] is True
    finally:
        rc = stop(proc, within=STOP_DEADLINE)
    assert rc == 0
    deadline = time.monotonic() + 5
    while any(alive(int(p)) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [name for name, p in pids.items() if alive(int(p))], pids

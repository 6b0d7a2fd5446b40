"""docs/rollout.md's etcd section, run as written: its openssl commands issue the
certificates, a real etcd member runs with its TLS flags, its etcdctl commands create the
users and roles and turn authentication on, and failoverd's store opens with its settings:
it takes the lease, announces its API, journals, and cannot write outside its prefix.
Host names and addresses are swapped for loopback ones; nothing else is changed."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.settings import StateSettings
from orchestrator.store.base import JournalRecord, JournalStatus
from orchestrator.store.open import open_store
from tests.fixtures.binaries import free_port, port_open, require_binary, wait_until

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## High availability: etcd with authentication and TLS"


def blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block of the etcd section."""
    text = (ROOT / "docs" / "rollout.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL)


def run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def member(tmp_path: Path) -> Iterator[dict[str, Any]]:
    etcd = require_binary("etcd", "/usr/bin/etcd")
    require_binary("etcdctl", "/usr/bin/etcdctl")
    require_binary("openssl")
    (_, certs_sh), (_, flags), _, _ = blocks()
    env = {**os.environ, "MEMBER_DNS": "localhost", "MEMBER_IP": "127.0.0.1"}
    made = run(certs_sh, tmp_path, env)
    assert made.returncode == 0, made.stderr
    client, peer = free_port(), free_port()
    argv = [
        etcd,
        "--name=etcd-a",
        f"--data-dir={tmp_path / 'data'}",
        f"--listen-peer-urls=https://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=https://127.0.0.1:{peer}",
        f"--initial-cluster=etcd-a=https://127.0.0.1:{peer}",
    ]
    for flag in flags.split():  # the doc's flags, on loopback
        flag = flag.replace("10.0.1.10:2379", f"127.0.0.1:{client}")
        argv.append(flag.replace("etcd-a.internal.example:2379", f"localhost:{client}"))
    log = (tmp_path / "etcd.log").open("w")
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        if proc.poll() is None:
            wait_until(lambda: port_open(client) or proc.poll() is not None, 30.0, "etcd to listen")
        assert proc.poll() is None, (tmp_path / "etcd.log").read_text()[-3000:]
        yield {"dir": tmp_path, "endpoint": f"https://localhost:{client}", "env": env}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_the_documented_etcd_setup_works_for_failoverd(member: dict[str, Any]) -> None:
    tmp: Path = member["dir"]
    _, _, (_, users_sh), (_, settings_yaml) = blocks()
    etc = tmp / "etc-failoverd"
    etc.mkdir()
    (tmp / "etcd-root-password").write_text("root-pass-0123\n")
    (etc / "etcd-password").write_text("failoverd-pass-4567\n")
    (etc / "etcd-password").chmod(0o600)
    script = users_sh.replace("/etc/failoverd/", f"{etc}/")
    env = {**member["env"], "ETCDCTL_ENDPOINTS": member["endpoint"]}
    done = run(script, tmp, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Authentication Enabled" in done.stdout

    # failoverd's settings as documented, its files where the doc's commands made them.
    for name in ("ca.pem", "etcd-client.pem", "etcd-client-key.pem"):
        (etc / name.replace("ca.pem", "etcd-ca.pem")).write_bytes((tmp / name).read_bytes())
    state = yaml.safe_load(settings_yaml.replace("/etc/failoverd/", f"{etc}/"))["state"]
    state["etcd"]["endpoints"] = [member["endpoint"]]
    settings = StateSettings.model_validate(state)
    store = await open_store(settings)
    try:
        lease = await store.acquire_lease("failoverd-use1", 10.0)
        assert lease is not None
        await store.announce(lease, "http://failoverd-use1.internal.example:8080", "v1")
        info = await store.leader_info()
        assert info is not None and info.api == "http://failoverd-use1.internal.example:8080"
        record = JournalRecord(
            "", "webapp", JournalStatus.OPERATOR_COMMAND, 1.0, lease.token, "v1", kind="pause"
        )
        await store.append_journal(record)
        assert [r.kind for r in await store.read_journal("webapp")] == ["pause"]
        await store.release_lease(lease)
    finally:
        await store.close()

    # The failoverd user can write its prefix only.
    password = (etc / "etcd-password").read_text().strip()
    tls = {"ETCDCTL_API": "3", "ETCDCTL_CACERT": "ca.pem", "ETCDCTL_CERT": "admin.pem"}
    tls["ETCDCTL_KEY"] = "admin.key"
    outside = await asyncio.to_thread(
        run,
        f"etcdctl --user failoverd --password '{password}' put /elsewhere x",
        tmp,
        env | tls,
    )
    assert outside.returncode != 0 and "permission denied" in outside.stderr, outside

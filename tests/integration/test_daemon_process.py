"""`failoverd run` as a subprocess: READY=1 on a fake NOTIFY_SOCKET after the first
evaluation (its probes hit a local aiohttp server), SIGHUP with a broken policy keeps the
old set and logs the file:line error, SIGTERM exits 0 within 10 s."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.clock import eventually
from tests.fixtures.controller import policy_text


def policy(port: int) -> str:
    return policy_text(
        interval="200ms",
        timeout="150ms",
        staleness="1m",
        target=f"http://127.0.0.1:{port}/{{region}}",
    )


@pytest.fixture
async def target() -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback HTTP server that answers 200 and remembers the paths it was asked for."""
    hits: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{region}", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, hits
    finally:
        await runner.cleanup()


async def test_ready_reload_with_errors_and_clean_shutdown(
    tmp_path: Path, target: tuple[int, list[str]]
) -> None:
    port, hits = target
    policies = tmp_path / "policies"
    policies.mkdir()
    policy_file = policies / "shop.yaml"
    policy_file.write_text(policy(port))
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        f"node_id: test-node\npolicies: [{policies}]\nstate: {{path: {tmp_path / 'state.db'}}}\n"
        "engine: {tick: 200ms}\nleader: {ttl: 3s}\nhttp: {port: 0}\n"
    )
    # A short path: unix socket addresses are limited to 107 bytes.
    sock_dir = tempfile.mkdtemp(prefix="fo-", dir="/tmp")
    address = os.path.join(sock_dir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(address)
    notify.setblocking(False)
    messages: list[str] = []
    stderr: list[str] = []
    env = {**os.environ, "NOTIFY_SOCKET": address}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator.daemon.main",
        "run",
        "--config",
        str(config),
        env=env,
        cwd=Path(__file__).parents[3],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()

    async def read_notify() -> None:
        while True:
            messages.append((await loop.sock_recv(notify, 4096)).decode())

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            stderr.append(line.decode())

    def events(name: str) -> list[dict[str, object]]:
        out = []
        for line in stderr:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                out.append(record)
        return out

    readers = [asyncio.create_task(read_notify()), asyncio.create_task(read_stderr())]
    try:
        await eventually(
            lambda: any("READY=1" in m for m in messages), "READY=1 on NOTIFY_SOCKET", 20
        )
        await eventually(lambda: len(hits) >= 2, "the probes to reach the loopback target", 5)
        assert any("STATUS=" in m and "shop=" in m for m in messages)
        await eventually(lambda: any("WATCHDOG=1" in m for m in messages), "a WATCHDOG=1 ping", 5)
        started = events("daemon_started")
        assert started
        await eventually(lambda: bool(events("api_listening")), "the API to listen", 5)
        (listening,) = events("api_listening")
        addresses = listening["addresses"]
        assert isinstance(addresses, list)
        host, api_port = ast.literal_eval(str(addresses[0]))[:2]
        api = f"http://{host}:{api_port}"
        async with aiohttp.ClientSession() as http, http.get(f"{api}/v1/status") as status:
            version_before = (await status.json())["policy_version"]

        policy_file.write_text(policy(port).replace("rto: 15m", "rto: soon"))
        proc.send_signal(signal.SIGHUP)
        await eventually(lambda: bool(events("policy_reload_failed")), "the reload to fail", 10)
        errors = [str(e["error"]) for e in events("policy_error")]
        assert any(f"{policy_file}:3:1: rto:" in e for e in errors), errors
        assert not events("policy_reloaded")
        assert any("RELOADING=1" in m for m in messages)
        assert proc.returncode is None  # still running on the old set
        # ... and still ready, serving the old set's version.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{api}/readyz") as ready:
                assert ready.status == 200, await ready.text()
            async with http.get(f"{api}/v1/status") as status:
                assert (await status.json())["policy_version"] == version_before

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rc = await proc.wait()
        assert rc == 0, "".join(stderr[-20:])
        await eventually(lambda: any("STOPPING=1" in m for m in messages), "STOPPING=1", 2)
        assert events("daemon_stopped")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        notify.close()
        os.unlink(address)
        os.rmdir(sock_dir)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "No such file or directory"),
        ("", "is empty"),
        ("\r\n\r\n", "is empty"),
        ("alice:one\r\nbob\r\n", ":2: a token without a label"),
    ],
)
def test_an_unusable_token_file_stops_the_start_with_one_line_and_exit_2(
    tmp_path: Path, content: str | None, words: str
) -> None:
    token_file = tmp_path / "api-token"
    if content is not None:
        token_file.write_bytes(content.encode())
        token_file.chmod(0o600)  # a secret file is its owner's alone
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "shop.yaml").write_text(policy(9))
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        f"policies: [{policies}]\nstate: {{path: {tmp_path / 'state.db'}}}\n"
        f"http: {{port: 0, token_file: {token_file}}}\nlog: {{format: json}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAILOVERD_")}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # One line says why, as for every start error (the daemon's own log event).
    (line,) = [ln for ln in result.stderr.splitlines() if "daemon_not_started" in ln]
    why = json.loads(line)["why"]
    assert why.startswith(f"http.token_file {token_file}") and words in why, why
    assert not (tmp_path / "state.db").exists()  # stopped before opening anything

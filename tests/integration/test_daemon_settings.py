"""Settings that must reach the running daemon, each changed and its effect observed on a
real `failoverd run`: ``log.format`` (the renderer of every line) and
``probes.trust_ca_file`` (HTTPS probes to a service whose certificate a private CA signed)."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.certs import TestCa
from tests.fixtures.clock import eventually
from tests.fixtures.controller import policy_text
from tests.fixtures.daemon import RUN, DaemonProcess


def write_config(tmp_path: Path, target: str, extra: str = "") -> Path:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "shop.yaml").write_text(
        policy_text(interval="200ms", timeout="150ms", staleness="1m", target=target)
    )
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        f"node_id: settings-test\npolicies: [{policies}]\n"
        f"state: {{path: {tmp_path / 'state.db'}}}\nengine: {{tick: 200ms}}\n"
        f"http: {{port: 0}}\n{extra}"
    )
    return config


@pytest.mark.parametrize("fmt", ["console", "json"])
async def test_log_format_chooses_the_renderer(tmp_path: Path, fmt: str) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/{region}", f"log: {{format: {fmt}}}\n")
    async with DaemonProcess.start([*RUN, "--config", str(config)]) as daemon:
        await eventually(
            lambda: any("daemon_ready" in line for line in daemon.lines), "daemon_ready", 30
        )
    lines = [line for line in daemon.lines if line.strip()]
    assert lines
    as_json = [line.startswith("{") and _is_json(line) for line in lines]
    # stderr is a pipe: `auto` would choose JSON, so console can only come from the setting.
    assert all(as_json) if fmt == "json" else not any(as_json), daemon.tail()


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


@pytest.fixture
async def private_https(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An HTTPS service on loopback whose certificate a private CA signed: its URL
    template and the CA bundle to trust."""
    ca = TestCa.create("failoverd test private CA")
    cert, key = ca.leaf("127.0.0.1").write(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{region}", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/{{region}}", ca.write(tmp_path / "ca.pem")
    finally:
        await runner.cleanup()


async def _signals(api: str) -> list[dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"{api}/v1/services/shop") as resp:
        body = await resp.json()
    found: list[dict[str, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "last_ok" in node and "signal" in node:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(body)
    return found


async def _probes_passed(api: str, within: float) -> list[dict[str, object]]:
    """The signal views whose last probe passed, once both regions' have (deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        passed = [s for s in await _signals(api) if s["last_ok"] is True]
        if len(passed) >= 2 or loop.time() > deadline:
            return passed
        await asyncio.sleep(0.1)


async def test_trust_ca_file_lets_https_probes_verify_a_private_ca(
    tmp_path: Path, private_https: tuple[str, Path]
) -> None:
    target, ca_file = private_https
    # Without the setting the system's trust store refuses the certificate: a TLS failure.
    (tmp_path / "without").mkdir()
    config = write_config(tmp_path / "without", target)
    async with DaemonProcess.start([*RUN, "--config", str(config)]) as daemon:
        await daemon.listening()
        await eventually(
            lambda: any(e.get("reason") == "tls" for e in daemon.events("probe_failing")),
            "a TLS failure without the private CA",
            20,
        )
    # With it, the same service is verified: both regions' probes pass.
    (tmp_path / "with").mkdir()
    config = write_config(tmp_path / "with", target, f"probes: {{trust_ca_file: {ca_file}}}\n")
    async with DaemonProcess.start([*RUN, "--config", str(config)]) as daemon:
        api = await daemon.listening()
        passed = await _probes_passed(api, 20)
        assert len(passed) >= 2, daemon.tail()
        assert not [e for e in daemon.events("probe_failing") if e.get("reason") == "tls"]

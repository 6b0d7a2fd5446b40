"""The demo's polling of the daemon's service view: error answers from a daemon that is still
starting (no service view yet) are waited through, never read as a view; the deadline names
the last answer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.sandbox.runner import DemoFailed, _poll, _steady

STEADY = {
    "active_region": "us-east-1",
    "verdicts": [
        {"region": "us-east-1", "verdict": "healthy"},
        {"region": "us-west-2", "verdict": "healthy"},
    ],
    "lag": [{"region": "us-west-2", "within_rpo": True}],
}


@pytest.fixture
async def daemon() -> AsyncIterator[tuple[str, list[tuple[int, dict[str, Any]]]]]:
    """A stand-in daemon answering the scripted (status, body) pairs, then the last one."""
    answers: list[tuple[int, dict[str, Any]]] = []

    async def service(_request: web.Request) -> web.Response:
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_get("/v1/services/webapp", service)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("/v1/services/webapp")), answers


async def test_error_answers_while_the_daemon_starts_are_waited_through(
    daemon: tuple[str, list[tuple[int, dict[str, Any]]]],
) -> None:
    url, answers = daemon
    starting = {"error": "not_ready", "message": "policies are loading"}
    answers += [(503, starting), (404, {"error": "unknown_service"}), (200, STEADY)]
    async with aiohttp.ClientSession() as http:
        body = await _poll(http, url, _steady, time.monotonic() + 10)
    assert body == STEADY and answers == [(200, STEADY)]


async def test_the_deadline_names_the_last_answer(
    daemon: tuple[str, list[tuple[int, dict[str, Any]]]],
) -> None:
    url, answers = daemon
    answers.append((503, {"error": "not_ready"}))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(DemoFailed, match=r"deadline passed polling .*not_ready"):
            await _poll(http, url, _steady, time.monotonic() + 0.5)

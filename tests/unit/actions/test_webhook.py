"""webhook against a real aiohttp receiver on loopback that checks the HMAC signature."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from orchestrator.actions.base import ActionFailed, RetryableError, StepContext
from orchestrator.actions.registry import get_action
from orchestrator.actions.webhook import Webhook
from orchestrator.policy.actions import Webhook as WebhookParams
from orchestrator.signals.aws_clients import AwsClients
from tests.fixtures.binaries import free_port
from tests.fixtures.clock import START, VirtualClock

SECRET = "s3cret-signing-key-for-tests"
TOKEN = "T0KEN-in-the-path"  # webhook URLs often carry one: it must not leak
ACTION = Webhook()


@dataclass
class Receiver:
    """A webhook endpoint: records each request, answers ``status`` after ``delay``."""

    base: str = ""
    status: int = 200
    delay: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.base}/hooks/{TOKEN}?team=ops"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if 300 <= self.status < 400:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=self.status, text="ok" if self.status < 300 else "no")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{token}", state.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.base = f"http://{host}:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook-secret"
    path.write_text(SECRET + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def make_ctx(params: WebhookParams, *, within: float = 5.0, attempt: int = 1) -> StepContext:
    clock = VirtualClock()  # now() is START: the timestamps are known in advance
    return StepContext(
        service="web",
        run_id="run-9",
        step="tell-cdn",
        attempt=attempt,
        kind="failover",
        source_region="us-east-1",
        target_region="us-west-2",
        primary_region="us-east-1",
        params=params,
        aws=AwsClients(),
        clock=clock,
        deadline=clock.monotonic() + within,
    )


def verified_body(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """What a receiver does: check the signature over the raw bytes, then parse."""
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Failoverd-Signature"], expected)
    document: dict[str, Any] = json.loads(body)
    return document


def test_registered_under_its_policy_name() -> None:
    assert isinstance(get_action("webhook"), Webhook)
    assert Webhook.params_model is WebhookParams


async def test_delivers_a_signed_body_with_the_run_context(
    receiver: Receiver, secret_file: Path
) -> None:
    params = WebhookParams(
        url=receiver.url,
        secret_file=str(secret_file),
        body={"action": "purge", "service": "not-the-policy's-to-set"},
    )
    ctx = make_ctx(params)
    assert (await ACTION.check(ctx)).ready
    assert receiver.requests == []  # check never calls the receiver

    outcome = await ACTION.execute(ctx)
    await ACTION.verify(ctx)

    assert outcome.changed
    (headers, body), *_ = receiver.requests
    assert verified_body(headers, body) == {
        "action": "purge",
        "service": "web",
        "run_id": "run-9",
        "step": "tell-cdn",
        "kind": "failover",
        "source_region": "us-east-1",
        "target_region": "us-west-2",
        "sent_at": int(START),
    }
    assert headers["X-Failoverd-Timestamp"] == str(int(START))
    assert headers["X-Failoverd-Delivery"] == "run-9/tell-cdn"
    assert headers["Content-Type"] == "application/json"


async def test_a_tampered_body_does_not_verify(receiver: Receiver, secret_file: Path) -> None:
    await ACTION.execute(make_ctx(WebhookParams(url=receiver.url, secret_file=str(secret_file))))
    headers, body = receiver.requests[0]
    with pytest.raises(AssertionError):
        verified_body(headers, body.replace(b"us-west-2", b"eu-west-1"))


async def test_a_repeat_carries_the_same_delivery_id(receiver: Receiver) -> None:
    params = WebhookParams(url=receiver.url)
    await ACTION.execute(make_ctx(params))
    await ACTION.execute(make_ctx(params, attempt=2))
    ids = [headers["X-Failoverd-Delivery"] for headers, _ in receiver.requests]
    assert ids == ["run-9/tell-cdn", "run-9/tell-cdn"]


async def test_without_a_secret_file_there_is_no_signature(receiver: Receiver) -> None:
    await ACTION.execute(make_ctx(WebhookParams(url=receiver.url)))
    headers, body = receiver.requests[0]
    assert "X-Failoverd-Signature" not in headers
    assert json.loads(body)["run_id"] == "run-9"


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, RetryableError),
        (503, RetryableError),
        (429, RetryableError),
        (408, RetryableError),
        (400, ActionFailed),
        (403, ActionFailed),
        (404, ActionFailed),
        (302, ActionFailed),  # not followed: the policy should name the final URL
    ],
)
async def test_answers_are_classified(receiver: Receiver, status: int, error: type) -> None:
    receiver.status = status
    with pytest.raises(error, match=f"answered HTTP {status}") as raised:
        await ACTION.execute(make_ctx(WebhookParams(url=receiver.url)))
    assert len(receiver.requests) == 1
    assert TOKEN not in str(raised.value)
    assert receiver.base in str(raised.value)  # where it went, without path or query


async def test_a_slow_receiver_times_out_within_the_step(receiver: Receiver) -> None:
    receiver.delay = 5.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RetryableError, match="timed out"):
        await ACTION.execute(make_ctx(WebhookParams(url=receiver.url), within=0.3))
    assert loop.time() - started < 2.0


async def test_connection_refused_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/{TOKEN}"
    with pytest.raises(RetryableError, match="cannot connect") as raised:
        await ACTION.execute(make_ctx(WebhookParams(url=url)))
    assert TOKEN not in str(raised.value)


async def test_no_time_left_is_retryable_without_sending(receiver: Receiver) -> None:
    with pytest.raises(RetryableError, match="no time left"):
        await ACTION.execute(make_ctx(WebhookParams(url=receiver.url), within=0.0))
    assert receiver.requests == []


async def test_secret_and_url_token_stay_out_of_logs(receiver: Receiver, secret_file: Path) -> None:
    with capture_logs() as logs:
        await ACTION.execute(
            make_ctx(WebhookParams(url=receiver.url, secret_file=str(secret_file)))
        )
    assert [e["event"] for e in logs] == ["webhook_delivered"]
    text = repr(logs)
    assert SECRET not in text
    assert TOKEN not in text
    assert logs[0]["endpoint"] == receiver.base


@pytest.mark.parametrize("content", [None, "", "\n"])
async def test_an_unusable_secret_file_is_a_finding_and_a_failure(
    receiver: Receiver, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    ctx = make_ctx(WebhookParams(url=receiver.url, secret_file=str(path)))
    report = await ACTION.check(ctx)
    assert not report.ready
    assert report.findings[0].startswith(f"webhook secret file {path}")
    with pytest.raises(ActionFailed, match="webhook secret file"):
        await ACTION.execute(ctx)
    assert receiver.requests == []  # nothing unsigned went out instead


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "/relative/path", "http://"])
async def test_a_url_that_cannot_work_is_a_finding_and_a_failure(url: str) -> None:
    ctx = make_ctx(WebhookParams(url=url))
    report = await ACTION.check(ctx)
    assert report.findings == ("webhook URL must be an absolute http:// or https:// URL",)
    with pytest.raises(ActionFailed, match="absolute http"):
        await ACTION.execute(ctx)


def test_no_aws_permissions_needed() -> None:
    assert ACTION.iam_statements(WebhookParams(url="https://example.com/x"), ["us-east-1"]) == []

"""The status page in a real headless Chromium against a real aiohttp server on 127.0.0.1:
what the on-call engineer sees after the page's first refresh, what it shows when the API
starts failing, and a screenshot to look at when the layout is in doubt."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from orchestrator.api import bound_port, make_app, serve
from orchestrator.api.status_page import load_page
from orchestrator.engine.vocabulary import REASON_TEXT, Reason
from orchestrator.runbook.journal import StepStatus
from orchestrator.runbook.rto import AttemptProgress, StepProgress, SubstepProgress
from tests.fixtures.binaries import require_binary
from tests.unit.api.fakes import FakeControl

CHROMIUM_TIMEOUT = 60.0
# Virtual time runs the page's timers without the test waiting for them and is paused while
# fetches are in flight, so "after the first refresh" does not depend on machine speed.
FIRST_REFRESH_BUDGET_MS = 2000
# The page refreshes every 3 s: this budget covers the first load and one more refresh.
SECOND_REFRESH_BUDGET_MS = 5000


@pytest.fixture
def chromium() -> str:
    return require_binary("chromium", "/usr/bin/chromium")


async def _serve(control: FakeControl) -> AsyncIterator[str]:
    app = make_app(control, token=None, metrics_registry=CollectorRegistry())
    runner = await serve(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}/"
    finally:
        await runner.cleanup()


@pytest.fixture
async def page_url() -> AsyncIterator[str]:
    async for url in _serve(FakeControl()):
        yield url


class FailsAfterFirstRefresh(FakeControl):
    """Answers the first refresh (one /v1/status and one detail per service each ask for the
    service list), then every call fails as if the engine had wedged."""

    def services(self) -> Sequence[str]:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls > 1 + len(self.snapshots):
            raise RuntimeError("engine wedged")
        return super().services()


async def run_chromium(binary: str, tmp: Path, url: str, *args: str) -> str:
    """Run headless Chromium on ``url``; its stdout. Killed if it outlives the timeout."""
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"HOME": str(tmp), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": "UTC"},
    )
    try:
        async with asyncio.timeout(CHROMIUM_TIMEOUT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


class _Text(HTMLParser):
    """The visible text of a DOM dump, one string per text node (scripts and styles out)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def visible_text(dom: str) -> str:
    parser = _Text()
    parser.feed(dom)
    return "\n".join(parser.parts)


def card(dom: str, service: str) -> str:
    """The visible text of one service's card."""
    match = re.search(rf'<section [^>]*data-service="{service}".*?</section>', dom, re.DOTALL)
    assert match is not None, f"no card for {service}"
    return visible_text(match.group(0))


async def test_first_refresh_shows_every_service_with_its_state(
    chromium: str, page_url: str, tmp_path: Path
) -> None:
    dom = await run_chromium(
        chromium,
        tmp_path,
        page_url,
        f"--virtual-time-budget={FIRST_REFRESH_BUDGET_MS}",
        "--dump-dom",
    )
    text = visible_text(dom)
    assert "node: node-a" in text and "leader: node-a (this node)" in text
    assert "1 of 2 services need attention." in text
    assert re.search(r"updated \d\d:\d\d:\d\d", text)
    assert "Stale since" not in text and "Cannot reach" not in text
    # Not-steady services come first.
    assert re.findall(r'<section [^>]*data-service="([^"]+)"', dom) == ["webapp", "catalog"]

    webapp = card(dom, "webapp")
    assert "Failing over" in webapp
    assert "active:\nus-east-1" in webapp
    assert REASON_TEXT[Reason.ACTIVE_DOWN] in webapp
    assert re.search(r"us-east-1\n\(active\)\nDown\n", webapp)
    assert re.search(r"us-west-2\nHealthy\n", webapp)
    assert "local: failing" in webapp and "agent-ap: passing" in webapp
    assert "2 min used, 13 min left" in webapp  # RTO: 120 s of the 900 s budget
    assert "12 s — within RPO (reading 20 s old)" in webapp
    assert "failover us-east-1 → us-west-2" in webapp
    for step, status, duration in (
        ("notify-start", "SUCCEEDED", "2.5 s"),
        ("promote-db", "RUNNING", "87 s"),
    ):
        assert re.search(rf"{step}\n[a-z._]+\n{status}\n{duration}\n", webapp), step
    assert "retried after: throttled" in webapp
    assert "Recent decisions" in webapp

    catalog = card(dom, "catalog")
    assert "Steady" in catalog and "active:\nus-east-1" in catalog
    assert re.findall(r"(us-east-1|us-west-2|eu-west-1)(?:\n\(active\))?\nHealthy", catalog) == [
        "us-east-1",
        "us-west-2",
        "eu-west-1",
    ]
    assert "not running: nothing detected" in catalog
    assert "Current run" not in catalog


async def test_a_failing_api_marks_the_page_stale_and_keeps_the_last_view(
    chromium: str, tmp_path: Path
) -> None:
    async for url in _serve(FailsAfterFirstRefresh()):
        dom = await run_chromium(
            chromium,
            tmp_path,
            url,
            f"--virtual-time-budget={SECOND_REFRESH_BUDGET_MS}",
            "--dump-dom",
        )
    text = visible_text(dom)
    assert re.search(
        r"Stale since \d\d:\d\d:\d\d \(\d+ s ago\): HTTP 500: an unexpected error", text
    ), text
    assert "engine wedged" not in text  # the API's 500 does not leak internals
    # The last good view stays up (dimmed) rather than vanishing in the middle of an incident.
    assert "Failing over" in card(dom, "webapp")
    assert 'class="is-stale"' in dom


async def test_screenshot_of_the_page(chromium: str, page_url: str, tmp_path: Path) -> None:
    png = tmp_path / "status.png"
    await run_chromium(
        chromium,
        tmp_path,
        page_url,
        f"--virtual-time-budget={FIRST_REFRESH_BUDGET_MS}",
        f"--screenshot={png}",
        "--window-size=1280,900",
    )
    print(f"status page screenshot: {png}")
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 900)
    # A blank or unstyled page compresses to a few kB; the rendered cards are far larger.
    assert len(data) > 50_000, f"suspiciously small screenshot ({len(data)} bytes): {png}"


class RegionSwitchRun(FakeControl):
    """webapp's run is one arc.region_switch step whose plan waits at its approval step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        snap = self.snapshots["webapp"]
        run = snap.run
        assert run is not None
        start = run.started_at
        plan = StepProgress(
            name="region-switch",
            action="arc.region_switch",
            after=(),
            status=StepStatus.RUNNING,
            attempts=(AttemptProgress(1, start, None, 95.0),),
            started_at=start,
            finished_at=None,
            duration=95.0,
            substeps=(
                SubstepProgress(
                    "scale-standby", "EC2AutoScaling", "succeeded", start, start + 41, 41
                ),
                SubstepProgress(
                    "approve-promotion", "ManualApproval", "waiting_approval", start + 41, None, 54
                ),
            ),
            awaiting_approval=("approve-promotion",),
            note="stepPendingApproval approve-promotion",
        )
        self.snapshots["webapp"] = replace(snap, run=replace(run, steps=(plan,)))


async def test_a_region_switch_step_shows_the_plans_steps_and_the_approval_it_waits_for(
    chromium: str, tmp_path: Path
) -> None:
    async for url in _serve(RegionSwitchRun()):
        dom = await run_chromium(
            chromium,
            tmp_path,
            url,
            f"--virtual-time-budget={FIRST_REFRESH_BUDGET_MS}",
            "--dump-dom",
        )
    webapp = card(dom, "webapp")
    assert re.search(r"region-switch\narc\.region_switch\nRUNNING\n95 s\n", webapp), webapp
    assert "waiting for approval of approve-promotion" in webapp
    assert re.search(r"↳ scale-standby\nEC2AutoScaling\nSUCCEEDED\n41 s\n", webapp), webapp
    assert re.search(
        r"↳ approve-promotion\nManualApproval\nWAITING APPROVAL\n54 s\nfailoverd approve webapp",
        webapp,
    ), webapp


# A test-only copy of the page with one more script that measures, once the first refresh
# has rendered, whether anything in a card reaches past the card's right edge.
LAYOUT_PROBE = """
<script>
setTimeout(() => {
  const out = [];
  for (const card of document.querySelectorAll("section.card")) {
    const edge = card.getBoundingClientRect().right;
    for (const el of card.querySelectorAll("*")) {
      const right = el.getBoundingClientRect().right;
      if (right > edge + 0.5) out.push(card.dataset.service + ":" + el.tagName + ":" + right);
    }
  }
  const probe = document.createElement("div");
  probe.id = "layout-probe";
  probe.textContent = out.length ? "OVERFLOW " + out.slice(0, 5).join(" ") : "INSIDE";
  document.body.append(probe);
}, 1500);
</script>
"""


class LongErrors(FakeControl):
    """The webapp run's first step failed with a long unbroken AWS error, and changed
    something (its detail)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        snap = self.snapshots["webapp"]
        assert snap.run is not None
        steps = list(snap.run.steps)
        steps[0] = replace(
            steps[0],
            status=StepStatus.FAILED,
            error="PromoteReadReplica failed: InvalidDBInstanceState: arn:aws:rds:us-west-2:"
            + "123456789012:db:"
            + "webapp-db-replica-" * 12,
            detail="changed: scaled webapp-us-west-2 from 0 to 6",
        )
        self.snapshots["webapp"] = replace(snap, run=replace(snap.run, steps=tuple(steps)))


async def test_the_step_table_s_detail_column_stays_inside_its_card(
    chromium: str, tmp_path: Path
) -> None:
    app = make_app(LongErrors(), token=None, metrics_registry=CollectorRegistry())
    page = load_page().body.decode().replace("</body>", LAYOUT_PROBE + "</body>")

    async def probe(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/layout-probe", probe)
    runner = await serve(app, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{bound_port(runner)}/layout-probe"
        dom = await run_chromium(
            chromium,
            tmp_path,
            url,
            f"--virtual-time-budget={FIRST_REFRESH_BUDGET_MS}",
            "--window-size=1280,900",
            "--dump-dom",
        )
    finally:
        await runner.cleanup()
    match = re.search(r'<div id="layout-probe">([^<]*)</div>', dom)
    assert match is not None, "the probe did not run"
    assert match.group(1) == "INSIDE", match.group(1)
    webapp = card(dom, "webapp")
    assert "Step\nStatus\nDuration\nAttempts\nDetail" in webapp
    # The error in red, what the step changed in plain text.
    assert re.search(r'<div class="err">PromoteReadReplica failed: [^<]+</div>', dom)
    assert '<div class="change">changed: scaled webapp-us-west-2 from 0 to 6</div>' in dom

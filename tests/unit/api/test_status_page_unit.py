"""``GET /``: the status page is self-contained HTML, locked down by its CSP, and only
reads API routes that exist."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from orchestrator.api import make_app
from orchestrator.api.status_page import StatusPageError, build_page
from tests.unit.api.fakes import FakeControl

TOKEN = "s3cret-token-value"


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = make_app(FakeControl(), token=TOKEN, metrics_registry=CollectorRegistry())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def test_get_root_is_html_without_any_external_reference(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.charset == "utf-8"
    html = await resp.text()
    assert "<title>failoverd status</title>" in html
    # No CDN, fonts, analytics or absolute links: only relative API paths.
    assert re.findall(r"(?i)https?:|//[a-z0-9.-]+\.[a-z]", html) == []
    assert re.findall(r"(?i:<(?:link|img|iframe)\b|\bsrc=|@import)|\burl\(", html) == []
    assert TOKEN not in html


async def test_the_page_only_reads_routes_the_api_serves(client: TestClient[Any, Any]) -> None:
    html = await (await client.get("/")).text()
    paths = set(re.findall(r'getJSON\("([^"]+)"', html))
    assert paths == {"v1/status", "v1/services/"}
    assert (await client.get("/v1/status")).status == 200
    assert (await client.get("/v1/services/webapp")).status == 200
    # Read-only: the page never sends anything but GETs.
    assert re.findall(r"(?i)method\s*:", html) == []


async def test_csp_pins_the_inline_script_and_style_and_allows_only_this_origin(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.get("/")
    html = await resp.text()
    csp = dict(
        [*part.split(" ", 1), ""][:2]
        for part in resp.headers["Content-Security-Policy"].split("; ")
    )
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        block = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
        assert block is not None
        digest = base64.b64encode(hashlib.sha256(block.group(1).encode()).digest()).decode()
        assert csp[directive] == f"'sha256-{digest}'"
    assert csp["default-src"] == "'none'"
    assert csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_page_is_in_the_openapi_document_as_html(client: TestClient[Any, Any]) -> None:
    doc = await (await client.get("/v1/openapi.json")).json()
    assert "text/html" in doc["paths"]["/"]["get"]["responses"]["200"]["content"]


@pytest.mark.parametrize(
    ("html", "problem"),
    [
        ("<style>a{}</style>", "exactly one inline <script> block, found 0"),
        (
            "<style>a{}</style><script>1</script><script>2</script>",
            "exactly one inline <script> block, found 2",
        ),
        ("<script>1</script>", "exactly one inline <style> block, found 0"),
    ],
)
def test_a_page_the_csp_cannot_cover_is_refused(html: str, problem: str) -> None:
    with pytest.raises(StatusPageError, match=re.escape(problem)):
        build_page(html)

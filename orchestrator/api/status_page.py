"""The on-call status page served at ``GET /``.

One self-contained HTML file (``static/status.html``: inline CSS and JS, no CDN, no fonts)
that polls the read-only JSON API from the browser. The server side only serves the file,
with a Content-Security-Policy that pins the inline script and style by hash and allows
connections to this origin alone: the page can read the API and nothing else, and a service
name or reason text that somehow carried markup could not run a script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from aiohttp import web

PAGE_RESOURCE = "static/status.html"

_BLOCK = {
    "script": re.compile(r"<script>(.*?)</script>", re.DOTALL),
    "style": re.compile(r"<style>(.*?)</style>", re.DOTALL),
}


class StatusPageError(RuntimeError):
    """The packaged page is missing or not in the shape the CSP is built for."""


@dataclass(frozen=True)
class StatusPage:
    """The page's bytes and the headers it is served with."""

    body: bytes
    csp: str

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Security-Policy": self.csp,
            # The state changes every few seconds: a cached copy would show a stale world.
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        }


def _hash(block: str) -> str:
    digest = hashlib.sha256(block.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def build_page(html: str) -> StatusPage:
    """Wrap ``html`` (exactly one inline ``<script>`` and one ``<style>``) with its CSP.

    Raises :class:`StatusPageError` naming what is wrong when the HTML does not have that
    shape, because a second block would be silently blocked by the browser.
    """
    hashes: dict[str, str] = {}
    for tag, pattern in _BLOCK.items():
        blocks = pattern.findall(html)
        if len(blocks) != 1:
            raise StatusPageError(
                f"the status page must have exactly one inline <{tag}> block, found {len(blocks)}"
            )
        hashes[tag] = _hash(blocks[0])
    csp = "; ".join(
        (
            "default-src 'none'",
            f"script-src {hashes['script']}",
            f"style-src {hashes['style']}",
            "connect-src 'self'",
            "img-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return StatusPage(body=html.encode(), csp=csp)


@cache
def load_page() -> StatusPage:
    """The packaged page, read once per process (it is immutable package data)."""
    try:
        html = resources.files("orchestrator.api").joinpath(PAGE_RESOURCE).read_text("utf-8")
    except FileNotFoundError:
        raise StatusPageError(
            f"orchestrator/api/{PAGE_RESOURCE} is missing: the package was built without its"
            " package data"
        ) from None
    return build_page(html)


async def status_page(request: web.Request) -> web.Response:
    """``GET /``: the status page. Read-only; carries no state and no secrets."""
    page = load_page()
    return web.Response(
        body=page.body, content_type="text/html", charset="utf-8", headers=page.headers
    )


__all__ = [
    "PAGE_RESOURCE",
    "StatusPage",
    "StatusPageError",
    "build_page",
    "load_page",
    "status_page",
]

"""The HTTP API (aiohttp) over the daemon's :class:`~orchestrator.daemon.control.Control`."""

from __future__ import annotations

from orchestrator.api.app import bound_port, is_loopback, make_app, serve

__all__ = ["bound_port", "is_loopback", "make_app", "serve"]

"""Parsing of probe targets, shared by the probers (pure, cached)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from orchestrator.telemetry import redact_text


@lru_cache(maxsize=65536)
def parse_host_port(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6-address]:port`` into ``(host, port)``; ``ValueError`` otherwise."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port (e.g. db.example.com:5432), got {target!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port} in {target!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address inside [...], got {target!r}") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address as [address]:port, got {target!r}")
    if any(c.isspace() for c in host):
        raise ValueError(f"host must not contain spaces, got {target!r}")
    return host, port


def parse_resolver(address: str) -> tuple[str, int]:
    """A resolver address ``ip``, ``ip:port``, ``v6`` or ``[v6]:port`` into ``(ip, port)``."""
    text = address.strip()
    try:
        return str(ipaddress.ip_address(text)), 53
    except ValueError:
        pass
    try:
        host, port = parse_host_port(text)
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(
            f"resolver must be an IP address with an optional port (1.1.1.1, 127.0.0.1:5353,"
            f" [::1]:53), got {address!r}"
        ) from None


def redact(text: str) -> str:
    """``text`` with any URL credentials (``scheme://user:secret@``) replaced by ``***@`` and
    URL query values (``?token=...``) by ``***``: targets and error details go to logs,
    evidence and the API, secrets must not."""
    return redact_text(text)

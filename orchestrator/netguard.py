"""Addresses the daemon's outbound calls named in policies must not reach.

A webhook URL is written by a policy author, but the daemon runs with an instance (or task)
role: on EC2 and ECS the link-local metadata services (169.254.169.254, fd00:ec2::254,
169.254.170.2) hand out that role's credentials to whoever asks from the host. A webhook
aimed there, directly or through a name that resolves there (or is made to, later), would
turn a policy into a way to read them. So such addresses are refused unless the operator
allows them (``webhook.allow_link_local``), both for IP literals in the URL and for every
address a name resolves to, at connection time (what is checked is what is connected to).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

LINK_LOCAL_NETWORKS = (
    ipaddress.ip_network("169.254.0.0/16"),  # IPv4 link-local: EC2 IMDS, ECS task metadata
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::/32"),  # EC2's IPv6 IMDS, DNS and time endpoints
)
SETTING = "webhook.allow_link_local"


@dataclass
class _Rules:
    allow_link_local: bool = False


_RULES = _Rules()


def configure_webhooks(*, allow_link_local: bool) -> None:
    """Set the process's rule from the settings (the daemon does, once, at start)."""
    _RULES.allow_link_local = allow_link_local


class RefusedAddress(OSError):
    """A connection the rules refuse (raised before any packet is sent)."""


def refused(address: str) -> str | None:
    """Why connecting to the IP ``address`` is refused, or None when it is allowed (or is
    not an IP address at all)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if _RULES.allow_link_local or not any(ip in net for net in LINK_LOCAL_NETWORKS):
        return None
    return f"{ip} is a link-local or instance-metadata address; allow it with {SETTING}"


def refused_url(url: str) -> str | None:
    """Why ``url``'s host is refused when it is an IP literal (names are checked when they
    resolve, by :class:`GuardedResolver`)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return refused(host) if host else None


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver without the refused addresses; a name that resolves to
    nothing else fails with :class:`RefusedAddress`."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if refused(r["host"]) is None]
        if not kept:
            why = next((refused(r["host"]) for r in found), None) or "no address"
            raise RefusedAddress(f"{host} resolves only to refused addresses: {why}")
        return kept

    async def close(self) -> None:
        await self._inner.close()


__all__ = [
    "LINK_LOCAL_NETWORKS",
    "GuardedResolver",
    "RefusedAddress",
    "configure_webhooks",
    "refused",
    "refused_url",
]

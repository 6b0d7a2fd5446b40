"""Loopback servers and certificates for the probe tests.

Every server listens on 127.0.0.1 on a kernel-chosen port and is closed by its fixture.
Certificates are made per test session with ``cryptography`` (EC keys: fast to generate):
a private CA and leaf certificates it signs, valid, expiring soon, or already expired.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from orchestrator.signals.probes import ProbeContext
from tests.fixtures.certs import TestCa

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    not_after: dt.datetime
    der: bytes


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    valid: CertFiles  # a year left
    expiring: CertFiles  # five days left
    expired: CertFiles  # ended yesterday
    far: CertFiles  # ends in 2051: notAfter encoded as GeneralizedTime


def _leaf(folder: Path, label: str, ca: TestCa, not_after: dt.datetime) -> CertFiles:
    """A server certificate for ``localhost`` and 127.0.0.1, issued 400 days ago."""
    leaf = ca.leaf(
        "localhost",
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        not_before=NOW - dt.timedelta(days=400),
        not_after=not_after,
    )
    cert_path, key_path = leaf.write(folder / f"{label}.pem", folder / f"{label}.key")
    return CertFiles(cert_path, key_path, not_after, leaf.cert.public_bytes(Encoding.DER))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = TestCa.create(
        "failoverd test CA",
        not_before=NOW - dt.timedelta(days=500),
        not_after=NOW + dt.timedelta(days=3650),
    )
    return Pki(
        ca_file=ca.write(folder / "ca.pem"),
        valid=_leaf(folder, "valid", ca, NOW + dt.timedelta(days=365)),
        expiring=_leaf(folder, "expiring", ca, NOW + dt.timedelta(days=5)),
        expired=_leaf(folder, "expired", ca, NOW - dt.timedelta(days=1)),
        far=_leaf(folder, "far", ca, dt.datetime(2051, 6, 1, 12, 0, 0, tzinfo=dt.UTC)),
    )


def server_ssl(cert: CertFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


@pytest_asyncio.fixture
async def probe_context(pki: Pki) -> AsyncIterator[ProbeContext]:
    """A context that also trusts the test CA (for the verify-on success cases)."""
    async with ProbeContext(trust_ca_file=str(pki.ca_file)) as ctx:
        yield ctx


@pytest_asyncio.fixture
async def plain_context() -> AsyncIterator[ProbeContext]:
    """A context with the system trust store only: the test CA is untrusted."""
    async with ProbeContext() as ctx:
        yield ctx


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (in the kernel's backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


@pytest.fixture
def unreachable_port() -> Iterator[int]:
    """A port whose connects never complete: the only accept-queue slot is taken and never
    accepted, so the kernel drops further SYNs and the client waits."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        port = s.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            yield port


@pytest_asyncio.fixture
async def tls_server(pki: Pki) -> AsyncIterator[dict[str, int]]:
    """One TLS listener per certificate kind, plus a plain-TCP one; ``{kind: port}``."""
    servers: list[asyncio.Server] = []
    ports: dict[str, int] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    for kind in ("valid", "expiring", "expired", "far"):
        cert: CertFiles = getattr(pki, kind)
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ssl(cert))
        servers.append(server)
        ports[kind] = server.sockets[0].getsockname()[1]
    plain = await asyncio.start_server(handle, "127.0.0.1", 0)
    servers.append(plain)
    ports["plain"] = plain.sockets[0].getsockname()[1]
    try:
        yield ports
    finally:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()

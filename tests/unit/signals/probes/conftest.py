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
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.signals.probes import ProbeContext

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


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _leaf(
    folder: Path,
    label: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    not_after: dt.datetime,
) -> CertFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=400))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = folder / f"{label}.pem"
    key_path = folder / f"{label}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertFiles(cert_path, key_path, not_after, cert.public_bytes(serialization.Encoding.DER))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("failoverd test CA"))
        .issuer_name(_name("failoverd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=500))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return Pki(
        ca_file=ca_file,
        valid=_leaf(folder, "valid", ca_key, ca_cert, NOW + dt.timedelta(days=365)),
        expiring=_leaf(folder, "expiring", ca_key, ca_cert, NOW + dt.timedelta(days=5)),
        expired=_leaf(folder, "expired", ca_key, ca_cert, NOW - dt.timedelta(days=1)),
        far=_leaf(folder, "far", ca_key, ca_cert, dt.datetime(2051, 6, 1, 12, 0, 0, tzinfo=dt.UTC)),
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

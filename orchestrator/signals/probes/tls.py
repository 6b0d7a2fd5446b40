"""TLS handshake probes with a certificate-expiry check."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from typing import TYPE_CHECKING

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes import x509
from orchestrator.signals.probes.result import ProbeResult, clip
from orchestrator.signals.probes.targets import parse_host_port

if TYPE_CHECKING:
    from orchestrator.policy.models import TlsSignal
    from orchestrator.signals.probes.context import ProbeContext

DAY = 86400.0


class TlsProber:
    """Connect to ``host:port``, complete a TLS handshake and read the peer certificate.

    Success when the handshake completes (with verification, when ``tls_verify``) and the
    certificate has at least ``min_days_to_expiry`` days left, measured on the context's
    clock. Failure reasons: ``dns``, ``connect`` (before TLS starts), ``tls`` (handshake,
    verification, unreadable certificate, or expiring too soon), ``timeout``.
    """

    type = "tls"

    def __init__(
        self,
        context: ProbeContext,
        *,
        timeout: float,
        min_days_to_expiry: float = 14,
        tls_verify: bool = True,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if min_days_to_expiry < 0:
            raise ValueError(f"min_days_to_expiry must be >= 0, got {min_days_to_expiry}")
        self._context = context
        self.timeout = timeout
        self.min_days_to_expiry = min_days_to_expiry
        self.tls_verify = tls_verify

    @classmethod
    def from_signal(cls, context: ProbeContext, signal: TlsSignal, timeout: float) -> TlsProber:
        return cls(
            context,
            timeout=timeout,
            min_days_to_expiry=signal.min_days_to_expiry,
            tls_verify=signal.tls_verify,
        )

    def validate(self, target: str) -> None:
        parse_host_port(target)

    async def probe(self, target: str) -> ProbeResult:
        start = time.perf_counter()
        try:
            host, port = parse_host_port(target)
        except ValueError as exc:
            return ProbeResult.failure(FailureKind.CONNECT, 0.0, str(exc))
        ssl_ctx = self._context.ssl_context(self.tls_verify)
        try:
            async with asyncio.timeout(self.timeout):
                # Connect first, then start TLS: a refused port is `connect`, while anything
                # that goes wrong once TCP is up (reset, not TLS, bad certificate) is `tls`.
                try:
                    _, writer = await asyncio.open_connection(host, port)
                except socket.gaierror as exc:
                    return _fail(FailureKind.DNS, start, f"{host}: {exc.strerror or exc}")
                except OSError as exc:
                    return _fail(FailureKind.CONNECT, start, exc.strerror or str(exc))
                try:
                    await writer.start_tls(ssl_ctx, server_hostname=host)
                    latency = time.perf_counter() - start
                    ssl_object = writer.get_extra_info("ssl_object")
                    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                except ssl.SSLCertVerificationError as exc:
                    return _fail(FailureKind.TLS, start, exc.verify_message or str(exc))
                except (ssl.SSLError, OSError) as exc:
                    return _fail(FailureKind.TLS, start, str(exc) or type(exc).__name__)
                finally:
                    writer.close()
                await _closed(writer)
        except TimeoutError:
            return _fail(FailureKind.TIMEOUT, start, f"no handshake within {self.timeout:g}s")
        return self._check_expiry(der, latency)

    def _check_expiry(self, der: bytes | None, latency: float) -> ProbeResult:
        if not der:
            return ProbeResult.failure(FailureKind.TLS, latency, "no peer certificate")
        try:
            expires = x509.not_after(der)
        except ValueError as exc:
            return ProbeResult.failure(FailureKind.TLS, latency, f"unreadable certificate: {exc}")
        days_left = (expires - self._context.clock.now()) / DAY
        if days_left < self.min_days_to_expiry:
            return ProbeResult.failure(
                FailureKind.TLS,
                latency,
                f"certificate expires in {days_left:.1f} days"
                f" (minimum {self.min_days_to_expiry:g})",
            )
        return ProbeResult.success(latency, f"certificate expires in {days_left:.1f} days")


async def _closed(writer: asyncio.StreamWriter) -> None:
    """Wait for the close; a peer that resets during the TLS goodbye is no failure."""
    with contextlib.suppress(ssl.SSLError, OSError):
        await writer.wait_closed()


def _fail(reason: FailureKind, start: float, detail: str) -> ProbeResult:
    return ProbeResult.failure(reason, time.perf_counter() - start, clip(detail))

"""TLS handshake probes against real loopback TLS listeners, and the certificate reader."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes import ProbeContext, TlsProber
from orchestrator.signals.probes.x509 import not_after
from tests.unit.signals.probes.conftest import Pki

DAY = 86400.0


class ShiftedClock:
    """The real clock moved by ``offset`` seconds: certificate expiry is read against it."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("probes never sleep on the clock")


def days_left(detail: str) -> float:
    match = re.search(r"expires in (-?[\d.]+) days", detail)
    assert match, detail
    return float(match.group(1))


def prober(ctx: ProbeContext, **kwargs: object) -> TlsProber:
    kwargs.setdefault("timeout", 2.0)
    return TlsProber(ctx, **kwargs)  # type: ignore[arg-type]


async def test_valid_trusted_certificate_succeeds(
    probe_context: ProbeContext, tls_server: dict[str, int]
) -> None:
    result = await prober(probe_context).probe(f"127.0.0.1:{tls_server['valid']}")
    assert result.ok, result
    assert days_left(result.detail) == pytest.approx(365, abs=0.1)


async def test_untrusted_certificate_is_tls_when_verifying(
    plain_context: ProbeContext, tls_server: dict[str, int]
) -> None:
    result = await prober(plain_context).probe(f"127.0.0.1:{tls_server['valid']}")
    assert (result.ok, result.reason) == (False, FailureKind.TLS)
    assert "certificate" in result.detail


async def test_untrusted_certificate_passes_without_verification(
    plain_context: ProbeContext, tls_server: dict[str, int]
) -> None:
    result = await prober(plain_context, tls_verify=False).probe(f"127.0.0.1:{tls_server['valid']}")
    assert result.ok, result


async def test_certificate_expiring_too_soon_is_tls(
    probe_context: ProbeContext, tls_server: dict[str, int]
) -> None:
    target = f"127.0.0.1:{tls_server['expiring']}"
    result = await prober(probe_context, min_days_to_expiry=14).probe(target)
    assert (result.ok, result.reason) == (False, FailureKind.TLS)
    assert days_left(result.detail) == pytest.approx(5, abs=0.1)
    assert "minimum 14" in result.detail
    assert (await prober(probe_context, min_days_to_expiry=3).probe(target)).ok


async def test_expired_certificate_is_tls_with_or_without_verification(
    probe_context: ProbeContext, tls_server: dict[str, int]
) -> None:
    target = f"127.0.0.1:{tls_server['expired']}"
    verified = await prober(probe_context).probe(target)
    assert (verified.ok, verified.reason) == (False, FailureKind.TLS)
    assert "expired" in verified.detail
    unverified = await prober(probe_context, tls_verify=False, min_days_to_expiry=0).probe(target)
    assert (unverified.ok, unverified.reason) == (False, FailureKind.TLS)
    assert days_left(unverified.detail) == pytest.approx(-1, abs=0.1)


@pytest_asyncio.fixture
async def future_context(pki: Pki) -> AsyncIterator[ProbeContext]:
    async with ProbeContext(trust_ca_file=str(pki.ca_file), clock=ShiftedClock(360 * DAY)) as ctx:
        yield ctx


async def test_expiry_is_measured_on_the_injected_clock(
    future_context: ProbeContext, tls_server: dict[str, int]
) -> None:
    # 360 days from now, the one-year certificate has about five days left. Verification
    # (by OpenSSL, on the real clock) still passes; the expiry check fails.
    result = await prober(future_context, tls_verify=False, min_days_to_expiry=14).probe(
        f"127.0.0.1:{tls_server['valid']}"
    )
    assert (result.ok, result.reason) == (False, FailureKind.TLS)
    assert days_left(result.detail) == pytest.approx(5, abs=0.1)


async def test_a_server_that_does_not_speak_tls_is_tls(
    plain_context: ProbeContext, tls_server: dict[str, int]
) -> None:
    result = await prober(plain_context, tls_verify=False).probe(f"127.0.0.1:{tls_server['plain']}")
    assert (result.ok, result.reason) == (False, FailureKind.TLS)


async def test_refused_port_is_connect(plain_context: ProbeContext, refused_port: int) -> None:
    result = await prober(plain_context).probe(f"127.0.0.1:{refused_port}")
    assert (result.ok, result.reason) == (False, FailureKind.CONNECT)


async def test_unresolvable_name_is_dns(plain_context: ProbeContext) -> None:
    result = await prober(plain_context).probe("www.failoverd.invalid:443")
    assert (result.ok, result.reason) == (False, FailureKind.DNS)


async def test_handshake_that_never_answers_is_timeout(
    plain_context: ProbeContext, silent_port: int
) -> None:
    started = time.monotonic()
    result = await prober(plain_context, timeout=0.3).probe(f"127.0.0.1:{silent_port}")
    assert (result.ok, result.reason) == (False, FailureKind.TIMEOUT)
    assert time.monotonic() - started < 1.0


def test_settings_are_checked() -> None:
    ctx = ProbeContext()
    with pytest.raises(ValueError, match="timeout"):
        TlsProber(ctx, timeout=-1)
    with pytest.raises(ValueError, match="min_days_to_expiry"):
        TlsProber(ctx, timeout=1, min_days_to_expiry=-1)
    with pytest.raises(ValueError, match="host:port"):
        TlsProber(ctx, timeout=1).validate("example.com")


@pytest.mark.parametrize("kind", ["valid", "expiring", "expired", "far"])
def test_not_after_reads_utc_and_generalized_times(pki: Pki, kind: str) -> None:
    cert = getattr(pki, kind)
    assert not_after(cert.der) == cert.not_after.timestamp()


def test_not_after_refuses_garbage(pki: Pki) -> None:
    with pytest.raises(ValueError):
        not_after(b"\x30\x03\x02\x01")
    with pytest.raises(ValueError):
        not_after(pki.valid.der[:40])
    with pytest.raises(ValueError):
        not_after(b"")

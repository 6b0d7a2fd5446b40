"""DNS probes: one query of one record type, optionally to a chosen resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import dns.exception
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver

from orchestrator.engine.observation import FailureKind
from orchestrator.signals.probes.result import ProbeResult, clip
from orchestrator.signals.probes.targets import parse_resolver

if TYPE_CHECKING:
    from orchestrator.policy.models import DnsSignal
    from orchestrator.signals.probes.context import ProbeContext

RECORD_TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "NS")


def normalize_answer(record_type: str, text: str) -> str:
    """The comparable form of an answer as written in a policy or returned by a server:
    addresses canonical (``::1``), names lower-case without the trailing dot, TXT unquoted."""
    text = text.strip()
    if record_type in ("A", "AAAA"):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(
                f"expected an IP address for a {record_type} record, got {text!r}"
            ) from None
        if (record_type == "A") != (address.version == 4):
            raise ValueError(f"{text!r} is not an address for a {record_type} record")
        return str(address)
    if record_type == "TXT":
        return text
    return " ".join(part.lower().rstrip(".") for part in text.split())


def _answer_text(record_type: str, rdata: dns.rdata.Rdata) -> str:
    if record_type == "TXT":
        strings: Iterable[bytes] = getattr(rdata, "strings", ())
        return b"".join(strings).decode("utf-8", errors="replace")
    return normalize_answer(record_type, rdata.to_text())


class DnsProber:
    """Ask a resolver for a name's records of one type.

    Success when the answer holds every ``expect``-ed value (any answer when ``expect`` is
    empty). Failure reasons: ``timeout`` (no answer within ``timeout``); ``dns`` for
    everything else (NXDOMAIN, no records of that type, no resolver answered, expected
    answers missing: the detail says which).
    """

    type = "dns"

    def __init__(
        self,
        context: ProbeContext,
        *,
        timeout: float,
        record_type: str = "A",
        expect: Iterable[str] = (),
        resolver: str | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if record_type not in RECORD_TYPES:
            raise ValueError(
                f"record_type must be one of {', '.join(RECORD_TYPES)}, got {record_type!r}"
            )
        if resolver is not None:
            parse_resolver(resolver)  # refuse a bad address now, not at every probe
        self._context = context
        self.timeout = timeout
        self.record_type = record_type
        self._rdtype = dns.rdatatype.from_text(record_type)
        self.expect = frozenset(normalize_answer(record_type, e) for e in expect)
        self.resolver = resolver

    @classmethod
    def from_signal(cls, context: ProbeContext, signal: DnsSignal, timeout: float) -> DnsProber:
        return cls(
            context,
            timeout=timeout,
            record_type=signal.record_type,
            expect=signal.expect,
            resolver=signal.resolver,
        )

    def validate(self, target: str) -> None:
        if not target or any(c.isspace() for c in target):
            raise ValueError(f"expected a DNS name, got {target!r}")
        try:
            dns.name.from_text(target)
        except dns.exception.DNSException as exc:
            raise ValueError(f"not a valid DNS name: {target!r} ({exc})") from None

    async def probe(self, target: str) -> ProbeResult:
        start = time.perf_counter()
        try:
            resolver = self._context.dns_resolver(self.resolver)
            async with asyncio.timeout(self.timeout):
                answer = await resolver.resolve(
                    target, self._rdtype, search=False, lifetime=self.timeout
                )
        except (TimeoutError, dns.exception.Timeout):
            return _fail(FailureKind.TIMEOUT, start, f"no answer within {self.timeout:g}s")
        except dns.resolver.NXDOMAIN:
            return _fail(FailureKind.DNS, start, f"{target}: NXDOMAIN")
        except dns.resolver.NoAnswer:
            return _fail(FailureKind.DNS, start, f"{target}: no {self.record_type} records")
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return _fail(FailureKind.DNS, start, f"{target}: {exc}")
        latency = time.perf_counter() - start
        got = {_answer_text(self.record_type, rdata) for rdata in answer}
        missing = self.expect - got
        if missing:
            return ProbeResult.failure(
                FailureKind.DNS,
                latency,
                clip(
                    f"missing expected {self.record_type} answers: {', '.join(sorted(missing))};"
                    f" got: {', '.join(sorted(got))}",
                    200,
                ),
            )
        return ProbeResult.success(latency, ", ".join(sorted(got)))


def _fail(reason: FailureKind, start: float, detail: str) -> ProbeResult:
    return ProbeResult.failure(reason, time.perf_counter() - start, clip(detail))

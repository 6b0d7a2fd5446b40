"""The probe result record and the probers the context builds from policy signals."""

from __future__ import annotations

import ssl

import pytest
from pydantic import TypeAdapter

from orchestrator.engine.observation import FailureKind
from orchestrator.policy.models import Signal
from orchestrator.signals.probes import (
    PROBE_FAILURE_KINDS,
    DnsProber,
    HttpProber,
    ProbeContext,
    ProbeResult,
    TcpProber,
    TlsProber,
)


def test_results_keep_reason_and_outcome_consistent() -> None:
    assert ProbeResult.success(0.1) == ProbeResult(True, 0.1)
    failed = ProbeResult.failure(FailureKind.TIMEOUT, 5.0, "no answer")
    assert (failed.ok, failed.reason) == (False, "timeout")
    with pytest.raises(ValueError, match="needs a reason"):
        ProbeResult(False, 0.1)
    with pytest.raises(ValueError, match="needs a reason"):
        ProbeResult.failure(FailureKind.ALARM, 0.1, "not a probe failure")
    with pytest.raises(ValueError, match="no failure reason"):
        ProbeResult(True, 0.1, FailureKind.DNS)
    assert {str(k) for k in PROBE_FAILURE_KINDS} == {
        "dns",
        "connect",
        "tls",
        "timeout",
        "status",
        "body",
    }


def signal(**data: object) -> Signal:
    return TypeAdapter(Signal).validate_python({"name": "s", "target": "t", **data})


def test_context_builds_each_probe_type_with_the_signal_settings() -> None:
    ctx = ProbeContext()
    http = ctx.make_prober(
        signal(
            type="http",
            expect_status=[200, 204],
            body_contains="ok",
            tls_verify=False,
            headers={"X-A": "1"},
        ),
        3.0,
    )
    assert isinstance(http, HttpProber)
    assert (http.timeout, http.expect_status, http.body_contains, http.tls_verify) == (
        3.0,
        frozenset({200, 204}),
        "ok",
        False,
    )
    assert http.headers == {"X-A": "1"}
    assert isinstance(ctx.make_prober(signal(type="tcp"), 1.0), TcpProber)
    dns = ctx.make_prober(
        signal(type="dns", record_type="AAAA", expect=["::1"], resolver="127.0.0.1:5353"), 2.0
    )
    assert isinstance(dns, DnsProber)
    assert (dns.record_type, dns.expect, dns.resolver) == ("AAAA", {"::1"}, "127.0.0.1:5353")
    tls = ctx.make_prober(signal(type="tls", min_days_to_expiry=30, tls_verify=False), 4.0)
    assert isinstance(tls, TlsProber)
    assert (tls.min_days_to_expiry, tls.tls_verify, tls.timeout) == (30, False, 4.0)


def test_tls_contexts_verify_or_not_and_are_built_once() -> None:
    ctx = ProbeContext()
    verify = ctx.ssl_context(True)
    assert verify.verify_mode == ssl.CERT_REQUIRED and verify.check_hostname
    insecure = ctx.ssl_context(False)
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert ctx.ssl_context(True) is verify and ctx.ssl_context(False) is insecure

"""Synthetic probes: one module per probe type, all keeping the :class:`Prober` contract.

The daemon opens one :class:`ProbeContext` (the shared aiohttp session, TLS contexts and
DNS resolvers) and builds each signal's prober with :meth:`ProbeContext.make_prober`; the
scheduler (:mod:`orchestrator.signals.scheduler`) runs them.
"""

from __future__ import annotations

from orchestrator.signals.probes.context import ProbeContext
from orchestrator.signals.probes.dns import DnsProber
from orchestrator.signals.probes.http import HttpProber
from orchestrator.signals.probes.result import PROBE_FAILURE_KINDS, Prober, ProbeResult
from orchestrator.signals.probes.tcp import TcpProber
from orchestrator.signals.probes.tls import TlsProber

__all__ = [
    "PROBE_FAILURE_KINDS",
    "DnsProber",
    "HttpProber",
    "ProbeContext",
    "ProbeResult",
    "Prober",
    "TcpProber",
    "TlsProber",
]

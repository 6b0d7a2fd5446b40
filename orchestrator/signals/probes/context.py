"""Resources every prober of one daemon shares, with one owner that opens and closes them."""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp
import dns.asyncresolver

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.signals.probes.targets import parse_resolver

if TYPE_CHECKING:
    from orchestrator.policy.models import DnsSignal, HttpSignal, TcpSignal, TlsSignal
    from orchestrator.signals.probes.result import Prober

USER_AGENT = "failoverd-probe/0.1"


class ProbeContext:
    """One aiohttp session (and connector), the TLS contexts and the DNS resolvers.

    The owner opens it (``async with ProbeContext() as ctx``, inside the event loop the probes
    run on) and closes it after every prober using it has stopped. Probers borrow, never
    close. Connections are not reused between probes (``force_close``): a probe must see
    connect and TLS failures, which a pooled keep-alive connection would hide. (Plain
    ``http://`` probes use the lean client in :mod:`.http1` and need no session; ``https://``
    and redirects go through it.) ``open`` and ``close`` are idempotent; ``close`` only
    closes sockets, so it returns promptly.

    ``trust_ca_file`` adds a CA bundle to the system's trust store for verifying probes (a
    private CA); ``clock`` is what certificate expiry is measured against.
    """

    def __init__(self, *, trust_ca_file: str | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._trust_ca_file = trust_ca_file
        self._session: aiohttp.ClientSession | None = None
        self._ssl_verify: ssl.SSLContext | None = None
        self._ssl_insecure: ssl.SSLContext | None = None
        self._resolvers: dict[str | None, dns.asyncresolver.Resolver] = {}

    async def __aenter__(self) -> ProbeContext:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the session. Idempotent."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            force_close=True,
            # The scheduler's semaphore bounds concurrency; a second, smaller limit here
            # would queue probes invisibly and turn a slow pool into false timeouts.
            limit=0,
            limit_per_host=0,
            # Each probe resolves afresh: a target whose name stopped resolving must fail now,
            # not once a cache entry expires. IP literals skip resolution altogether.
            use_dns_cache=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Every probe is bounded by one asyncio.timeout around it; aiohttp's own timers
            # would only add a second, redundant timer per request.
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None),
            # No cookies carried from one probe to the next.
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the session and its connector. Idempotent."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ProbeContext is not open: use `async with ProbeContext()`")
        return self._session

    def ssl_context(self, verify: bool) -> ssl.SSLContext:
        """The TLS context for probes; built once (loading the trust store is slow)."""
        if verify:
            if self._ssl_verify is None:
                ctx = ssl.create_default_context()
                if self._trust_ca_file is not None:
                    ctx.load_verify_locations(cafile=self._trust_ca_file)
                self._ssl_verify = ctx
            return self._ssl_verify
        if self._ssl_insecure is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._ssl_insecure = ctx
        return self._ssl_insecure

    def dns_resolver(self, address: str | None) -> dns.asyncresolver.Resolver:
        """A stub resolver for ``address`` (``ip[:port]``), or the system's when None.

        No answer cache: each probe asks again. Raises ``ValueError`` for a malformed
        address, ``dns.resolver.NoResolverConfiguration`` when the system has none.
        """
        resolver = self._resolvers.get(address)
        if resolver is None:
            if address is None:
                resolver = dns.asyncresolver.Resolver()
            else:
                ip, port = parse_resolver(address)
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [ip]
                resolver.port = port
            self._resolvers[address] = resolver
        return resolver

    def make_prober(
        self, signal: HttpSignal | TcpSignal | DnsSignal | TlsSignal, timeout: float
    ) -> Prober:
        """The prober for one signal's expectations; ``timeout`` bounds each probe."""
        from orchestrator.signals.probes.dns import DnsProber
        from orchestrator.signals.probes.http import HttpProber
        from orchestrator.signals.probes.tcp import TcpProber
        from orchestrator.signals.probes.tls import TlsProber

        if signal.type == "http":
            return HttpProber.from_signal(self, signal, timeout)
        if signal.type == "tcp":
            return TcpProber(timeout=timeout)
        if signal.type == "dns":
            return DnsProber.from_signal(self, signal, timeout)
        return TlsProber.from_signal(self, signal, timeout)


__all__ = ["USER_AGENT", "ProbeContext"]

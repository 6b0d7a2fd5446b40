"""An authoritative DNS server for the sandbox's hosted zones, on loopback (dnspython).

Proof of a move is a DNS answer, as clients see it (DESIGN principle 5). This server answers
for every public hosted zone in the sandbox's Route 53 (moto), over UDP and TCP on one
127.0.0.1 port, the way Route 53's name servers answer:

* simple record sets as stored (every value);
* **failover** sets: the primary while it is healthy (or has no health check), else the
  secondary while it is healthy (or has none), else the primary;
* **weighted** sets: one set drawn by weight among the healthy ones with a weight above
  zero, else among healthy zero-weight ones (equal chances), else — every set unhealthy —
  among all of them (Route 53's "last resort");
* other routing policies (latency, geolocation, multivalue...): the first healthy set by
  set identifier (the sandbox has no client location), every set when none is healthy;
* alias records to a record in the same zone: that name's answer (``EvaluateTargetHealth``
  makes an alias unhealthy when its target has no healthy set); aliases to AWS resources
  outside the zone answer nothing (the sandbox runs no load balancers);
* ``CNAME`` at the name answers any type, followed inside the zone (up to 8 links);
  ``NXDOMAIN`` for names that do not exist (wildcards ``*.name`` honoured), ``NOERROR`` with
  no answer for names without that type, both with the zone's SOA; ``REFUSED`` outside the
  zones; the ``AA`` bit on; ``TC`` when a UDP answer does not fit.

Record sets are read from Route 53's API (``ListHostedZones``, ``ListResourceRecordSets``,
``ListHealthChecks``) on moto directly — the DNS data plane keeps answering while the API
behind the sandbox's fault proxy is down — at most every ``refresh`` seconds (0.5 s: Route 53
itself takes up to a minute to propagate a change). Health is evaluated when a query
arrives, by a :class:`HealthView` (the sandbox's follows ARC and the region endpoints:
:mod:`orchestrator.sandbox.route53_health`). Private zones are not served.
"""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.dns")

MAX_CNAME_CHAIN = 8
UDP_PLAIN_LIMIT = 512
DEFAULT_REFRESH = 0.5  # seconds a snapshot of the zones is reused
TCP_IDLE = 5.0  # seconds a TCP client may stay silent between queries
DEFAULT_TTL = 300


@dataclass(frozen=True)
class AliasTarget:
    dns_name: str
    evaluate_target_health: bool
    hosted_zone_id: str = ""


@dataclass(frozen=True)
class RecordSet:
    """One Route 53 record set, as ``ListResourceRecordSets`` returns it."""

    name: dns.name.Name
    type: str
    ttl: int | None = None
    values: tuple[str, ...] = ()
    set_identifier: str | None = None
    weight: int | None = None
    failover: str | None = None
    health_check_id: str | None = None
    alias: AliasTarget | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> RecordSet:
        alias = raw.get("AliasTarget")
        return cls(
            name=_name(str(raw["Name"])),
            type=str(raw["Type"]),
            ttl=int(raw["TTL"]) if raw.get("TTL") is not None else None,
            values=tuple(str(r["Value"]) for r in raw.get("ResourceRecords") or []),
            set_identifier=raw.get("SetIdentifier"),
            weight=int(raw["Weight"]) if raw.get("Weight") is not None else None,
            failover=raw.get("Failover"),
            health_check_id=raw.get("HealthCheckId"),
            alias=None
            if not alias
            else AliasTarget(
                dns_name=str(alias.get("DNSName", "")),
                evaluate_target_health=bool(alias.get("EvaluateTargetHealth")),
                hosted_zone_id=str(alias.get("HostedZoneId", "")),
            ),
        )


@dataclass(frozen=True)
class Zone:
    id: str
    name: dns.name.Name
    record_sets: tuple[RecordSet, ...]

    def names(self) -> set[dns.name.Name]:
        return {r.name for r in self.record_sets}


@dataclass(frozen=True)
class Snapshot:
    """The zones and the health checks (id -> HealthCheckConfig) at one moment."""

    zones: tuple[Zone, ...] = ()
    health_checks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def zone_for(self, qname: dns.name.Name) -> Zone | None:
        best: Zone | None = None
        for zone in self.zones:
            if qname.is_subdomain(zone.name) and (best is None or len(zone.name) > len(best.name)):
                best = zone
        return best


class ZoneSource(Protocol):
    def read(self) -> Snapshot:
        """The zones now. Blocking; raises when they cannot be read."""
        ...


class HealthView(Protocol):
    def healthy(self, health_check_id: str, checks: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether Route 53 would see this health check healthy now."""
        ...


class Route53Reader:
    """Reads every public hosted zone, its record sets and the health checks through
    Route 53's API, with a boto3 ``client_factory()`` (pointed at moto, not at the fault
    proxy). Blocking."""

    def __init__(self, client_factory: Callable[[], Any]) -> None:
        self._factory = client_factory
        self._client: Any = None  # made once: boto3 clients are costly to make, safe to share

    def read(self) -> Snapshot:
        if self._client is None:
            self._client = self._factory()
        r53 = self._client
        zones: list[Zone] = []
        for page in r53.get_paginator("list_hosted_zones").paginate():
            for raw in page["HostedZones"]:
                if (raw.get("Config") or {}).get("PrivateZone"):
                    continue
                zone_id = str(raw["Id"]).rsplit("/", 1)[-1]
                sets = [RecordSet.from_api(r) for r in _record_sets(r53, zone_id)]
                zones.append(Zone(zone_id, _name(str(raw["Name"])), tuple(sets)))
        checks: dict[str, Mapping[str, Any]] = {}
        for page in r53.get_paginator("list_health_checks").paginate():
            for raw in page["HealthChecks"]:
                checks[str(raw["Id"])] = dict(raw.get("HealthCheckConfig") or {})
        return Snapshot(tuple(zones), checks)


def _record_sets(r53: Any, zone_id: str) -> Iterable[Mapping[str, Any]]:
    for page in r53.get_paginator("list_resource_record_sets").paginate(HostedZoneId=zone_id):
        yield from page["ResourceRecordSets"]


def _name(text: str) -> dns.name.Name:
    # Route 53 writes '*' as \052 in record names; names compare case-insensitively.
    return dns.name.from_text(text.replace("\\052", "*").lower())


# --- answering -----------------------------------------------------------------------------


class Resolver:
    """Answers one query from a snapshot and a health view. Pure but for the weighted
    draw (``rng``)."""

    def __init__(
        self, snapshot: Snapshot, health: HealthView, rng: random.Random | None = None
    ) -> None:
        self.snapshot = snapshot
        self.health = health
        self.rng = rng or random.Random()

    def respond(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY
                               else dns.rcode.FORMERR)  # fmt: skip
            return response
        question = query.question[0]
        qname = question.name.canonicalize()
        zone = self.snapshot.zone_for(qname)
        if zone is None or question.rdclass != dns.rdataclass.IN:
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return response
        rcode = self._answer(response, zone, qname, question.rdtype, question.name)
        response.set_rcode(rcode)
        if not response.answer or rcode != dns.rcode.NOERROR:
            soa = self._soa(zone)
            if soa is not None:
                response.authority.append(soa)
        return response

    def _answer(
        self,
        response: dns.message.Message,
        zone: Zone,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        owner: dns.name.Name,
    ) -> dns.rcode.Rcode:
        seen: set[dns.name.Name] = set()
        for _ in range(MAX_CNAME_CHAIN):
            sets, exists = self._sets_at(zone, qname)
            if not exists:
                return dns.rcode.NXDOMAIN if not response.answer else dns.rcode.NOERROR
            cname = [s for s in sets if s.type == "CNAME"]
            wanted = [s for s in sets if s.type == dns.rdatatype.to_text(rdtype)]
            if rdtype == dns.rdatatype.ANY:
                wanted = [s for s in sets if s.type != "CNAME"] or cname
            if wanted:
                for rtype in dict.fromkeys(s.type for s in wanted):
                    rrset = self._rrset(zone, owner, [s for s in wanted if s.type == rtype])
                    if rrset is not None:
                        response.answer.append(rrset)
                return dns.rcode.NOERROR
            if not cname:
                return dns.rcode.NOERROR  # the name exists; no data of that type
            rrset = self._rrset(zone, owner, cname)
            if rrset is None:
                return dns.rcode.NOERROR
            response.answer.append(rrset)
            seen.add(qname)
            target = rrset[0].target.canonicalize()
            if not target.is_subdomain(zone.name) or target in seen:
                return dns.rcode.NOERROR  # the resolver follows it elsewhere
            qname = owner = target
        return dns.rcode.NOERROR

    def _sets_at(self, zone: Zone, qname: dns.name.Name) -> tuple[list[RecordSet], bool]:
        """The record sets at ``qname`` (a wildcard's when it has none) and whether the
        name exists at all (an empty non-terminal exists)."""
        sets = [s for s in zone.record_sets if s.name == qname]
        if sets:
            return sets, True
        names = zone.names()
        if any(n.is_subdomain(qname) for n in names):
            return [], True
        parent = qname
        while parent != zone.name and len(parent) > 1:
            parent = parent.parent()
            wildcard = dns.name.Name((b"*", *parent.labels))
            matches = [s for s in zone.record_sets if s.name == wildcard]
            if matches:
                return matches, True
            if parent in names:
                break  # the closest encloser exists without a wildcard
        return [], False

    def _rrset(
        self, zone: Zone, owner: dns.name.Name, sets: list[RecordSet], depth: int = 0
    ) -> dns.rrset.RRset | None:
        chosen = self._choose(zone, sets, depth)
        if chosen is None:
            return None
        if chosen.alias is not None:
            return self._alias(zone, owner, chosen, depth)
        rdtype = dns.rdatatype.from_text(chosen.type)
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype)
        for value in chosen.values:
            try:
                rdata = dns.rdata.from_text(
                    dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False
                )
            except dns.exception.DNSException as exc:
                log.warning("sandbox_dns_bad_value", name=str(owner), type=chosen.type,
                            value=value, error=str(exc))  # fmt: skip
                continue
            rrset.add(rdata, chosen.ttl if chosen.ttl is not None else DEFAULT_TTL)
        return rrset if len(rrset) else None

    def _alias(
        self, zone: Zone, owner: dns.name.Name, alias: RecordSet, depth: int
    ) -> dns.rrset.RRset | None:
        assert alias.alias is not None
        target = _name(alias.alias.dns_name)
        if depth >= MAX_CNAME_CHAIN or not target.is_subdomain(zone.name):
            return None  # an AWS resource outside the zone: nothing the sandbox runs
        sets = [s for s in zone.record_sets if s.name == target and s.type == alias.type]
        return self._rrset(zone, owner, sets, depth + 1) if sets else None

    def _healthy(self, zone: Zone, record: RecordSet, depth: int = 0) -> bool:
        if record.health_check_id and not self.health.healthy(
            record.health_check_id, self.snapshot.health_checks
        ):
            return False
        if record.alias is not None and record.alias.evaluate_target_health:
            target = _name(record.alias.dns_name)
            sets = [s for s in zone.record_sets if s.name == target and s.type == record.type]
            if depth >= MAX_CNAME_CHAIN or not target.is_subdomain(zone.name):
                return True
            return any(self._healthy(zone, s, depth + 1) for s in sets)
        return True

    def _choose(self, zone: Zone, sets: list[RecordSet], depth: int) -> RecordSet | None:
        if not sets:
            return None
        if len(sets) == 1 and sets[0].set_identifier is None:
            return sets[0]
        failover = {s.failover: s for s in sets if s.failover}
        if failover:
            primary, secondary = failover.get("PRIMARY"), failover.get("SECONDARY")
            if primary is not None and self._healthy(zone, primary, depth):
                return primary
            if secondary is not None and self._healthy(zone, secondary, depth):
                return secondary
            return primary or secondary
        healthy = [s for s in sets if self._healthy(zone, s, depth)]
        if any(s.weight is not None for s in sets):
            pool = [s for s in healthy if (s.weight or 0) > 0] or healthy
            if not pool:  # every set unhealthy: Route 53 considers them all healthy
                pool = [s for s in sets if (s.weight or 0) > 0] or sets
            weights = [s.weight or 0 for s in pool]
            if sum(weights) == 0:
                return self.rng.choice(pool)
            return self.rng.choices(pool, weights=weights)[0]
        ordered = sorted(healthy or sets, key=lambda s: s.set_identifier or "")
        return ordered[0]

    def _soa(self, zone: Zone) -> dns.rrset.RRset | None:
        soa = [s for s in zone.record_sets if s.name == zone.name and s.type == "SOA"]
        if soa:
            return self._rrset(zone, zone.name, soa[:1])
        text = f"ns-1.sandbox.invalid. hostmaster.{zone.name.to_text()} 1 7200 900 1209600 86400"
        rrset = dns.rrset.RRset(zone.name, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA, text), 900)
        return rrset


# --- the server ----------------------------------------------------------------------------


class _Cache:
    """The latest snapshot, re-read when older than ``refresh`` seconds; one reader at a
    time. A failed read keeps serving the last snapshot (and says so once)."""

    def __init__(self, source: ZoneSource, refresh: float) -> None:
        self.source = source
        self.refresh = refresh
        self.snapshot: Snapshot | None = None
        self.read_at = float("-inf")
        self.lock = asyncio.Lock()
        self.failing = False

    async def get(self) -> Snapshot | None:
        if time.monotonic() - self.read_at < self.refresh and self.snapshot is not None:
            return self.snapshot
        async with self.lock:
            if time.monotonic() - self.read_at >= self.refresh or self.snapshot is None:
                try:
                    self.snapshot = await asyncio.to_thread(self.source.read)
                    self.failing = False
                except Exception as exc:  # moto restarting: keep answering from what we had
                    if not self.failing:
                        log.warning("sandbox_dns_zones_unreadable", error=repr(exc))
                    self.failing = True
                self.read_at = time.monotonic()
        return self.snapshot


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        wire = await self.server.answer(data, udp=True)
        if wire is not None and self.transport is not None:
            self.transport.sendto(wire, addr)


class DnsServer:
    """The authoritative server on 127.0.0.1: UDP and TCP on the same port. ``start`` and
    ``stop`` run on the caller's loop; ``stop`` is idempotent."""

    def __init__(
        self,
        source: ZoneSource,
        health: HealthView,
        *,
        port: int = 0,
        refresh: float = DEFAULT_REFRESH,
        rng: random.Random | None = None,
    ) -> None:
        self.health = health
        self.port = port
        self.host = "127.0.0.1"
        self.rng = rng or random.Random()
        self.queries = 0
        self._cache = _Cache(source, refresh)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # a free UDP port whose TCP twin is free too
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port)
            )
            port = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, self.host, port)
            except OSError:
                transport.close()
                if self.port:
                    raise
                continue
            self._udp, self.port = transport, port
            log.info("sandbox_dns_started", address=f"{self.host}:{self.port}")
            return
        raise OSError("no loopback port free for both UDP and TCP")

    async def stop(self) -> None:
        udp, self._udp = self._udp, None
        tcp, self._tcp = self._tcp, None
        if udp is not None:
            udp.close()
        if tcp is not None:
            tcp.close()
            await tcp.wait_closed()
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def snapshot(self) -> Snapshot | None:
        return await self._cache.get()

    async def answer(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The wire answer to one query (None: not worth answering)."""
        with self._lock:
            self.queries += 1
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            return None
        except dns.exception.DNSException:
            return _formerr(wire)
        snapshot = await self._cache.get()
        if snapshot is None:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            response = Resolver(snapshot, self.health, self.rng).respond(query)
        limit = 65535
        if udp:
            limit = max(UDP_PLAIN_LIMIT, query.payload) if query.edns >= 0 else UDP_PLAIN_LIMIT
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC | dns.flags.AA
            return truncated.to_wire()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    header = await reader.readexactly(2)
                    (length,) = struct.unpack("!H", header)
                    data = await reader.readexactly(length)
                wire = await self.answer(data, udp=False)
                if wire is None:
                    break
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()


def _formerr(wire: bytes) -> bytes | None:
    if len(wire) < 12:
        return None
    (query_id,) = struct.unpack("!H", wire[:2])
    flags = dns.flags.QR | (dns.rcode.FORMERR & 0xF)
    return struct.pack("!HHHHHH", query_id, flags, 0, 0, 0, 0)

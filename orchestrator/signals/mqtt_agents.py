"""Remote probe agents, daemon side: observations arriving over MQTT.

:class:`MqttAgentSource` is a :class:`~orchestrator.signals.base.SignalSource`. It
subscribes to every agent's observations and status (see :mod:`.agent_wire`), validates
each message against the loaded policies, feeds accepted observations to the sink and
keeps a presence table for the API. An agent that dies or goes silent needs nothing
special: its cells in the health book simply go stale, and stale is *unknown*.

:class:`BrokerConfig` (how to reach the broker: URL, TLS, credentials) and
:class:`Backoff` are shared with the agent runtime (:mod:`orchestrator.agent`).

Who may speak for an agent: with agent keys (a :class:`~.agent_auth.Keyring`), only
messages signed with a key of the agent whose topic they arrive on (``unsigned``,
``bad_signature``, ``agent_mismatch`` otherwise), and no batch twice (``duplicate``,
``replayed``; :class:`~.agent_auth.ReplayGuard`). The broker's ACLs are the first guard: give
each agent its own credentials bound to its topics, e.g. for mosquitto (username = agent id)::

    pattern write failoverd/v1/observations/%u
    pattern write failoverd/v1/agents/%u/status

This source also refuses a body naming another agent than its topic, reserved ids
(``local``...) and agents no loaded policy names (``agent_mismatch``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import random
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiomqtt

from orchestrator import mqtt_calls
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.policy.models import Policy
from orchestrator.signals.agent_auth import NO_KEYS, Keyring, Replay, ReplayGuard
from orchestrator.signals.agent_wire import (
    ACCEPTED,
    DEFAULT_LIMITS,
    OBSERVATIONS_FILTER,
    STATUS_FILTER,
    Accepted,
    AgentState,
    Catalog,
    Rejected,
    Rejection,
    WireLimits,
    decode_observations,
    decode_status,
    topic_agent,
)
from orchestrator.signals.base import ObservationSink
from orchestrator.telemetry import (
    AGENT_LAST_SEEN,
    AGENT_MESSAGES,
    AGENT_OBSERVATIONS_DROPPED,
    AGENT_UP,
    MQTT_CONNECTED,
    get_logger,
)

log = get_logger("failoverd.signals.mqtt_agents")


DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerConfigError(ValueError):
    """A broker setting that cannot work; the message names the setting."""


# ---------------------------------------------------------------------------------------
# Broker settings


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """How to reach the MQTT broker. Holds the *path* of the password file, never the
    password, so that logging or printing a config cannot leak it."""

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None  # None with TLS: the system's trusted CAs
    cert_file: Path | None = None  # client certificate (mutual TLS)
    key_file: Path | None = None
    tls_insecure: bool = False  # skip the hostname check (the chain is still verified)
    username: str | None = None
    password_file: Path | None = None
    keepalive: int = 30
    timeout: float = 10.0  # bound of every broker operation: CONNACK, SUBACK, PUBACK

    def __post_init__(self) -> None:
        if not self.host:
            raise BrokerConfigError("broker: no host")
        if not 0 < self.port < 65536:
            raise BrokerConfigError(f"broker: port {self.port} is not in 1..65535")
        if not self.tls and (self.ca_file or self.cert_file or self.key_file or self.tls_insecure):
            raise BrokerConfigError(
                "TLS options (CA, client certificate, insecure) need an mqtts:// broker URL"
            )
        if self.key_file and not self.cert_file:
            raise BrokerConfigError("a TLS client key needs its client certificate too")
        if self.password_file and not self.username:
            raise BrokerConfigError("a password file needs a username")
        if self.keepalive < 5:
            raise BrokerConfigError(f"keepalive must be at least 5 seconds, got {self.keepalive}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise BrokerConfigError(f"timeout must be a positive number, got {self.timeout}")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> BrokerConfig:
        """``mqtt://host[:port]`` or ``mqtts://host[:port]`` (IPv6 as ``[::1]``), plus the
        other fields as keywords. Credentials in the URL are refused: URLs get logged."""
        host, port, tls = parse_broker_url(url)
        return cls(host=host, port=port, tls=tls, **options)

    @property
    def url(self) -> str:
        """The broker's address, safe to log."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def password(self) -> str | None:
        """The password from ``password_file`` (first line), read now so that a rotated
        file is picked up at the next connection."""
        if self.password_file is None:
            return None
        from orchestrator.settings import SettingsError, read_secret_file

        try:  # the rules of every secret file: the owner's alone, CRLF handled
            return read_secret_file(self.password_file, "password file")
        except SettingsError as exc:
            raise BrokerConfigError(str(exc)) from None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file:
                ctx.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None
                )
        except (OSError, ssl.SSLError) as exc:
            raise BrokerConfigError(f"TLS files: {exc}") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx

    def check(self) -> None:
        """Read every file the connection needs; raise :class:`BrokerConfigError` naming
        the first that cannot be used. Call at start-up, to fail fast."""
        self.password()
        self.ssl_context()

    def client(
        self,
        *,
        identifier: str | None = None,
        will: aiomqtt.Will | None = None,
        max_queued_incoming: int = 0,
    ) -> aiomqtt.Client:
        """A new (unconnected) client; every operation on it is bounded by ``timeout``."""
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password(),
            identifier=identifier,
            will=will,
            keepalive=self.keepalive,
            timeout=self.timeout,
            tls_context=self.ssl_context(),
            max_queued_incoming_messages=max_queued_incoming,
        )


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of an ``mqtt://`` or ``mqtts://`` URL; BrokerConfigError
    saying what is wrong otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BrokerConfigError(f"broker URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BrokerConfigError(f"broker URL {url!r}: the scheme must be mqtt:// or mqtts://")
    if parts.username is not None or parts.password is not None:
        raise BrokerConfigError(
            f"broker URL for {parts.hostname}: no credentials in the URL (it gets logged);"
            " use --username and --password-file"
        )
    if not parts.hostname:
        raise BrokerConfigError(f"broker URL {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerConfigError(f"broker URL {url!r}: expected no path, query or fragment")
    if port == 0:
        raise BrokerConfigError(f"broker URL {url!r}: port 0")
    host = parts.hostname
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BrokerConfigError(f"broker URL {url!r}: bad IPv6 address") from None
    return host, port or DEFAULT_PORTS[scheme], scheme == "mqtts"


# ---------------------------------------------------------------------------------------
# Backoff


@dataclass
class Backoff:
    """Exponential backoff with jitter for reconnecting: the n-th wait is uniform in
    [cap/2, cap] with cap = min(maximum, initial * 2**n), so that many clients that lost
    the same broker do not come back in lock-step. Reconnecting never gives up (a signal
    source must come back when the broker does); ``maximum`` bounds each wait."""

    initial: float = 0.5
    maximum: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum):
            raise ValueError(
                f"backoff needs 0 < initial <= maximum, got {self.initial}, {self.maximum}"
            )

    def next_delay(self) -> float:
        cap = min(self.maximum, self.initial * 2.0 ** min(self.attempt, 60))
        self.attempt += 1
        return self.rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0


# ---------------------------------------------------------------------------------------
# Rate-limited logging of junk


class _RateLimit:
    """At most one log line per key per ``interval``; counts what it held back. Keys come
    from a fixed vocabulary, so the table stays small whatever arrives."""

    def __init__(self, clock: Clock, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet; else how many were held back since the last line."""
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


# ---------------------------------------------------------------------------------------
# The source

Presence = Literal["online", "offline", "unknown"]


@dataclass(frozen=True, slots=True)
class AgentStatus:
    """What the daemon knows of one agent. ``since``: when the state last changed;
    ``last_seen``: when its last accepted message arrived (both on the daemon's clock)."""

    state: Presence
    since: float | None = None
    last_seen: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state, "since": self.since, "last_seen": self.last_seen}


class MqttAgentSource:
    """Observations from remote agents, validated against the loaded policies.

    ``run`` loops until cancelled: it connects, subscribes, handles messages one by one
    and, when the broker goes away, reconnects with :class:`Backoff`. It never raises
    anything but cancellation. A message never stops it: junk is counted in
    ``failoverd_agent_messages_total`` by outcome and logged (``agent_message_rejected``,
    at most once per reason per ``reject_log_interval``).
    """

    name = "mqtt_agents"

    def __init__(
        self,
        broker: BrokerConfig,
        policies: Iterable[Policy],
        *,
        clock: Clock = SYSTEM_CLOCK,
        limits: WireLimits = DEFAULT_LIMITS,
        backoff: Backoff | None = None,
        client_id: str | None = None,
        reject_log_interval: float = 10.0,
        max_queued_messages: int = 10_000,
        keyring: Keyring = NO_KEYS,
        replay: ReplayGuard | None = None,
    ) -> None:
        broker.check()
        self._keyring = keyring
        # The daemon passes one guard to every source it builds, so a policy reload does not
        # forget what was accepted.
        self._replay = replay if replay is not None else ReplayGuard()
        self._broker = broker
        self._clock = clock
        self._limits = limits
        self._backoff = backoff or Backoff()
        # None: the broker picks one, so that several daemon instances never kick each
        # other off (a clean session loses nothing: old observations would be stale).
        self._client_id = client_id
        self._max_queued = max_queued_messages
        self._rate = _RateLimit(clock, reject_log_interval)
        self._agents: dict[str, AgentStatus] = {}
        self._catalog = Catalog()
        self._connected = False
        self.update_policies(policies)

    # -- for the daemon and the API ---------------------------------------------------

    def update_policies(self, policies: Iterable[Policy]) -> None:
        """Swap in a new policy set (on reload). Agents no longer named by any policy are
        forgotten, with their metric series; new ones start as unknown."""
        self._catalog = Catalog.from_policies(policies)
        known = self._catalog.agents
        self._replay.forget(known)
        for agent in [a for a in self._agents if a not in known]:
            del self._agents[agent]
            for gauge in (AGENT_UP, AGENT_LAST_SEEN):
                with contextlib.suppress(KeyError):
                    gauge.remove(agent)
        for agent in known:
            if agent not in self._agents:
                self._agents[agent] = AgentStatus("unknown")
                AGENT_UP.labels(agent).set(0)

    def agent_status(self) -> dict[str, AgentStatus]:
        """Every agent the policies name: online / offline / unknown (never heard of)."""
        return dict(self._agents)

    @property
    def connected(self) -> bool:
        return self._connected

    # -- the loop ---------------------------------------------------------------------

    async def run(self, sink: ObservationSink) -> None:
        while True:
            try:
                await self._session(sink)
            except aiomqtt.MqttError as exc:
                log.warning(
                    "mqtt_disconnected",
                    source=self.name,
                    broker=self._broker.url,
                    error=str(exc),
                    was_connected=self._connected,
                )
            except BrokerConfigError as exc:
                log.error("mqtt_config_error", source=self.name, error=str(exc))
            except Exception:
                # A bug must not take the daemon's eyes out for good: log it and reconnect.
                log.exception("mqtt_source_error", source=self.name, broker=self._broker.url)
            finally:
                self._set_connected(False)
            delay = self._backoff.next_delay()
            log.info("mqtt_reconnect_scheduled", source=self.name, delay=round(delay, 3))
            await self._clock.sleep(delay)

    async def _session(self, sink: ObservationSink) -> None:
        client = self._broker.client(
            identifier=self._client_id, max_queued_incoming=self._max_queued
        )
        async with client:
            await mqtt_calls.subscribe(
                client, [(OBSERVATIONS_FILTER, 1), (STATUS_FILTER, 1)], within=self._broker.timeout
            )
            self._set_connected(True)
            self._backoff.reset()
            log.info("mqtt_connected", source=self.name, broker=self._broker.url)
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, str):
                    payload = payload.encode()
                elif not isinstance(payload, bytes | bytearray):
                    payload = b"" if payload is None else str(payload).encode()
                self.handle(message.topic.value, bytes(payload), sink)

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        MQTT_CONNECTED.set(1 if connected else 0)

    # -- one message ------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, sink: ObservationSink) -> str:
        """Take one message; return its outcome (``accepted`` or a rejection reason, or
        ``cleared`` for an emptied retained status, ``error`` for a bug). Never raises."""
        try:
            where = topic_agent(topic)
            if where is not None and where[0] == "status":
                return self._handle_status(topic, payload)
            return self._handle_observations(topic, payload, sink)
        except Exception:
            log.exception("agent_message_error", topic=topic[:128])
            return "error"

    def _handle_observations(self, topic: str, payload: bytes, sink: ObservationSink) -> str:
        now = self._clock.now()
        result = decode_observations(
            topic, payload, self._catalog, now, self._limits, self._keyring
        )
        if isinstance(result, Rejected):
            return self._reject(result, topic)
        if result.boot is not None and result.seq is not None:
            replay = self._replay.batch(result.agent, result.boot, result.seq)
            if replay is not Replay.FRESH:
                return self._replayed(replay, result.agent, result.seq, topic)
        AGENT_MESSAGES.labels(ACCEPTED).inc()
        self._seen(result.agent, now)
        for obs in result.observations:
            sink.put(obs)
        if result.dropped:
            self._dropped(result)
        return ACCEPTED

    def _handle_status(self, topic: str, payload: bytes) -> str:
        where = topic_agent(topic)
        agent = where[1] if where else ""
        if not payload:
            # An operator cleared the retained status (decommissioned agent): not junk.
            if agent in self._agents:
                self._agents[agent] = AgentStatus("unknown", self._clock.now())
                AGENT_UP.labels(agent).set(0)
            return "cleared"
        result = decode_status(topic, payload, self._limits, self._keyring)
        if isinstance(result, Rejected):
            return self._reject(result, topic)
        if agent not in self._catalog.agents:
            return self._reject(
                Rejected(
                    Rejection.AGENT_MISMATCH,
                    f"agent {agent!r} is not a vantage point of any loaded policy",
                    agent,
                ),
                topic,
            )
        if result.seq is not None:
            replay = self._replay.status(agent, result.at, result.seq)
            if replay is not Replay.FRESH:
                # A retained status delivered again on reconnect, or an old one replayed (an
                # earlier session's will published late included): it changes nothing.
                return self._replayed(replay, agent, result.seq, topic)
        AGENT_MESSAGES.labels(ACCEPTED).inc()
        now = self._clock.now()
        if result.state is AgentState.ONLINE:
            self._seen(agent, now)
        else:
            self._set_state(agent, "offline", now)
        return ACCEPTED

    def _seen(self, agent: str, now: float) -> None:
        self._set_state(agent, "online", now)
        self._agents[agent] = AgentStatus("online", self._agents[agent].since, now)
        AGENT_LAST_SEEN.labels(agent).set(now)

    def _set_state(self, agent: str, state: Presence, now: float) -> None:
        old = self._agents.get(agent, AgentStatus("unknown"))
        if old.state != state:
            self._agents[agent] = AgentStatus(state, now, old.last_seen)
            AGENT_UP.labels(agent).set(1 if state == "online" else 0)
            log.info("agent_" + state, agent=agent, previous=old.state)

    def _reject(self, rejected: Rejected, topic: str) -> str:
        reason = rejected.reason
        AGENT_MESSAGES.labels(str(reason)).inc()
        held = self._rate.allow(str(reason))
        if held is not None:
            log.warning(
                "agent_message_rejected",
                reason=str(reason),
                agent=rejected.agent,
                topic=topic[:128],
                detail=rejected.detail,
                suppressed=held,
            )
        return str(reason)

    def _replayed(self, replay: Replay, agent: str, seq: int, topic: str) -> str:
        if replay is Replay.DUPLICATE:
            # A redelivery (QoS 1, a retained status): expected now and then, not a warning.
            AGENT_MESSAGES.labels(str(Rejection.DUPLICATE)).inc()
            return str(Rejection.DUPLICATE)
        return self._reject(
            Rejected(Rejection.REPLAYED, f"seq {seq} is older than one already accepted", agent),
            topic,
        )

    def _dropped(self, accepted: Accepted) -> None:
        for item in accepted.dropped:
            AGENT_OBSERVATIONS_DROPPED.labels(str(item.reason)).inc()
        first = accepted.dropped[0]
        held = self._rate.allow("dropped:" + str(first.reason))
        if held is not None:
            log.warning(
                "agent_observations_dropped",
                agent=accepted.agent,
                dropped=len(accepted.dropped),
                accepted=len(accepted.observations),
                reason=str(first.reason),
                detail=first.detail,
                suppressed=held,
            )

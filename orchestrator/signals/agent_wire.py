"""The wire format between remote probe agents and the daemon, over MQTT.

Topics (``<agent>`` is the agent id, which is also its vantage point name):

* ``failoverd/v1/observations/<agent>`` — QoS 1, not retained — a JSON batch::

      {"v": 1, "agent": "agent-eu", "sent_at": 1700000000.5,
       "observations": [{"service": "webapp", "region": "us-east-1", "signal": "api",
                         "ok": false, "at": 1700000000.1, "latency": 0.231,
                         "target": "https://...", "detail": "status", "source": "http"}]}

* ``failoverd/v1/agents/<agent>/status`` — QoS 1, retained —
  ``{"v": 1, "agent": "agent-eu", "state": "online" | "offline", "at": ...}``; the offline
  payload is the agent's MQTT last will, so the broker announces an agent that vanished.

Those are version 1: unsigned. An agent with a key sends version 2 instead, a signed
envelope around the message (see :mod:`.agent_auth` for what is signed and why)::

      {"v": 2, "kid": "agent-eu-2025", "sig": "<64 hex: HMAC-SHA256>",
       "body": "<the message as JSON text>"}

  where the body is the version-1 message with ``"v": 2`` and two more fields, ``boot`` (16
  hex digits drawn when the agent starts) and ``seq`` (an integer that grows with every
  message of that boot): ``{"v": 2, "agent", "sent_at", "boot", "seq", "observations"}`` and
  ``{"v": 2, "agent", "state", "at", "boot", "seq"}``. The signature covers the body's exact
  bytes, so nothing needs re-encoding to be checked.

Decoding never raises: it returns the accepted observations, or a :class:`Rejected` whose
``reason`` is one of a fixed vocabulary (a safe metric label) and whose ``detail`` says
what was wrong in words (for the log; never payload content beyond field names). With a
:class:`~orchestrator.signals.agent_auth.Keyring` that holds keys, only signed messages are
accepted.

Each version is frozen: unknown keys are errors, and any change to the shape bumps ``v``.
Timestamps are Unix seconds on the sender's clock; the receiver holds them against its own
clock with a bounded skew tolerance.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.engine.observation import Observation
from orchestrator.policy.models import (
    AWS_HEALTH_VANTAGE,
    CLOUDWATCH_VANTAGE,
    LOCAL_VANTAGE,
    NAME_PATTERN,
    PROBE_TYPES,
    REGION_PATTERN,
    Policy,
)
from orchestrator.signals.agent_auth import (
    KEY_ID_PATTERN,
    NO_KEYS,
    AgentKey,
    Keyring,
    SignatureCheck,
)

WIRE_VERSION = 1  # unsigned messages
SIGNED_VERSION = 2  # the signed envelope and the body inside it
TOPIC_ROOT = "failoverd/v1"
OBSERVATIONS_FILTER = f"{TOPIC_ROOT}/observations/+"
STATUS_FILTER = f"{TOPIC_ROOT}/agents/+/status"
# Observation.source of everything that arrives over MQTT (a bounded metric label); the
# wire's own "source" field names the agent's producer and is informational only.
OBSERVATION_SOURCE = "agent"

# Names an agent may never take: they are the daemon's own vantage points.
RESERVED_AGENT_IDS = frozenset({LOCAL_VANTAGE, AWS_HEALTH_VANTAGE, CLOUDWATCH_VANTAGE})

MAX_TARGET_CHARS = 512
MAX_DETAIL_CHARS = 256
MAX_SOURCE_CHARS = 32
_AGENT_RE = re.compile(NAME_PATTERN)
_SOURCE_RE = re.compile(rf"^[a-z0-9_]{{0,{MAX_SOURCE_CHARS}}}$")


class Rejection(StrEnum):
    """Why a message (or one observation in it) was refused. A fixed vocabulary: it is the
    ``outcome`` label of ``failoverd_agent_messages_total``; codes may be added, never
    renamed."""

    MALFORMED = "malformed"  # not JSON, wrong types, unknown keys, bad topic
    WRONG_VERSION = "wrong_version"  # "v" is not WIRE_VERSION
    UNKNOWN_SERVICE = "unknown_service"  # service/region/signal unknown, or not this agent's
    STALE = "stale"  # older than the policy's staleness: it could only ever read unknown
    FUTURE = "future"  # further ahead of the receiver's clock than the skew tolerance
    AGENT_MISMATCH = "agent_mismatch"  # body's agent != topic's, reserved id, unknown agent
    TOO_LARGE = "too_large"  # payload bytes or batch size above the limits
    UNSIGNED = "unsigned"  # keys are configured and the message is not signed
    BAD_SIGNATURE = "bad_signature"  # unknown key id, or the signature does not match
    REPLAYED = "replayed"  # older than a message already accepted from that agent
    DUPLICATE = "duplicate"  # the very message already accepted (a redelivery)


ACCEPTED = "accepted"  # the other value of the outcome label


class AgentState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Bounds a receiver holds every message to (and a sender splits its batches by)."""

    max_payload_bytes: int = 512 * 1024
    max_batch: int = 1000
    max_clock_skew: float = 30.0  # how far ahead of the receiver's clock a timestamp may be
    # How long ago a batch may have been sent: an older one is a replay or was stuck in a
    # queue; either way its news is old (and the replay guard need remember no longer).
    max_message_age: float = 60.0

    def __post_init__(self) -> None:
        if self.max_payload_bytes < 1024:
            raise ValueError(
                f"max_payload_bytes must be at least 1024, got {self.max_payload_bytes}"
            )
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if not (math.isfinite(self.max_clock_skew) and self.max_clock_skew >= 0):
            raise ValueError(f"max_clock_skew must be >= 0 seconds, got {self.max_clock_skew}")
        if not (math.isfinite(self.max_message_age) and self.max_message_age > 0):
            raise ValueError(f"max_message_age must be > 0 seconds, got {self.max_message_age}")


DEFAULT_LIMITS = WireLimits()


# ---------------------------------------------------------------------------------------
# Pydantic models of the payloads (strict: no coercion of "true" into True or "1" into 1)

_AgentId = Annotated[str, Field(pattern=NAME_PATTERN)]
_Timestamp = Annotated[float, Field(gt=0)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class WireObservation(_Wire):
    service: Annotated[str, Field(pattern=NAME_PATTERN)]
    region: Annotated[str, Field(pattern=REGION_PATTERN)]
    signal: Annotated[str, Field(pattern=NAME_PATTERN)]
    ok: bool | None
    at: _Timestamp
    latency: Annotated[float, Field(ge=0)] | None = None
    target: Annotated[str, Field(max_length=MAX_TARGET_CHARS)] = ""
    detail: Annotated[str, Field(max_length=MAX_DETAIL_CHARS)] = ""
    source: Annotated[str, Field(pattern=_SOURCE_RE.pattern)] = ""


class ObservationBatch(_Wire):
    v: Literal[1]
    agent: _AgentId
    sent_at: _Timestamp
    observations: tuple[WireObservation, ...]


class AgentStatusMessage(_Wire):
    v: Literal[1]
    agent: _AgentId
    state: AgentState
    at: _Timestamp


_Boot = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
_Seq = Annotated[int, Field(ge=0, lt=2**63)]


class SignedEnvelope(_Wire):
    v: Literal[2]
    kid: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    sig: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    body: str


class SignedBatch(_Wire):
    v: Literal[2]
    agent: _AgentId
    sent_at: _Timestamp
    boot: _Boot
    seq: _Seq
    observations: tuple[WireObservation, ...]


class SignedStatus(_Wire):
    v: Literal[2]
    agent: _AgentId
    state: AgentState
    at: _Timestamp
    boot: _Boot
    seq: _Seq


# ---------------------------------------------------------------------------------------
# What the loaded policies allow


@dataclass(frozen=True, slots=True)
class _ServiceEntry:
    regions: frozenset[str]
    staleness: float
    vantages: Mapping[str, frozenset[str]]  # probe signal name -> vantage points


@dataclass(frozen=True, slots=True)
class Catalog:
    """The (service, region, signal, vantage) cells the loaded policies expect from agents.
    Built once per policy set, so that checking an observation is a few dict lookups."""

    services: Mapping[str, _ServiceEntry] = field(default_factory=dict)
    agents: frozenset[str] = frozenset()

    @classmethod
    def from_policies(cls, policies: Iterable[Policy]) -> Catalog:
        services: dict[str, _ServiceEntry] = {}
        agents: set[str] = set()
        for policy in policies:
            vantages: dict[str, frozenset[str]] = {}
            for signal in policy.signals:
                # AWS Health and CloudWatch are their own vantage points: no agent runs them.
                if signal.type not in PROBE_TYPES:
                    continue
                names = frozenset(signal.vantage or policy.vantage_points) - RESERVED_AGENT_IDS
                vantages[signal.name] = names
                agents |= names
            services[policy.service] = _ServiceEntry(
                frozenset(policy.regions), policy.detection.staleness, vantages
            )
        return cls(services, frozenset(agents))

    def staleness(self, service: str) -> float | None:
        entry = self.services.get(service)
        return entry.staleness if entry else None

    def signals_of(self, agent: str) -> list[tuple[str, str]]:
        """(service, signal) pairs that name ``agent`` among their vantage points."""
        return sorted(
            (service, signal)
            for service, entry in self.services.items()
            for signal, names in entry.vantages.items()
            if agent in names
        )

    def unknown_cell(self, agent: str, obs: WireObservation) -> str | None:
        """Why ``obs`` from ``agent`` feeds no cell of the policies; None when it does."""
        entry = self.services.get(obs.service)
        if entry is None:
            return f"unknown service {obs.service!r}"
        if obs.region not in entry.regions:
            return f"region {obs.region!r} is not a region of service {obs.service!r}"
        names = entry.vantages.get(obs.signal)
        if names is None:
            return f"service {obs.service!r} has no probe signal {obs.signal!r}"
        if agent not in names:
            return f"agent {agent!r} is not a vantage point of {obs.service}/{obs.signal}"
        return None


# ---------------------------------------------------------------------------------------
# Topics


def observations_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/observations/{agent}"


def status_topic(agent: str) -> str:
    return f"{TOPIC_ROOT}/agents/{agent}/status"


def _valid_agent_id(agent: str) -> bool:
    return bool(_AGENT_RE.match(agent))


def check_agent_id(agent: str) -> str | None:
    """Why ``agent`` cannot be an agent id, or None when it can."""
    if not _valid_agent_id(agent):
        return f"agent id {agent!r} must match {NAME_PATTERN} (lower-case letters, digits, - _)"
    if agent in RESERVED_AGENT_IDS:
        return f"agent id {agent!r} is reserved for the daemon's own vantage points"
    return None


def topic_agent(topic: str) -> tuple[Literal["observations", "status"], str] | None:
    """Which kind of message ``topic`` carries and for which agent; None for other topics."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[:3] == ["failoverd", "v1", "observations"]:
        kind: Literal["observations", "status"] = "observations"
    elif len(parts) == 5 and parts[:3] == ["failoverd", "v1", "agents"] and parts[4] == "status":
        kind = "status"
    else:
        return None
    agent = parts[3]
    return (kind, agent) if _valid_agent_id(agent) else None


# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused message, or one refused observation inside an accepted batch."""

    reason: Rejection
    detail: str
    agent: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A batch that passed: the observations to feed, and the ones dropped from it. A signed
    batch also names its key and its place (``boot``, ``seq``) for the replay guard."""

    agent: str
    observations: tuple[Observation, ...]
    dropped: tuple[Rejected, ...] = ()
    key_id: str | None = None
    boot: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A status message that passed (either version); ``seq`` and ``key_id`` are None when
    it was not signed."""

    agent: str
    state: AgentState
    at: float
    seq: int | None = None
    key_id: str | None = None


# ---------------------------------------------------------------------------------------
# Encoding


def _wire_dict(obs: Observation) -> dict[str, object]:
    return {
        "service": obs.service,
        "region": obs.region,
        "signal": obs.signal,
        "ok": obs.ok,
        "at": obs.at,
        "latency": obs.latency,
        "target": obs.target[:MAX_TARGET_CHARS],
        # Details are error texts of the probe; bounded so that a long one never gets the
        # whole batch refused.
        "detail": obs.detail[:MAX_DETAIL_CHARS],
        "source": obs.source if _SOURCE_RE.match(obs.source) else "",
    }


def _dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def encode_observations(agent: str, observations: Sequence[Observation], sent_at: float) -> bytes:
    """One batch payload. Raises ValueError for a bad agent id or a non-finite number (a bug
    in the sender, not something to put on the wire)."""
    problem = check_agent_id(agent)
    if problem:
        raise ValueError(problem)
    return _dumps(
        {
            "v": WIRE_VERSION,
            "agent": agent,
            "sent_at": sent_at,
            "observations": [_wire_dict(o) for o in observations],
        }
    )


def encode_batches(
    agent: str,
    observations: Sequence[Observation],
    sent_at: float,
    limits: WireLimits = DEFAULT_LIMITS,
) -> Iterator[tuple[bytes, Sequence[Observation]]]:
    """Payloads within ``limits`` (count and bytes), each with the observations it carries,
    so that a sender can requeue exactly what it failed to publish."""
    for start in range(0, len(observations), limits.max_batch):
        yield from _fit(agent, observations[start : start + limits.max_batch], sent_at, limits)


def _fit(
    agent: str, chunk: Sequence[Observation], sent_at: float, limits: WireLimits
) -> Iterator[tuple[bytes, Sequence[Observation]]]:
    payload = encode_observations(agent, chunk, sent_at)
    if len(payload) <= limits.max_payload_bytes or len(chunk) <= 1:
        # A single observation is bounded by the field limits far below max_payload_bytes.
        yield payload, chunk
        return
    half = len(chunk) // 2
    yield from _fit(agent, chunk[:half], sent_at, limits)
    yield from _fit(agent, chunk[half:], sent_at, limits)


def encode_status(agent: str, state: AgentState, at: float) -> bytes:
    problem = check_agent_id(agent)
    if problem:
        raise ValueError(problem)
    return _dumps({"v": WIRE_VERSION, "agent": agent, "state": str(state), "at": at})


class Sender:
    """How one agent puts its messages on the wire: version 1 without a key, the signed
    version 2 with one. Holds the agent's ``boot`` and its two counters (batches; statuses),
    so use one Sender per agent process."""

    def __init__(self, agent: str, key: AgentKey | None = None, *, boot: str | None = None):
        problem = check_agent_id(agent)
        if problem:
            raise ValueError(problem)
        if key is not None and key.agent != agent:
            raise ValueError(f"key {key.key_id!r} belongs to agent {key.agent!r}, not {agent!r}")
        self.agent = agent
        self.key = key
        self.boot = boot or secrets.token_hex(8)
        self._batch_seq = 0
        self._status_seq = 0

    @property
    def signs(self) -> bool:
        return self.key is not None

    def _seal(self, topic: str, body: dict[str, object]) -> bytes:
        key = self.key
        assert key is not None
        text = _dumps(body)
        return _dumps(
            {
                "v": SIGNED_VERSION,
                "kid": key.key_id,
                "sig": key.sign(topic, text),
                "body": text.decode(),
            }
        )

    def batches(
        self,
        observations: Sequence[Observation],
        sent_at: float,
        limits: WireLimits = DEFAULT_LIMITS,
    ) -> Iterator[tuple[bytes, Sequence[Observation]]]:
        """Payloads within ``limits``, each with the observations it carries (see
        :func:`encode_batches`); signed ones take the next ``seq`` each."""
        if self.key is None:
            yield from encode_batches(self.agent, observations, sent_at, limits)
            return
        for start in range(0, len(observations), limits.max_batch):
            yield from self._fit(observations[start : start + limits.max_batch], sent_at, limits)

    def _fit(
        self, chunk: Sequence[Observation], sent_at: float, limits: WireLimits
    ) -> Iterator[tuple[bytes, Sequence[Observation]]]:
        self._batch_seq += 1
        payload = self._seal(
            observations_topic(self.agent),
            {
                "v": SIGNED_VERSION,
                "agent": self.agent,
                "sent_at": sent_at,
                "boot": self.boot,
                "seq": self._batch_seq,
                "observations": [_wire_dict(o) for o in chunk],
            },
        )
        if len(payload) <= limits.max_payload_bytes or len(chunk) <= 1:
            yield payload, chunk
            return
        half = len(chunk) // 2  # gaps in seq are fine: only its growth is checked
        yield from self._fit(chunk[:half], sent_at, limits)
        yield from self._fit(chunk[half:], sent_at, limits)

    def status(self, state: AgentState, at: float) -> bytes:
        """A status message (each one takes the next ``seq``)."""
        if self.key is None:
            return encode_status(self.agent, state, at)
        self._status_seq += 1
        return self._seal(
            status_topic(self.agent),
            {
                "v": SIGNED_VERSION,
                "agent": self.agent,
                "state": str(state),
                "at": at,
                "boot": self.boot,
                "seq": self._status_seq,
            },
        )

    def online_and_will(self, at: float) -> tuple[bytes, bytes]:
        """The ``online`` status to publish on connect, and the ``offline`` last will to
        register with it: the will carries the same ``at`` and the next ``seq``, so that it
        supersedes this ``online`` and nothing later."""
        online = self.status(AgentState.ONLINE, at)
        return online, self.status(AgentState.OFFLINE, at)


# ---------------------------------------------------------------------------------------
# Decoding


def _load(payload: bytes, limits: WireLimits) -> dict[str, object] | Rejected:
    if len(payload) > limits.max_payload_bytes:
        return Rejected(
            Rejection.TOO_LARGE, f"{len(payload)} bytes, limit {limits.max_payload_bytes}"
        )
    return _parse(payload)


def _parse(payload: bytes | str) -> dict[str, object] | Rejected:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Rejected(Rejection.MALFORMED, f"not JSON: {type(exc).__name__}")
    except RecursionError:
        return Rejected(Rejection.MALFORMED, "not JSON: nested too deep")
    if not isinstance(data, dict):
        return Rejected(Rejection.MALFORMED, f"expected a JSON object, got {type(data).__name__}")
    version = data.get("v")
    if "v" not in data:
        return Rejected(Rejection.MALFORMED, "no schema version (v)")
    if isinstance(version, bool) or version not in (WIRE_VERSION, SIGNED_VERSION):
        return Rejected(
            Rejection.WRONG_VERSION,
            f"schema version {version!r}, expected {WIRE_VERSION} or {SIGNED_VERSION}",
        )
    return data


@dataclass(frozen=True, slots=True)
class _Opened:
    """A message out of its envelope: the body to validate, and the key that signed it."""

    data: dict[str, object]
    body: bytes
    key_id: str | None


def _open(
    topic: str, agent: str, payload: bytes, keyring: Keyring, limits: WireLimits
) -> _Opened | Rejected:
    """Parse ``payload``; for a signed one, check the signature and return its body."""
    data = _load(payload, limits)
    if isinstance(data, Rejected):
        return Rejected(data.reason, data.detail, agent)
    if data.get("v") == WIRE_VERSION:
        if keyring.enforcing:
            return Rejected(
                Rejection.UNSIGNED, "keys are configured: messages must be signed", agent
            )
        return _Opened(data, payload, None)
    try:
        envelope = SignedEnvelope.model_validate(data)
    except ValidationError as exc:
        return Rejected(Rejection.MALFORMED, "envelope: " + _validation_detail(exc), agent)
    body = envelope.body.encode("utf-8", errors="surrogatepass")
    if keyring.enforcing:
        check = keyring.check(agent, topic, envelope.kid, body, envelope.sig)
        if check is SignatureCheck.UNKNOWN_KEY:
            return Rejected(
                Rejection.BAD_SIGNATURE, f"key id {envelope.kid!r} is not configured", agent
            )
        if check is SignatureCheck.BAD_SIGNATURE:
            return Rejected(
                Rejection.BAD_SIGNATURE, f"the signature with key {envelope.kid!r} is wrong", agent
            )
        if check is SignatureCheck.OTHER_AGENT:
            return Rejected(
                Rejection.AGENT_MISMATCH,
                f"key {envelope.kid!r} belongs to another agent than {agent!r}",
                agent,
            )
    inner = _parse(body)
    if isinstance(inner, Rejected):
        return Rejected(inner.reason, "body: " + inner.detail, agent)
    if inner.get("v") != SIGNED_VERSION:
        return Rejected(Rejection.WRONG_VERSION, "body: a signed body must be version 2", agent)
    return _Opened(inner, body, envelope.kid)


def _check_sender(
    data: Mapping[str, object], topic_agent_id: str, catalog: Catalog
) -> Rejected | None:
    body_agent = data.get("agent")
    if not isinstance(body_agent, str):
        return Rejected(Rejection.MALFORMED, "agent: expected a string", topic_agent_id)
    if body_agent != topic_agent_id:
        return Rejected(
            Rejection.AGENT_MISMATCH,
            f"body says agent {body_agent[:64]!r}, topic says {topic_agent_id!r}",
            topic_agent_id,
        )
    if topic_agent_id in RESERVED_AGENT_IDS:
        return Rejected(
            Rejection.AGENT_MISMATCH,
            f"agent id {topic_agent_id!r} is reserved for the daemon",
            topic_agent_id,
        )
    if topic_agent_id not in catalog.agents:
        return Rejected(
            Rejection.AGENT_MISMATCH,
            f"agent {topic_agent_id!r} is not a vantage point of any loaded policy",
            topic_agent_id,
        )
    return None


def _validation_detail(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc}: {first['msg']}{more}"


def decode_observations(
    topic: str,
    payload: bytes,
    catalog: Catalog,
    now: float,
    limits: WireLimits = DEFAULT_LIMITS,
    keyring: Keyring = NO_KEYS,
) -> Accepted | Rejected:
    """Validate one observations message against the policies in ``catalog``, at the
    receiver's time ``now``; with keys in ``keyring``, only a batch signed by the topic's
    agent passes.

    Structural problems refuse the whole message, and so does a batch sent longer ago than
    ``max_message_age``. Problems of single observations (unknown cell, stale, future) drop
    just those: during a rolling policy change an agent may already probe a signal the
    daemon does not know yet, and that must not blind the daemon to the rest of the agent's
    view. When nothing is left, the message is refused with the first observation's reason.
    An empty batch is accepted (a liveness beat). Timestamps ahead of ``now`` within the
    skew tolerance are clamped to ``now``. Replays of signed batches are the caller's to
    check (``boot`` and ``seq`` of the result; see :class:`.agent_auth.ReplayGuard`).
    """
    where = topic_agent(topic)
    if where is None or where[0] != "observations":
        return Rejected(Rejection.MALFORMED, f"not an observations topic: {topic[:128]!r}")
    agent = where[1]
    opened = _open(topic, agent, payload, keyring, limits)
    if isinstance(opened, Rejected):
        return opened
    data = opened.data
    problem = _check_sender(data, agent, catalog)
    if problem is not None:
        return problem
    raw = data.get("observations")
    if isinstance(raw, list) and len(raw) > limits.max_batch:
        return Rejected(
            Rejection.TOO_LARGE, f"{len(raw)} observations, limit {limits.max_batch}", agent
        )
    batch: ObservationBatch | SignedBatch
    try:
        if data.get("v") == WIRE_VERSION:
            batch = ObservationBatch.model_validate_json(opened.body)
        else:
            batch = SignedBatch.model_validate_json(opened.body)
    except ValidationError as exc:
        return Rejected(Rejection.MALFORMED, _validation_detail(exc), agent)
    horizon = now + limits.max_clock_skew
    if batch.sent_at > horizon:
        return Rejected(
            Rejection.FUTURE, f"sent_at is {batch.sent_at - now:.1f}s ahead of this clock", agent
        )
    if now - batch.sent_at > limits.max_message_age:
        return Rejected(
            Rejection.STALE,
            f"sent {now - batch.sent_at:.1f}s ago, limit {limits.max_message_age:g}s",
            agent,
        )
    accepted: list[Observation] = []
    dropped: list[Rejected] = []
    for i, wire in enumerate(batch.observations):
        unknown = catalog.unknown_cell(agent, wire)
        if unknown is not None:
            dropped.append(Rejected(Rejection.UNKNOWN_SERVICE, f"[{i}] {unknown}", agent))
            continue
        if wire.at > horizon:
            ahead = wire.at - now
            dropped.append(Rejected(Rejection.FUTURE, f"[{i}] at is {ahead:.1f}s ahead", agent))
            continue
        staleness = catalog.services[wire.service].staleness
        if now - wire.at > staleness:
            age = now - wire.at
            dropped.append(
                Rejected(Rejection.STALE, f"[{i}] {age:.1f}s old, staleness {staleness:g}s", agent)
            )
            continue
        accepted.append(
            Observation(
                service=wire.service,
                region=wire.region,
                signal=wire.signal,
                vantage=agent,
                ok=wire.ok,
                at=min(wire.at, now),
                source=OBSERVATION_SOURCE,
                target=wire.target,
                latency=wire.latency,
                detail=wire.detail,
            )
        )
    if dropped and not accepted:
        first = dropped[0]
        return Rejected(first.reason, first.detail, agent)
    if isinstance(batch, SignedBatch):
        return Accepted(
            agent, tuple(accepted), tuple(dropped), opened.key_id, batch.boot, batch.seq
        )
    return Accepted(agent, tuple(accepted), tuple(dropped))


def decode_status(
    topic: str,
    payload: bytes,
    limits: WireLimits = DEFAULT_LIMITS,
    keyring: Keyring = NO_KEYS,
) -> StatusReport | Rejected:
    """Validate one status message. Its ``at`` is not held against the clock: a retained
    status, and a last will (signed when the agent connected), are old by nature; the
    caller checks that a signed one's ``(at, seq)`` grows."""
    where = topic_agent(topic)
    if where is None or where[0] != "status":
        return Rejected(Rejection.MALFORMED, f"not a status topic: {topic[:128]!r}")
    agent = where[1]
    opened = _open(topic, agent, payload, keyring, limits)
    if isinstance(opened, Rejected):
        return opened
    body_agent = opened.data.get("agent")
    if isinstance(body_agent, str) and body_agent != agent:
        return Rejected(
            Rejection.AGENT_MISMATCH,
            f"body says agent {body_agent[:64]!r}, topic says {agent!r}",
            agent,
        )
    try:
        if opened.data.get("v") == WIRE_VERSION:
            plain = AgentStatusMessage.model_validate_json(opened.body)
            return StatusReport(plain.agent, plain.state, plain.at)
        signed = SignedStatus.model_validate_json(opened.body)
    except ValidationError as exc:
        return Rejected(Rejection.MALFORMED, _validation_detail(exc), agent)
    return StatusReport(signed.agent, signed.state, signed.at, signed.seq, opened.key_id)

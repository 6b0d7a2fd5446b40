"""Who may speak for an agent: per-agent keys, HMAC-SHA256 signatures and replay checks.

An agent with a key signs every message it publishes (observation batches, its ``online``
status, its last will and its goodbye): ``sig`` is HMAC-SHA256, keyed with the agent's
secret, over ``failoverd-agent\\n<topic>\\n<key id>\\n<body>``, where ``body`` is the exact
bytes of the message carried in the envelope (see :mod:`.agent_wire`). The topic is in the
signed text, so a message cannot be moved to another agent's topic or from the status topic
to the observations topic; the key id is in the message, so keys can be rotated (the daemon
holds the old and the new key while agents switch).

The daemon's :class:`Keyring` maps each key id to the one agent it belongs to. With keys
configured, a message must be signed with a key of the agent whose topic it arrives on: an
unsigned message, an unknown key id or a wrong signature is refused, and so is a message
signed with another agent's key (one agent speaking for another). Without keys nothing is
verified (the broker's ACLs are then the only guard).

Replays. A signed batch carries the agent's ``boot`` (random, drawn when the agent process
starts) and ``seq`` (one more for every batch of that boot) and its send time; the
:class:`ReplayGuard` refuses a batch whose ``seq`` is not above the last one accepted from
that boot (an exact redelivery is a ``duplicate``, an older one ``replayed``), and
:mod:`.agent_wire` refuses a batch sent longer ago than ``max_message_age``, which bounds how
long the guard has to remember a boot. Status messages, retained and last wills, are old by
nature: their ``(at, seq)`` must only increase per agent (the will is signed at connect time
with the ``at`` of the ``online`` it follows and the next ``seq``), so an old status replayed,
or an old session's will published late, never changes what the daemon shows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MIN_SECRET_CHARS = 32  # e.g. `openssl rand -hex 32` gives 64
MAC_DOMAIN = b"failoverd-agent"
_KEY_ID_RE = re.compile(KEY_ID_PATTERN)
BOOTS_PER_AGENT = 8  # boots of one agent remembered (restarts within max_message_age)


class AgentKeyError(ValueError):
    """A key that cannot be used; the message names it (never its secret)."""


@dataclass(frozen=True, slots=True)
class AgentKey:
    """One agent's signing key. ``secret`` never appears in a repr or a log."""

    agent: str
    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID_RE.match(self.key_id):
            raise AgentKeyError(
                f"key id {self.key_id!r} must match {KEY_ID_PATTERN} (letters, digits, . _ -)"
            )
        if len(self.secret) < MIN_SECRET_CHARS:
            raise AgentKeyError(
                f"key {self.key_id!r}: the secret is shorter than {MIN_SECRET_CHARS} characters"
                " (make one with `openssl rand -hex 32`)"
            )

    @classmethod
    def from_text(cls, agent: str, key_id: str, secret: str) -> AgentKey:
        return cls(agent, key_id, secret.encode("utf-8"))

    def sign(self, topic: str, body: bytes) -> str:
        return mac(self.secret, topic, self.key_id, body)


def mac(secret: bytes, topic: str, key_id: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of a message (see the module docstring for what is signed)."""
    text = b"\n".join((MAC_DOMAIN, topic.encode(), key_id.encode(), body))
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


class SignatureCheck(StrEnum):
    """What the keyring says of one signed message."""

    VALID = "valid"
    UNKNOWN_KEY = "unknown_key"
    OTHER_AGENT = "other_agent"  # a valid key of another agent than the topic's
    BAD_SIGNATURE = "bad_signature"


class Keyring:
    """The keys the daemon accepts, by key id (each belongs to exactly one agent)."""

    def __init__(self, keys: Iterable[AgentKey] = ()) -> None:
        by_id: dict[str, AgentKey] = {}
        for key in keys:
            if key.key_id in by_id:
                raise AgentKeyError(f"key id {key.key_id!r} is configured twice")
            by_id[key.key_id] = key
        self._by_id: Mapping[str, AgentKey] = by_id

    @property
    def enforcing(self) -> bool:
        """True when keys are configured: every message must then be signed."""
        return bool(self._by_id)

    @property
    def agents(self) -> frozenset[str]:
        return frozenset(k.agent for k in self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def check(self, agent: str, topic: str, key_id: str, body: bytes, sig: str) -> SignatureCheck:
        """Whether ``sig`` is ``agent``'s signature of ``body`` on ``topic``. Constant time in
        the signature; a key of another agent is refused even when its signature is good."""
        key = self._by_id.get(key_id)
        if key is None:
            return SignatureCheck.UNKNOWN_KEY
        if not hmac.compare_digest(key.sign(topic, body), sig):
            return SignatureCheck.BAD_SIGNATURE
        if key.agent != agent:
            return SignatureCheck.OTHER_AGENT
        return SignatureCheck.VALID


NO_KEYS = Keyring()


class Replay(StrEnum):
    FRESH = "fresh"
    DUPLICATE = "duplicate"  # the same message again (QoS 1 redelivery, a retained status)
    REPLAYED = "replayed"  # an older message than one already accepted


class ReplayGuard:
    """Per agent: the last ``seq`` accepted from each recent boot, and the last status
    ``(at, seq)``. Bounded: :data:`BOOTS_PER_AGENT` boots per agent, least recently used
    forgotten first (a forgotten boot's batches are older than ``max_message_age`` by then,
    unless the agent restarted that many times within it). Survives policy reloads (the
    daemon keeps one); a daemon restart starts it empty, when the freshness window alone
    bounds replays."""

    def __init__(self, boots_per_agent: int = BOOTS_PER_AGENT) -> None:
        self._boots_per_agent = boots_per_agent
        self._batches: dict[str, OrderedDict[str, int]] = {}
        self._status: dict[str, tuple[float, int]] = {}

    def batch(self, agent: str, boot: str, seq: int) -> Replay:
        """Check a batch and, when fresh, remember it."""
        boots = self._batches.setdefault(agent, OrderedDict())
        last = boots.get(boot)
        if last is not None:
            if seq == last:
                return Replay.DUPLICATE
            if seq < last:
                return Replay.REPLAYED
        boots[boot] = seq
        boots.move_to_end(boot)
        while len(boots) > self._boots_per_agent:
            boots.popitem(last=False)
        return Replay.FRESH

    def status(self, agent: str, at: float, seq: int) -> Replay:
        last = self._status.get(agent)
        if last is not None:
            if (at, seq) == last:
                return Replay.DUPLICATE
            if (at, seq) < last:
                return Replay.REPLAYED
        self._status[agent] = (at, seq)
        return Replay.FRESH

    def forget(self, keep: Iterable[str]) -> None:
        """Drop agents no longer named by any policy."""
        kept = set(keep)
        for table in (self._batches, self._status):
            for agent in [a for a in table if a not in kept]:
                del table[agent]

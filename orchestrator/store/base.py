"""The ``Store`` contract (after Patroni's DCS abstraction): what the daemon remembers, and
the guarantees each call gives.

Fencing. Only the holder of the leader lease acts (DESIGN principle 4). ``acquire_lease``
returns a :class:`Lease` whose ``token`` is strictly greater than every token handed out
before; every write that changes what the daemon will *do* (service state, journal) carries
that token and is rejected with :class:`FencedOut` unless it is still the current lease's
token at the moment of the write (checked atomically with the write). A deposed leader's
late write therefore fails instead of landing.

Atomicity. Each call is one transaction: ``save_state`` replaces a service's whole state;
``append_journal`` adds one record (records of a run are read back in append order);
``acquire_lease``/``renew_lease`` compare-and-set the lease.

Time. Every call must finish within ``timeout`` seconds (a slow store is an unavailable
store: the leader must stop starting steps before its lease can expire). Lease expiry is
judged by the store, not by the callers' clocks, so clock skew between daemons does not
matter. Errors reaching the store raise :class:`StoreUnavailable`.

Approvals and operator commands come from any instance (the API of a follower included):
``record_approval`` is not fenced, it records a fact; the leader reads it.

Corrupt records. One record that cannot be decoded never takes out more than itself. Reads
of the journal (``read_run``, ``read_journal``) return it in its place as a record with
status ``corrupt`` (its store key in ``detail``, the decoding error in ``error``, ``at``
taken from its neighbour in append order), and go on. ``load_state`` of a corrupt service
state raises :class:`CorruptState` naming the key, and keeps raising it until a fenced
``save_state`` replaces the record (a corrupt state is not "no state": defaulting it could
move a service back to a region it left). Either way the store first *quarantines* the
record: a copy of its raw bytes, key and error kept in the store's quarantine area (listed
by ``quarantined()``; never deleted by failoverd), counted once per process in
``failoverd_store_corrupt_records_total`` and logged (``store_record_quarantined``) with
its key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from orchestrator.engine.state import ServiceState


class StoreError(Exception):
    """Base of store errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached, or did not answer in time: take no new action."""


class FencedOut(StoreError):
    """The write carried a token that is no longer the current lease's: step down."""


class CorruptRecord(StoreError):
    """A stored document cannot be decoded: the message names the document and the field."""


class CorruptState(CorruptRecord):
    """A service's stored state cannot be decoded (and has been quarantined). ``key`` is
    where it is stored; the store is reachable and everything else in it is usable."""

    def __init__(self, message: str, *, service: str, key: str) -> None:
        super().__init__(message)
        self.service = service
        self.key = key


@dataclass(frozen=True)
class QuarantinedRecord:
    """A corrupt record as the store kept it: which kind (``service_state``, ``journal``),
    its key, why it could not be read, when it was found, and its raw bytes."""

    kind: str
    key: str
    error: str
    found_at: float
    body: bytes


@dataclass(frozen=True)
class Lease:
    holder: str
    token: int  # the fencing token: strictly increasing across acquisitions
    ttl: float


@dataclass(frozen=True)
class LeaderInfo:
    """Who holds the leader lease, and what it announced with it (``announce``): the address
    of its API (where a follower sends clients) and the policy set version it acts on."""

    holder: str
    api: str = ""  # "" until the leader announces one (or when it serves no API)
    policy_version: str = ""


MAX_ANNOUNCED = 512  # characters of an announced API address or policy version


def encode_announcement(token: int, api: str, policy_version: str) -> str:
    """What ``announce`` stores next to the lease: the token it belongs to, and the values."""
    if len(api) > MAX_ANNOUNCED or len(policy_version) > MAX_ANNOUNCED:
        raise ValueError(f"announced values are at most {MAX_ANNOUNCED} characters")
    body = {"token": token, "api": api, "policy_version": policy_version}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def decode_announcement(holder: str, token: int, text: str | bytes | None) -> LeaderInfo:
    """The leader's info from what was announced; an announcement of another lease (a
    previous holder's) or an unreadable one counts as none."""
    try:
        data = json.loads(text) if text else {}
    except (ValueError, UnicodeDecodeError):
        data = {}
    if not isinstance(data, dict) or data.get("token") != token:
        return LeaderInfo(holder)
    api, version = data.get("api"), data.get("policy_version")
    return LeaderInfo(
        holder,
        api if isinstance(api, str) else "",
        version if isinstance(version, str) else "",
    )


class JournalStatus(StrEnum):
    RUN_STARTED = "run_started"  # intent: the run, its kind, source and target
    STEP_STARTED = "step_started"  # intent: an attempt is about to touch the world
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"  # an attempt failed (retryable or not: see `retryable`)
    STEP_SKIPPED = "step_skipped"  # a dependency failed with on_failure: abort
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    # A note of a step in progress (JSON in `detail`): e.g. each event of an ARC Region switch
    # execution the step follows; see orchestrator.runbook.journal for its keys.
    STEP_PROGRESS = "step_progress"
    # An operator's command (who, what, why in `detail`), journaled before it takes effect;
    # run_id is "" unless it approves a run's step.
    OPERATOR_COMMAND = "operator_command"
    # A drill that is not a run (dry-run): its result in `detail`; run_id "".
    DRILL_FINISHED = "drill_finished"
    # The leader's decision for a service changed (phase, action, target, reasons and the
    # evidence as JSON in `detail`); run_id "". Only the leader writes it (fenced), so the
    # audit log holds the decisions that were acted on, not every follower's view.
    DECISION = "decision"
    # Never written: what a read returns in place of a record that cannot be decoded (the
    # store key in `detail`, the decoding error in `error`, `at` from a neighbour).
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class JournalRecord:
    run_id: str
    service: str
    status: JournalStatus
    at: float  # wall clock (epoch seconds)
    token: int
    policy_version: str
    step: str = ""  # empty for run-level records
    attempt: int = 0
    kind: str = ""  # failover / switchover / failback (run_started)
    source_region: str = ""
    target_region: str = ""
    error: str = ""
    retryable: bool = False
    detail: str = ""  # what execute changed, or context for humans


@dataclass(frozen=True)
class ApprovalRecord:
    service: str
    run_id: str  # "" approves the service's pending decision; else a run's approval step
    step: str
    by: str
    reason: str
    at: float


def check_journal_query(since: float | None, until: float | None, limit: int) -> None:
    """The argument checks every ``read_journal`` makes (shared by the implementations)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"read_journal limit must be a positive integer, got {limit!r}")
    if since is not None and until is not None and since > until:
        raise ValueError(f"read_journal since ({since}) is after until ({until})")


def check_holder(holder: str) -> None:
    """A lease holder is a non-empty string (every implementation checks the same way)."""
    if not isinstance(holder, str) or not holder:
        raise ValueError(f"lease holder must be a non-empty string, got {holder!r}")


def check_ttl(ttl: float) -> None:
    number = isinstance(ttl, int | float) and not isinstance(ttl, bool)
    if not (number and math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"lease ttl must be a positive number of seconds, got {ttl!r}")


def check_token(token: int) -> None:
    if isinstance(token, bool) or not isinstance(token, int):
        raise ValueError(f"fencing token must be an integer, got {token!r}")


def check_recent_runs_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"recent_runs limit must be a positive integer, got {limit!r}")


def in_window(record: JournalRecord, since: float | None, until: float | None) -> bool:
    return (since is None or record.at >= since) and (until is None or record.at <= until)


class Store(Protocol):
    """See the module docstring for the contract every implementation honours."""

    timeout: float

    # -- leadership --------------------------------------------------------------------
    async def acquire_lease(self, holder: str, ttl: float) -> Lease | None:
        """Take the lease if it is free or expired (or already ours); None if another holds
        it. Every successful acquisition, even by the current holder, gets a new, larger
        token: a restarted daemon with the same name fences out its previous life. Extend a
        lease with ``renew_lease``."""
        ...

    async def renew_lease(self, lease: Lease) -> Lease | None:
        """Extend our lease; None if it was lost. An expired lease cannot be renewed (even
        if nobody took it) and fences writes, as an etcd lease would."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up at once (clean shutdown), if it is still ours."""
        ...

    async def leader(self) -> str | None:
        """Who holds an unexpired lease now."""
        ...

    async def announce(self, lease: Lease, api: str, policy_version: str) -> None:
        """Publish with our lease where our API is and the policy set version we act on,
        replacing what we announced before; it ends with the lease (a new acquisition,
        even by the same holder, starts with nothing announced). Fenced: raises
        :class:`FencedOut` unless ``lease`` is the current lease."""
        ...

    async def leader_info(self) -> LeaderInfo | None:
        """Who holds an unexpired lease now, with what it announced (empty strings before
        its first announcement); holder and announcement are read together (atomically)."""
        ...

    # -- service state -----------------------------------------------------------------
    async def load_state(self, service: str) -> ServiceState | None:
        """The service's state, None when none was saved; :class:`CorruptState` (after
        quarantining it) when the stored one cannot be decoded."""
        ...

    async def save_state(self, state: ServiceState, token: int) -> None:
        """Replace the service's state; fenced."""
        ...

    # -- journal -----------------------------------------------------------------------
    async def append_journal(self, record: JournalRecord) -> None:
        """Append one record; fenced by ``record.token``; durable when this returns."""
        ...

    async def read_run(self, run_id: str) -> Sequence[JournalRecord]:
        """A run's records in append order (empty when unknown)."""
        ...

    async def unfinished_runs(self) -> Sequence[str]:
        """Run ids with a ``run_started`` record and no ``run_succeeded``/``run_failed``."""
        ...

    async def recent_runs(self, service: str, limit: int = 20) -> Sequence[str]:
        """The service's latest run ids, newest first (operator commands, with run id "",
        are not runs)."""
        ...

    async def read_journal(
        self,
        service: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> Sequence[JournalRecord]:
        """The audit view: the newest ``limit`` records (of one service, or all) whose ``at``
        lies in ``[since, until]``, returned oldest first (append order). ``limit`` must be
        a positive integer (ValueError otherwise)."""
        ...

    # -- approvals ---------------------------------------------------------------------
    async def record_approval(self, approval: ApprovalRecord) -> None: ...

    async def quarantined(self) -> Sequence[QuarantinedRecord]:
        """Every record quarantined so far, oldest first (see "Corrupt records" above)."""
        ...

    async def approved(self, service: str, run_id: str, step: str) -> bool:
        """Whether an approval for that run's step was recorded. Approvals of a pending
        decision (run_id "") are one-shot operator commands handed to ``decide()`` by the
        daemon, not looked up here: an old one must never approve a later decision."""
        ...

    async def approval(self, service: str, run_id: str, step: str) -> ApprovalRecord | None:
        """The first approval recorded for that run's step (who and why), or None."""
        ...

    async def close(self) -> None: ...

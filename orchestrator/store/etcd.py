"""The replicated store: an etcd v3 cluster, through its JSON gateway (see ``etcd_client``).

Key layout (every key under ``prefix``; ``<x>`` is a name percent-encoded so that it never
contains ``/``, which keeps each prefix range below from matching another name's keys)::

    <p>/leader                        holder name, attached to the leader's etcd lease
    <p>/leader-info                   what the leader announced (API, policy version), same lease
    <p>/state/<service>               the service's state (codec JSON)
    <p>/journal/<service>/<id>        a journal record (codec JSON); <id> is random
    <p>/run/<run_id>/<id>             the same record again, indexed by run
    <p>/runs/<service>/<run_id>       one key per run of a service (value empty)
    <p>/open/<run_id>                 a run with run_started and no run_succeeded/run_failed
    <p>/approval/<service>/<run_id>/<step>/<id>   an approval (codec JSON)
    <p>/quarantine/<kind>/<digest>    a corrupt record's copy: kind, key, error, raw bytes

Order is etcd's revision: every record is one txn, so its keys' ``create_revision`` is its
place in the append order. ``read_run`` ranges over one run's index sorted by create
revision; ``recent_runs`` ranges over ``runs/<service>/`` newest created first (a run's key
is created by its first record and later puts keep that revision, so a late record does not
make an old run newer); ``unfinished_runs`` is the ``open/`` range; ``read_journal`` pages
through ``journal/`` (or one service's part of it) newest first, filtering on the records'
``at`` (etcd sorts a range server-side, so each page costs a scan of that prefix there). A
``run_started`` written after its run finished would reopen it (the engine never does). A
record is stored twice (by service, by run) so that each read is one range; records are small.

Leadership: ``acquire_lease`` grants an etcd lease of ``ceil(ttl)`` whole seconds and puts
the leader key on it in a txn that succeeds only if the key is absent, or, for the holder
that already has it (a restarted daemon), only if it is still at the revision just read; the
old etcd lease is then revoked. The fencing token is the leader key's ``mod_revision`` after
that put: etcd revisions only grow, so tokens strictly increase across holders, releases and
expiries. ``renew_lease`` keeps the etcd lease alive and checks that the key still carries
our revision; ``release_lease`` revokes it. The etcd lease to renew or revoke is read from
the leader key itself, so any handle of the store can renew a lease another handle got (a
restarted process with its lease still running). Expiry is judged by the etcd leader, never
by a daemon's clock: clock skew between daemons does not matter. etcd revokes an expired
lease (deleting the leader key) within about half a second after its TTL, raises TTLs below
1.5 election timeouts to that minimum, and extends every lease by about an election timeout
when its raft leader changes: a lease may outlive its TTL a little, never expire early.

Fencing: ``save_state`` and ``append_journal`` are one txn each whose compares require the
leader key to exist at ``mod_revision == token``; a lease that expired or was released has
deleted the key, a newer acquisition has moved its revision, so a deposed leader's write
fails (:class:`FencedOut`) instead of landing. ``record_approval`` is not fenced.

Operating etcd for it: give the store's user read-write on ``prefix`` (and the ability to
grant leases); turn on etcd's auto-compaction (every write adds a revision; keepalives do
not); with ``--client-cert-auth``, etcd 3.4's gateway presents the *server* certificate to
etcd's own gRPC server, so that certificate needs the ``clientAuth`` extended key usage too.

Time and failures: every call is bounded by ``timeout`` (all its requests and endpoint
rotations together). No answer in time, no quorum, no leader, connection errors: all raise
:class:`StoreUnavailable`; wrong credentials raise :class:`EtcdAuthError`. Reads are
linearizable (a member cut off from the quorum cannot answer them with stale data). Writes
are safe to repeat after an attempt whose answer was lost: ``append_journal``'s keys are fixed
for the call and its txn requires them absent, so a repeat lands nothing twice and reports the
earlier success; ``acquire_lease`` recognises its own etcd lease on the leader key;
``save_state`` writes the same bytes again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from orchestrator.engine.state import ServiceState
from orchestrator.store.base import (
    ApprovalRecord,
    CorruptRecord,
    FencedOut,
    JournalRecord,
    JournalStatus,
    LeaderInfo,
    Lease,
    QuarantinedRecord,
    StoreUnavailable,
    check_holder,
    check_journal_query,
    check_recent_runs_limit,
    check_token,
    check_ttl,
    decode_announcement,
    encode_announcement,
    in_window,
)
from orchestrator.store.codec import (
    decode_approval,
    decode_state,
    encode_approval,
    encode_journal,
    encode_state,
)
from orchestrator.store.etcd_client import (
    EtcdAuthError,
    EtcdClient,
    EtcdRequestError,
    as_int,
    b64,
    prefix_end,
    unb64,
)
from orchestrator.store.quarantine import (
    Found,
    JournalDecoder,
    Quarantine,
    Row,
    corrupt_state,
    decode_all,
)
from orchestrator.telemetry import STORE_OPERATION_DURATION, get_logger

__all__ = ["EtcdAuthError", "EtcdConfig", "EtcdStore"]

_T = TypeVar("_T")
_log = get_logger("failoverd.store")

_FINISHED = frozenset({JournalStatus.RUN_SUCCEEDED, JournalStatus.RUN_FAILED})
_PAGE = 256  # read_journal's page size


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]  # e.g. ("http://127.0.0.1:2379", ...); https:// with TLS
    prefix: str = "/failoverd"  # every key lives under it (several deployments per cluster)
    timeout: float = 2.0  # bound of every Store call
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # settings read it from a file

    def validate(self) -> None:
        """Raise ValueError naming the field that is wrong (no network access)."""
        if isinstance(self.endpoints, str) or not isinstance(self.endpoints, tuple | list):
            raise ValueError(
                f"etcd endpoints must be a list of URLs, got {type(self.endpoints).__name__}"
            )
        if not self.endpoints:
            raise ValueError("etcd endpoints: at least one URL is required")
        for endpoint in self.endpoints:
            _check_endpoint(endpoint)
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError(f"etcd endpoints: duplicate URL in {list(self.endpoints)!r}")
        schemes = {urlsplit(e).scheme for e in self.endpoints}
        if len(schemes) > 1:
            raise ValueError("etcd endpoints: mix of http:// and https:// URLs; use one scheme")
        if not isinstance(self.prefix, str) or not self.prefix.startswith("/"):
            raise ValueError(f"etcd prefix must start with '/', got {self.prefix!r}")
        if self.prefix.endswith("/") or "//" in self.prefix or not self.prefix.isprintable():
            raise ValueError(
                f"etcd prefix must be a path like '/failoverd' (no trailing or double '/',"
                f" printable), got {self.prefix!r}"
            )
        timeout = self.timeout
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(f"etcd timeout must be a positive number of seconds, got {timeout!r}")
        tls = "https" in schemes
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is None:
                continue
            if not tls:
                raise ValueError(f"etcd {name} is set but the endpoints are http://, not https://")
            if not Path(path).is_file():
                raise ValueError(f"etcd {name}: {path} is not a readable file")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("etcd key_file is set without cert_file")
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            raise ValueError(f"etcd {missing} is missing: username and password go together")
        if self.username is not None and (not isinstance(self.username, str) or not self.username):
            raise ValueError("etcd username must be a non-empty string")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not any(urlsplit(e).scheme == "https" for e in self.endpoints):
            return None
        try:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"etcd ca_file {self.ca_file}: not a usable CA bundle ({exc})"
            ) from exc
        if self.cert_file is not None:
            try:
                context.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None
                )
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"etcd cert_file {self.cert_file} / key_file {self.key_file}: not a usable"
                    f" certificate and key ({exc})"
                ) from exc
        return context


def _check_endpoint(endpoint: object) -> None:
    if not isinstance(endpoint, str):
        raise ValueError(f"etcd endpoints: {endpoint!r} is not a URL string")
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"etcd endpoints: {endpoint!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ValueError(
            f"etcd endpoints: {endpoint!r} must look like http://host:2379 or https://host:2379"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(
            f"etcd endpoints: {endpoint!r} must be scheme://host:port only (no path, query or"
            " credentials)"
        )


@dataclass(frozen=True)
class _KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _kv(doc: dict[str, Any]) -> _KV:
    return _KV(
        key=unb64(doc.get("key")),
        value=unb64(doc.get("value")),
        create_revision=as_int(doc, "create_revision"),
        mod_revision=as_int(doc, "mod_revision"),
        lease=as_int(doc, "lease"),
    )


def _name(text: str) -> str:
    return quote(text, safe="")


class EtcdStore:
    """The :class:`~orchestrator.store.base.Store` on an etcd cluster (see the module doc)."""

    backend = "etcd"

    def __init__(self, config: EtcdConfig) -> None:
        config.validate()
        self.config = config
        self.timeout = float(config.timeout)
        self._p = config.prefix
        self._leader_key = f"{self._p}/leader"
        # What the leader announced (API address, policy version), on its etcd lease: it
        # ends with the lease.
        self._info_key = f"{self._p}/leader-info"
        self._client = EtcdClient(
            config.endpoints,
            ssl_context=config.ssl_context(),
            username=config.username,
            password=config.password,
        )
        self._closed = False
        self._warned_ttl = False
        self._quarantine = Quarantine(self.backend)

    @classmethod
    async def open(cls, config: EtcdConfig) -> EtcdStore:
        """Check the configuration and make a client; the cluster need not be reachable yet
        (calls raise :class:`StoreUnavailable` until it is)."""
        store = cls(config)
        _log.info(
            "store_opened",
            backend=cls.backend,
            endpoints=list(config.endpoints),
            prefix=config.prefix,
            tls=any(e.startswith("https://") for e in config.endpoints),
            auth=config.username is not None,
        )
        return store

    async def __aenter__(self) -> EtcdStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"EtcdStore(endpoints={self.config.endpoints!r}, prefix={self._p!r})"

    # -- calls ----------------------------------------------------------------------------
    async def _op(self, operation: str, fn: Callable[[float], Awaitable[_T]]) -> _T:
        """Run ``fn(deadline)`` bounded by ``timeout``, measured and logged."""
        if self._closed:
            raise StoreUnavailable("etcd store is closed")
        started = time.perf_counter()
        outcome = "error"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    result = await fn(deadline)
            except TimeoutError:
                outcome = "timeout"
                _log.warning("store_timeout", backend=self.backend, operation=operation)
                raise StoreUnavailable(
                    f"etcd store: {operation} took longer than {self.timeout}s"
                    f" (last error: {self._client.last_error or 'none'})"
                ) from None
            outcome = "ok"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except FencedOut:
            outcome = "fenced"
            raise
        except StoreUnavailable as exc:
            if outcome != "timeout":
                outcome = "unavailable"
                _log.warning(
                    "store_unavailable", backend=self.backend, operation=operation, error=str(exc)
                )
            raise
        finally:
            STORE_OPERATION_DURATION.labels(self.backend, operation, outcome).observe(
                time.perf_counter() - started
            )

    async def _rpc(self, path: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        return await self._client.request(path, body, deadline)

    async def _range(
        self, key: str, deadline: float, **options: Any
    ) -> tuple[list[_KV], dict[str, Any]]:
        body: dict[str, Any] = {"key": b64(key), **options}
        answer = await self._rpc("/v3/kv/range", body, deadline)
        return [_kv(kv) for kv in answer.get("kvs", [])], answer

    async def _get(self, key: str, deadline: float) -> _KV | None:
        kvs, _ = await self._range(key, deadline)
        return kvs[0] if kvs else None

    def _prefix_options(self, prefix: str) -> dict[str, Any]:
        return {"range_end": b64(prefix_end(prefix.encode()))}

    async def _txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]],
        deadline: float,
    ) -> tuple[bool, int, list[dict[str, Any]]]:
        answer = await self._rpc(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure}, deadline
        )
        header = answer.get("header", {})
        revision = as_int(header, "revision") if isinstance(header, dict) else 0
        return bool(answer.get("succeeded", False)), revision, list(answer.get("responses", []))

    @staticmethod
    def _put(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
        put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        return {"request_put": put}

    @staticmethod
    def _read(key: str) -> dict[str, Any]:
        return {"request_range": {"key": b64(key)}}

    def _fence(self, token: int) -> list[dict[str, Any]]:
        # VERSION > 0: a missing key compares as mod_revision 0, which token 0 would match.
        k = b64(self._leader_key)
        return [
            {"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": str(token)},
            {"key": k, "target": "VERSION", "result": "GREATER", "version": "0"},
        ]

    @staticmethod
    def _range_kvs(response: dict[str, Any]) -> list[_KV]:
        inner = response.get("response_range", {})
        return [_kv(kv) for kv in inner.get("kvs", [])] if isinstance(inner, dict) else []

    def _fenced(self, operation: str, token: int, leader: list[_KV]) -> FencedOut:
        if not leader:
            why = "no lease is held (it expired or was released)"
            current = 0
        else:
            current = leader[0].mod_revision
            why = f"the current lease's token is {current}"
        _log.warning(
            "store_fenced_out",
            backend=self.backend,
            operation=operation,
            token=token,
            current_token=current,
        )
        return FencedOut(f"{operation} with fencing token {token} refused: {why}")

    async def _revoke(self, lease_id: int, deadline: float) -> None:
        try:
            await self._rpc("/v3/lease/revoke", {"ID": str(lease_id)}, deadline)
        except EtcdRequestError as exc:
            if not exc.not_found:  # already expired or revoked: that is what we wanted
                raise

    # -- leadership -----------------------------------------------------------------------
    async def acquire_lease(self, holder: str, ttl: float) -> Lease | None:
        check_holder(holder)
        check_ttl(ttl)

        async def acquire(deadline: float) -> Lease | None:
            grant = await self._rpc(
                "/v3/lease/grant", {"TTL": str(max(1, math.ceil(ttl)))}, deadline
            )
            lease_id = as_int(grant, "ID")
            if lease_id == 0:
                raise StoreUnavailable("etcd lease grant answered without a lease ID")
            granted = as_int(grant, "TTL")
            if granted > math.ceil(ttl) and not self._warned_ttl:
                # etcd raises TTLs below 1.5 election timeouts: takeovers get slower than
                # configured (fencing is unaffected: expiry stays etcd's).
                self._warned_ttl = True
                _log.warning("etcd_lease_ttl_raised", requested=ttl, granted=granted)
            # On a timeout or cancel the new lease is left to expire on its own (ttl).
            lease = await self._put_leader(holder, ttl, lease_id, deadline)
            if lease is None:
                await self._revoke(lease_id, deadline)
            return lease

        return await self._op("acquire_lease", acquire)

    async def _put_leader(
        self, holder: str, ttl: float, lease_id: int, deadline: float
    ) -> Lease | None:
        """Put the leader key on ``lease_id`` if it is free or ours; None if another holds it.
        A few tries, because the key can change between our read and our compare."""
        value = holder.encode()
        key = b64(self._leader_key)
        absent = {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        compare: dict[str, Any] = absent
        replaced = 0  # the etcd lease of the key we take over from ourselves
        for _ in range(3):
            ok, revision, responses = await self._txn(
                [compare],
                [self._put(self._leader_key, value, lease_id)],
                [self._read(self._leader_key)],
                deadline,
            )
            if ok:
                if compare is not absent and replaced and replaced != lease_id:
                    # The previous incarnation's lease now holds no key: end it.
                    await self._revoke(replaced, deadline)
                return Lease(holder=holder, token=revision, ttl=ttl)
            current = self._range_kvs(responses[0]) if responses else []
            if current and current[0].lease == lease_id:  # an earlier attempt of ours landed
                return Lease(holder=holder, token=current[0].mod_revision, ttl=ttl)
            if not current:
                compare = absent  # freed meanwhile
                continue
            if current[0].value != value:
                return None
            # Ours (a restarted daemon, or a re-acquisition): take it over if unchanged.
            replaced = current[0].lease
            compare = {
                "key": key,
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": str(current[0].mod_revision),
            }
        return None

    async def renew_lease(self, lease: Lease) -> Lease | None:
        check_ttl(lease.ttl)

        async def renew(deadline: float) -> Lease | None:
            current = await self._get(self._leader_key, deadline)
            if not self._is(current, lease) or current is None or not current.lease:
                return None
            answer = await self._rpc("/v3/lease/keepalive", {"ID": str(current.lease)}, deadline)
            if as_int(answer, "TTL") <= 0:  # expired (or revoked) before we got to it
                return None
            # The key may have been replaced between our read and the keepalive.
            after = await self._get(self._leader_key, deadline)
            return lease if self._is(after, lease) else None

        return await self._op("renew_lease", renew)

    @staticmethod
    def _is(kv: _KV | None, lease: Lease) -> bool:
        return (
            kv is not None and kv.mod_revision == lease.token and kv.value == lease.holder.encode()
        )

    async def release_lease(self, lease: Lease) -> None:
        async def release(deadline: float) -> None:
            current = await self._get(self._leader_key, deadline)
            if self._is(current, lease) and current is not None and current.lease:
                await self._revoke(current.lease, deadline)

        await self._op("release_lease", release)

    async def leader(self) -> str | None:
        async def leader(deadline: float) -> str | None:
            current = await self._get(self._leader_key, deadline)
            return None if current is None else current.value.decode(errors="replace")

        return await self._op("leader", leader)

    async def announce(self, lease: Lease, api: str, policy_version: str) -> None:
        check_token(lease.token)
        info = encode_announcement(lease.token, api, policy_version)

        async def announce(deadline: float) -> None:
            current = await self._get(self._leader_key, deadline)
            lease_id = current.lease if current is not None and self._is(current, lease) else 0
            if not lease_id:
                raise self._fenced("announce", lease.token, [current] if current else [])
            ok, _, responses = await self._txn(
                self._fence(lease.token),
                [self._put(self._info_key, info, lease_id)],
                [self._read(self._leader_key)],
                deadline,
            )
            if not ok:
                leader = self._range_kvs(responses[0]) if responses else []
                raise self._fenced("announce", lease.token, leader)

        await self._op("announce", announce)

    async def leader_info(self) -> LeaderInfo | None:
        async def read(deadline: float) -> LeaderInfo | None:
            _, _, responses = await self._txn(
                [], [self._read(self._leader_key), self._read(self._info_key)], [], deadline
            )
            leader = self._range_kvs(responses[0]) if responses else []
            if not leader:
                return None
            info = self._range_kvs(responses[1]) if len(responses) > 1 else []
            holder = leader[0].value.decode(errors="replace")
            return decode_announcement(
                holder, leader[0].mod_revision, info[0].value if info else None
            )

        return await self._op("leader_info", read)

    # -- service state --------------------------------------------------------------------
    def _state_key(self, service: str) -> str:
        return f"{self._p}/state/{_name(service)}"

    async def load_state(self, service: str) -> ServiceState | None:
        async def load(deadline: float) -> _KV | None:
            return await self._get(self._state_key(service), deadline)

        kv = await self._op("load_state", load)
        if kv is None:
            return None
        try:
            return decode_state(kv.value, f"state of service {service!r} in etcd")
        except CorruptRecord as exc:
            hit, error = corrupt_state(
                self._quarantine, service, kv.key.decode(errors="replace"), exc, kv.value
            )
            if hit is not None:
                await self._keep([hit])
            raise error from None

    async def save_state(self, state: ServiceState, token: int) -> None:
        check_token(token)
        body = encode_state(state)

        async def save(deadline: float) -> None:
            ok, _, responses = await self._txn(
                self._fence(token),
                [self._put(self._state_key(state.service), body)],
                [self._read(self._leader_key)],
                deadline,
            )
            if not ok:
                leader = self._range_kvs(responses[0]) if responses else []
                raise self._fenced("save_state", token, leader)

        await self._op("save_state", save)

    # -- journal --------------------------------------------------------------------------
    async def append_journal(self, record: JournalRecord) -> None:
        check_token(record.token)
        body = encode_journal(record)
        record_id = uuid.uuid4().hex
        primary = f"{self._p}/journal/{_name(record.service)}/{record_id}"
        writes = [
            self._put(primary, body),
            self._put(f"{self._p}/run/{_name(record.run_id)}/{record_id}", body),
        ]
        if record.run_id:
            writes.append(
                self._put(f"{self._p}/runs/{_name(record.service)}/{_name(record.run_id)}", b"")
            )
        open_key = f"{self._p}/open/{_name(record.run_id)}"
        if record.status is JournalStatus.RUN_STARTED:
            writes.append(self._put(open_key, b""))
        elif record.status in _FINISHED:
            writes.append({"request_delete_range": {"key": b64(open_key)}})
        compare = [
            *self._fence(record.token),
            {"key": b64(primary), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
        ]

        async def append(deadline: float) -> None:
            ok, _, responses = await self._txn(
                compare, writes, [self._read(self._leader_key), self._read(primary)], deadline
            )
            if ok:
                return
            if len(responses) > 1 and self._range_kvs(responses[1]):
                return  # an earlier attempt of this call landed (its answer was lost)
            leader = self._range_kvs(responses[0]) if responses else []
            raise self._fenced("append_journal", record.token, leader)

        await self._op("append_journal", append)

    async def read_run(self, run_id: str) -> Sequence[JournalRecord]:
        prefix = f"{self._p}/run/{_name(run_id)}/"

        async def read(deadline: float) -> list[_KV]:
            kvs, _ = await self._range(
                prefix,
                deadline,
                sort_order="ASCEND",
                sort_target="CREATE",
                **self._prefix_options(prefix),
            )
            return kvs

        kvs = await self._op("read_run", read)
        decoder = JournalDecoder(self._quarantine, f" of run {run_id!r} in etcd")
        rows = (Row(kv.key.decode(errors="replace"), kv.value, run_id=run_id) for kv in kvs)
        records = decode_all(rows, decoder)
        await self._keep(decoder.found)
        return records

    async def unfinished_runs(self) -> Sequence[str]:
        prefix = f"{self._p}/open/"

        async def unfinished(deadline: float) -> list[_KV]:
            return await self._keys_by_creation(prefix, deadline, "ASCEND")

        kvs = await self._op("unfinished_runs", unfinished)
        return [unquote(kv.key.decode()[len(prefix) :]) for kv in kvs]

    async def recent_runs(self, service: str, limit: int = 20) -> Sequence[str]:
        check_recent_runs_limit(limit)
        prefix = f"{self._p}/runs/{_name(service)}/"

        async def recent(deadline: float) -> list[_KV]:
            return await self._keys_by_creation(prefix, deadline, "DESCEND", limit=str(limit))

        kvs = await self._op("recent_runs", recent)
        return [unquote(kv.key.decode()[len(prefix) :]) for kv in kvs]

    async def _keys_by_creation(
        self, prefix: str, deadline: float, order: str, **options: str
    ) -> list[_KV]:
        """The keys (no values) under ``prefix``, ordered by when they were created."""
        kvs, _ = await self._range(
            prefix,
            deadline,
            sort_order=order,
            sort_target="CREATE",
            keys_only=True,
            **options,
            **self._prefix_options(prefix),
        )
        return kvs

    async def read_journal(
        self,
        service: str | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> Sequence[JournalRecord]:
        check_journal_query(since, until, limit)
        prefix = (
            f"{self._p}/journal/" if service is None else (f"{self._p}/journal/{_name(service)}/")
        )
        decoder = JournalDecoder(self._quarantine, " in etcd", newest_first=True)
        root = f"{self._p}/journal/"

        def row(kv: _KV) -> Row:
            key = kv.key.decode(errors="replace")
            owner = unquote(key[len(root) :].split("/", 1)[0]) if key.startswith(root) else ""
            return Row(key, kv.value, service=owner)

        async def read(deadline: float) -> list[JournalRecord]:
            # Newest first, a page at a time. Records are never changed or deleted and new
            # ones have larger create revisions, so bounding each page below the last one
            # seen reads a consistent history without pinning a revision (which compaction
            # could remove under us).
            found: list[JournalRecord] = []

            def take(records: list[JournalRecord]) -> bool:
                for rec in records:
                    if in_window(rec, since, until):
                        found.append(rec)
                        if len(found) == limit:
                            return True
                return False

            below = 0  # only records created before this revision (0: no bound yet)
            done = False
            while not done:
                options: dict[str, Any] = {
                    "sort_order": "DESCEND",
                    "sort_target": "CREATE",
                    "limit": str(_PAGE),
                    **self._prefix_options(prefix),
                }
                if below:
                    options["max_create_revision"] = str(below - 1)
                kvs, _ = await self._range(prefix, deadline, **options)
                for kv in kvs:
                    if take(decoder.feed(row(kv))):
                        done = True
                        break
                below = kvs[-1].create_revision if kvs else 0
                if not done and (len(kvs) < _PAGE or below <= 1):
                    take(decoder.finish())
                    done = True
            found.reverse()
            return found

        records = await self._op("read_journal", read)
        await self._keep(decoder.found)
        return records

    # -- approvals ------------------------------------------------------------------------
    def _approval_prefix(self, service: str, run_id: str, step: str) -> str:
        return f"{self._p}/approval/{_name(service)}/{_name(run_id)}/{_name(step)}/"

    async def record_approval(self, approval: ApprovalRecord) -> None:
        key = self._approval_prefix(approval.service, approval.run_id, approval.step)
        key += uuid.uuid4().hex
        body = encode_approval(approval)

        async def record(deadline: float) -> None:
            await self._rpc("/v3/kv/put", {"key": b64(key), "value": b64(body)}, deadline)

        await self._op("record_approval", record)

    async def approved(self, service: str, run_id: str, step: str) -> bool:
        prefix = self._approval_prefix(service, run_id, step)

        async def approved(deadline: float) -> bool:
            _, answer = await self._range(
                prefix, deadline, count_only=True, **self._prefix_options(prefix)
            )
            return as_int(answer, "count") > 0

        return await self._op("approved", approved)

    async def approval(self, service: str, run_id: str, step: str) -> ApprovalRecord | None:
        prefix = self._approval_prefix(service, run_id, step)

        async def first(deadline: float) -> _KV | None:
            kvs, _ = await self._range(
                prefix,
                deadline,
                limit=1,
                sort_order="ASCEND",
                sort_target="CREATE",
                **self._prefix_options(prefix),
            )
            return kvs[0] if kvs else None

        kv = await self._op("approval", first)
        if kv is None:
            return None
        return decode_approval(kv.value, f"approval of {run_id}/{step} in etcd")

    # -- quarantine -----------------------------------------------------------------------
    def _quarantine_key(self, found: Found) -> str:
        digest = hashlib.sha256(
            b"\0".join((found.kind.encode(), found.key.encode(), found.body))
        ).hexdigest()[:32]
        return f"{self._p}/quarantine/{found.kind}/{digest}"

    async def _keep(self, found: Sequence[Found]) -> None:
        """Copy corrupt records to the quarantine prefix (put if absent: once each). Best
        effort: counted and logged anyway; the next process tries again."""
        if not found:
            return
        now = time.time()

        async def keep(deadline: float) -> None:
            for f in found:
                key = self._quarantine_key(f)
                value = json.dumps(
                    {
                        "kind": f.kind,
                        "key": f.key,
                        "error": f.error,
                        "found_at": now,
                        "body": base64.b64encode(f.body).decode(),
                    },
                    sort_keys=True,
                )
                absent = {
                    "key": b64(key),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": "0",
                }
                await self._txn([absent], [self._put(key, value)], [], deadline)

        try:
            await self._op("quarantine", keep)
        except StoreUnavailable as exc:
            _log.warning("store_quarantine_failed", backend=self.backend, error=str(exc))

    async def quarantined(self) -> Sequence[QuarantinedRecord]:
        prefix = f"{self._p}/quarantine/"

        async def read(deadline: float) -> list[_KV]:
            kvs, _ = await self._range(
                prefix,
                deadline,
                sort_order="ASCEND",
                sort_target="CREATE",
                **self._prefix_options(prefix),
            )
            return kvs

        out: list[QuarantinedRecord] = []
        for kv in await self._op("quarantined", read):
            try:
                doc = json.loads(kv.value)
                out.append(
                    QuarantinedRecord(
                        str(doc["kind"]),
                        str(doc["key"]),
                        str(doc["error"]),
                        float(doc["found_at"]),
                        base64.b64decode(doc["body"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                raw = kv.value
                out.append(
                    QuarantinedRecord("unreadable", kv.key.decode(errors="replace"), "", 0.0, raw)
                )
        return out

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def current_endpoint(self) -> str:
        """The endpoint calls go to first (the last one that answered)."""
        return self._client.current_endpoint

    async def close(self) -> None:
        """Close the HTTP client; idempotent. Leases stay (they expire or are renewed by the
        next handle). Later calls raise :class:`StoreUnavailable`."""
        if self._closed:
            return
        self._closed = True
        await self._client.close()

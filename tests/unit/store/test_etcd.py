"""EtcdStore: the Store contract on a real 3-member etcd cluster, plus what only a replicated,
networked store can get wrong (members dying, quorum loss, endpoint rotation, auth, TLS).

The contract suite shares one session cluster (``etcd_cluster``), each test under its own key
prefix; tests that kill members take a dedicated cluster from ``etcd_cluster_factory``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client import REGISTRY

from orchestrator.store.base import FencedOut, JournalStatus, Store, StoreError, StoreUnavailable
from orchestrator.store.etcd import EtcdAuthError, EtcdConfig, EtcdStore
from orchestrator.store.etcd_client import EtcdClient, b64, prefix_end, unb64
from tests.fixtures.etcd import ROOT_PASSWORD, EtcdCluster, EtcdPki, unique_prefix
from tests.unit.store.contract import T0, StoreContract, StoreFactory, full_state, record

# etcd's smallest lease with the fixture's raft timings; leases are whole seconds.
LEASE_TTL = 1.0
# etcd revokes expired leases in a loop that runs every 500 ms, then commits the revoke
# through raft: a lease is gone within about this long after its TTL.
EXPIRY_LAG = 0.75


@dataclass
class EtcdFactory:
    endpoints: tuple[str, ...]
    prefix: str
    lease_ttl: float = LEASE_TTL

    async def open(self) -> Store:
        return await EtcdStore.open(EtcdConfig(self.endpoints, prefix=self.prefix))

    async def advance(self, seconds: float) -> None:
        # Expiry is etcd's to judge, on its clock: let real time pass (with etcd's revocation
        # lag once a lease's TTL is crossed: "at least `seconds`" of the store's time).
        await asyncio.sleep(seconds + (EXPIRY_LAG if seconds >= self.lease_ttl else 0.0))

    async def _kv(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        client = EtcdClient(self.endpoints, ssl_context=None)
        try:
            return await client.request(path, body, asyncio.get_running_loop().time() + 5)
        finally:
            await client.close()

    async def corrupt_state(self, service: str, body: bytes) -> None:
        key = f"{self.prefix}/state/{quote(service, safe='')}"
        await self._kv("/v3/kv/put", {"key": b64(key), "value": b64(body)})

    async def corrupt_journal(self, run_id: str, index: int, body: bytes) -> None:
        # Both copies of the record (by run and by service) get the same bad bytes.
        run = f"{self.prefix}/run/{quote(run_id, safe='')}/"
        answer = await self._kv(
            "/v3/kv/range",
            {
                "key": b64(run),
                "range_end": b64(prefix_end(run.encode())),
                "sort_order": "ASCEND",
                "sort_target": "CREATE",
            },
        )
        kv = answer["kvs"][index]
        key = unb64(kv["key"]).decode()
        service = json.loads(unb64(kv["value"]))["service"]
        record_id = key.rsplit("/", 1)[1]
        by_service = f"{self.prefix}/journal/{quote(service, safe='')}/{record_id}"
        for target in (key, by_service):
            await self._kv("/v3/kv/put", {"key": b64(target), "value": b64(body)})


class TestEtcdStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, etcd_cluster: EtcdCluster) -> StoreFactory:
        return EtcdFactory(etcd_cluster.endpoints, unique_prefix())


# -- helpers -------------------------------------------------------------------------------
def config(cluster: EtcdCluster | tuple[str, ...], **options: Any) -> EtcdConfig:
    endpoints = cluster.endpoints if isinstance(cluster, EtcdCluster) else cluster
    return EtcdConfig(endpoints, prefix=unique_prefix(), **options)


@pytest.fixture
async def stores() -> AsyncIterator[Callable[[EtcdConfig], Any]]:
    """Open stores that are closed at the test's end."""
    opened: list[EtcdStore] = []

    async def open_store(cfg: EtcdConfig) -> EtcdStore:
        store = await EtcdStore.open(cfg)
        opened.append(store)
        return store

    try:
        yield open_store
    finally:
        for store in opened:
            await store.close()


async def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result = await call
    except StoreError as exc:
        result = exc
    return result, time.monotonic() - started


# -- members failing -----------------------------------------------------------------------
async def test_losing_one_member_changes_nothing(
    etcd_cluster_factory: Callable[..., EtcdCluster], stores: Any
) -> None:
    cluster = etcd_cluster_factory()
    store: EtcdStore = await stores(config(cluster))
    lease = await store.acquire_lease("daemon-a", 5.0)
    assert lease is not None
    await store.save_state(full_state(), lease.token)

    # The hardest member to lose: the raft leader, which our client may be talking to.
    cluster.kill(cluster.raft_leader())

    for attempt in range(1, 4):
        assert await store.renew_lease(lease) == lease
        await store.append_journal(
            record("r1", JournalStatus.STEP_STARTED, lease.token, attempt=attempt)
        )
    assert [r.attempt for r in await store.read_run("r1")] == [1, 2, 3]
    assert await store.load_state("web") == full_state()
    assert await store.leader() == "daemon-a"
    assert await store.acquire_lease("daemon-b", 5.0) is None


async def test_losing_quorum_is_unavailable_within_the_timeout_and_service_resumes(
    etcd_cluster_factory: Callable[..., EtcdCluster], stores: Any
) -> None:
    cluster = etcd_cluster_factory()
    timeout = 1.0
    a: EtcdStore = await stores(config(cluster, timeout=timeout))
    b: EtcdStore = await stores(EtcdConfig(cluster.endpoints, prefix=a.config.prefix))
    old = await a.acquire_lease("daemon-a", LEASE_TTL)
    assert old is not None

    cluster.kill(1)
    cluster.kill(2)
    # The survivor still accepts connections but cannot reach a quorum: every call fails,
    # each within the timeout (the lease's expiry no longer matters: nothing acts).
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "renew_lease": lambda: a.renew_lease(old),
        "append_journal": lambda: a.append_journal(
            record("r1", JournalStatus.RUN_STARTED, old.token)
        ),
        "leader": lambda: a.leader(),
        "acquire_lease": lambda: a.acquire_lease("daemon-a", LEASE_TTL),
    }
    elapsed: dict[str, float] = {}
    for name, call in calls.items():
        result, elapsed[name] = await timed(call())
        assert isinstance(result, StoreUnavailable), (name, result)
        assert "etcd" in str(result)
    assert max(elapsed.values()) < timeout + 0.25, elapsed
    assert min(elapsed.values()) > timeout * 0.5, elapsed  # it did try, not give up at once

    cluster.start_member(1)
    cluster.start_member(2)
    await cluster.wait_healthy_async()
    # Service resumes, and another instance's new lease fences the old holder, who lost
    # its lease while it could not renew it.
    deadline = time.monotonic() + 10
    new = None
    while new is None:
        assert time.monotonic() < deadline, "the old lease never expired"
        new = await b.acquire_lease("daemon-b", LEASE_TTL)
        if new is None:
            await asyncio.sleep(0.1)
    assert new.token > old.token
    assert await a.renew_lease(old) is None
    with pytest.raises(FencedOut):
        await a.save_state(full_state(), old.token)
    with pytest.raises(FencedOut):
        await a.append_journal(record("r1", JournalStatus.RUN_STARTED, old.token))
    await b.append_journal(record("r1", JournalStatus.RUN_STARTED, new.token))
    assert [r.token for r in await a.read_run("r1")] == [new.token]


async def test_the_store_opens_while_etcd_is_down_and_works_once_it_is_up(
    etcd_cluster_factory: Callable[..., EtcdCluster], stores: Any
) -> None:
    cluster = etcd_cluster_factory(size=1)
    cluster.kill(0)
    store: EtcdStore = await stores(config(cluster, timeout=0.5))
    result, took = await timed(store.leader())
    assert isinstance(result, StoreUnavailable)
    assert "Connect" in str(result) or "refused" in str(result), result
    assert took < 0.75
    cluster.start_member(0)
    await cluster.wait_healthy_async()
    assert await store.leader() is None


# -- endpoints -----------------------------------------------------------------------------
async def test_a_dead_first_endpoint_is_skipped_and_the_working_one_remembered(
    etcd_cluster: EtcdCluster, stores: Any
) -> None:
    dead = "http://127.0.0.1:1"  # nothing listens on port 1 of loopback
    store: EtcdStore = await stores(config((dead, *etcd_cluster.endpoints)))
    lease = await store.acquire_lease("daemon-a", 5.0)
    assert lease is not None
    assert store.current_endpoint == etcd_cluster.endpoints[0]
    _, took = await timed(store.save_state(full_state(), lease.token))
    assert took < 0.2  # the working endpoint is asked first now
    assert await store.load_state("web") == full_state()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (a hung member)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_a_hung_endpoint_gets_only_its_share_of_the_time_budget(
    etcd_cluster: EtcdCluster, silent_endpoint: str, stores: Any
) -> None:
    timeout = 2.0
    store: EtcdStore = await stores(
        config((silent_endpoint, etcd_cluster.endpoints[1]), timeout=timeout)
    )
    result, took = await timed(store.leader())
    assert result is None
    # The hung endpoint had half of the budget, then the healthy one answered at once.
    assert timeout / 2 - 0.05 < took < timeout / 2 + 0.3, took
    assert store.current_endpoint == etcd_cluster.endpoints[1]


async def test_instances_on_different_members_fence_each_other(
    etcd_cluster: EtcdCluster, stores: Any
) -> None:
    prefix = unique_prefix()
    a: EtcdStore = await stores(EtcdConfig((etcd_cluster.endpoints[0],), prefix=prefix))
    b: EtcdStore = await stores(EtcdConfig((etcd_cluster.endpoints[2],), prefix=prefix))
    old = await a.acquire_lease("daemon-a", LEASE_TTL)
    assert old is not None
    await asyncio.sleep(LEASE_TTL + EXPIRY_LAG)  # daemon-a stalls past its lease
    new = await b.acquire_lease("daemon-b", LEASE_TTL)
    assert new is not None
    with pytest.raises(FencedOut, match=f"current lease's token is {new.token}"):
        await a.append_journal(record("r1", JournalStatus.RUN_STARTED, old.token))
    assert await b.read_run("r1") == []


class AnswerDroppingProxy:
    """An HTTP proxy to one etcd endpoint that forwards every request and, for the next
    ``drops`` txns, drops the connection instead of relaying etcd's answer: the write was
    applied, and the client cannot know."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.drops = 0
        self.dropped = 0
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._http = aiohttp.ClientSession()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        async with self._http.post(self.upstream + request.path, data=body) as upstream:
            answer = await upstream.read()
            status = upstream.status
        if request.path == "/v3/kv/txn" and self.drops > 0:
            self.drops -= 1
            self.dropped += 1
            assert request.transport is not None
            request.transport.close()
        return web.Response(body=answer, status=status, content_type="application/json")

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def dropping_proxy(
    etcd_cluster: EtcdCluster,
) -> AsyncIterator[tuple[AnswerDroppingProxy, str]]:
    proxy = AnswerDroppingProxy(etcd_cluster.endpoints[0])
    url = await proxy.start()
    try:
        yield proxy, url
    finally:
        await proxy.stop()


async def test_writes_whose_answer_was_lost_land_exactly_once(
    etcd_cluster: EtcdCluster, dropping_proxy: tuple[AnswerDroppingProxy, str], stores: Any
) -> None:
    proxy, url = dropping_proxy
    # The client asks the proxy first, loses the answer, and repeats on the next endpoint.
    store: EtcdStore = await stores(config((url, etcd_cluster.endpoints[1])))
    proxy.drops = 1
    lease = await store.acquire_lease("daemon-a", 5.0)
    assert lease is not None
    assert proxy.dropped == 1
    assert await store.leader() == "daemon-a"

    # A new handle starts on the proxy again (this one now prefers the endpoint that worked).
    again: EtcdStore = await stores(EtcdConfig(store.config.endpoints, prefix=store.config.prefix))
    first = record("r1", JournalStatus.RUN_STARTED, lease.token)
    second = record("r1", JournalStatus.STEP_STARTED, lease.token, step="dns")
    await again.append_journal(first)
    proxy.drops = 1
    await again.append_journal(second)
    assert proxy.dropped == 2
    assert list(await store.read_run("r1")) == [first, second]  # no duplicate
    # The token recovered from the repeated acquisition is the one that passes the fence.
    await store.save_state(full_state(), lease.token)


# -- auth and TLS --------------------------------------------------------------------------
async def test_password_auth(etcd_cluster_factory: Callable[..., EtcdCluster], stores: Any) -> None:
    cluster = etcd_cluster_factory(size=1, auth=True)
    with structlog.testing.capture_logs() as logs:
        good: EtcdStore = await stores(config(cluster, username="root", password=ROOT_PASSWORD))
        lease = await good.acquire_lease("daemon-a", 5.0)
        assert lease is not None
        await good.save_state(full_state(), lease.token)
        assert await good.load_state("web") == full_state()

        wrong = "not-the-password"
        bad: EtcdStore = await stores(config(cluster, username="root", password=wrong))
        result, took = await timed(bad.leader())
        assert isinstance(result, EtcdAuthError), result
        assert not isinstance(result, StoreUnavailable)  # retrying will not help
        assert "credentials" in str(result) and "'root'" in str(result)
        assert took < 0.5  # refused at once, not after the timeout

        anonymous: EtcdStore = await stores(config(cluster))
        with pytest.raises(EtcdAuthError, match="requires authentication"):
            await anonymous.leader()

    for secret in (ROOT_PASSWORD, wrong):
        for text in (str(result), repr(good.config), repr(bad.config), repr(logs)):
            assert secret not in text


async def test_an_invalidated_token_is_renewed_transparently(
    etcd_cluster_factory: Callable[..., EtcdCluster], stores: Any
) -> None:
    cluster = etcd_cluster_factory(size=1, auth=True)
    store: EtcdStore = await stores(config(cluster, username="root", password=ROOT_PASSWORD))
    assert await store.leader() is None  # authenticated: the store holds a token now
    # Setting the same password again invalidates every token of the user (and moves the
    # auth revision), as an expired token or a role change would.
    cluster.etcdctl(
        "user",
        "passwd",
        "root",
        "--interactive=false",
        user=f"root:{ROOT_PASSWORD}",
        stdin=ROOT_PASSWORD,
    )
    with structlog.testing.capture_logs() as logs:
        assert await store.leader() is None
    assert [e["event"] for e in logs].count("etcd_token_renewed") == 1, logs


async def test_tls_with_a_private_ca(
    etcd_cluster_factory: Callable[..., EtcdCluster], stores: Any
) -> None:
    cluster = etcd_cluster_factory(size=1, tls=True)
    store: EtcdStore = await stores(config(cluster, ca_file=cluster.ca_file))
    lease = await store.acquire_lease("daemon-a", 5.0)
    assert lease is not None
    await store.save_state(full_state(), lease.token)
    assert await store.load_state("web") == full_state()

    untrusting: EtcdStore = await stores(config(cluster, timeout=0.5))  # system CAs only
    with pytest.raises(StoreUnavailable, match="certificate"):
        await untrusting.leader()


async def test_mutual_tls_with_a_client_certificate(
    etcd_cluster_factory: Callable[..., EtcdCluster], stores: Any
) -> None:
    cluster = etcd_cluster_factory(size=1, client_cert_auth=True)
    pki = cluster.pki
    store: EtcdStore = await stores(
        config(cluster, ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key)
    )
    lease = await store.acquire_lease("daemon-a", 5.0)
    assert lease is not None
    assert await store.leader() == "daemon-a"

    no_certificate: EtcdStore = await stores(config(cluster, ca_file=pki.ca_file, timeout=0.5))
    with pytest.raises(StoreUnavailable):
        await no_certificate.leader()


async def test_an_unusable_client_key_is_refused_at_open(tmp_path: Path) -> None:
    pki = EtcdPki.create(tmp_path)
    with pytest.raises(ValueError, match="cert_file"):
        await EtcdStore.open(
            EtcdConfig(
                ("https://127.0.0.1:2379",),
                ca_file=pki.ca_file,
                cert_file=pki.client_cert,
                key_file=pki.server_key,  # not the certificate's key
            )
        )


# -- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"endpoints": ()}, "endpoints"),
        ({"endpoints": ("127.0.0.1:2379",)}, "endpoints"),
        ({"endpoints": ("http://127.0.0.1:2379/v3",)}, "endpoints"),
        ({"endpoints": ("http://a:1", "https://b:1")}, "endpoints"),
        ({"prefix": "failoverd"}, "prefix"),
        ({"prefix": "/failoverd/"}, "prefix"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"ca_file": Path("/etc/hostname")}, "ca_file"),  # https endpoints needed
        ({"username": "root"}, "password"),
        ({"password": "x"}, "username"),
    ],
)
async def test_bad_configuration_is_refused_naming_the_field(
    options: dict[str, Any], field: str
) -> None:
    values: dict[str, Any] = {"endpoints": ("http://127.0.0.1:2379",), **options}
    with pytest.raises(ValueError, match=field):
        await EtcdStore.open(EtcdConfig(**values))


async def test_a_missing_ca_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=f"ca_file: {missing}"):
        await EtcdStore.open(EtcdConfig(("https://127.0.0.1:2379",), ca_file=missing))


def test_the_password_is_not_in_the_config_repr() -> None:
    cfg = EtcdConfig(("http://127.0.0.1:2379",), username="root", password="hunter2")
    assert "hunter2" not in repr(cfg)


# -- journal paging --------------------------------------------------------------------------
async def test_read_journal_pages_through_a_long_journal(
    etcd_cluster: EtcdCluster, stores: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.store.etcd._PAGE", 3)
    store: EtcdStore = await stores(config(etcd_cluster))
    lease = await store.acquire_lease("daemon-a", 5.0)
    assert lease is not None
    for i in range(10):
        await store.append_journal(
            record("", JournalStatus.DECISION, lease.token, at=T0 + i, detail=str(i))
        )
    everything = await store.read_journal()
    assert [r.detail for r in everything] == [str(i) for i in range(10)]
    newest = await store.read_journal(limit=4)
    assert [r.detail for r in newest] == ["6", "7", "8", "9"]
    # The window's records sit on the second and third pages from the newest.
    window = await store.read_journal("web", since=T0 + 1, until=T0 + 5, limit=3)
    assert [r.detail for r in window] == ["3", "4", "5"]
    early = await store.read_journal(until=T0 + 1)
    assert [r.detail for r in early] == ["0", "1"]


# -- metrics -------------------------------------------------------------------------------
async def test_calls_are_measured_by_outcome(etcd_cluster: EtcdCluster, stores: Any) -> None:
    def count(operation: str, outcome: str) -> float:
        labels = {"backend": "etcd", "operation": operation, "outcome": outcome}
        sample = REGISTRY.get_sample_value(
            "failoverd_store_operation_duration_seconds_count", labels
        )
        return sample or 0.0

    store: EtcdStore = await stores(config(etcd_cluster))
    fenced, ok = count("save_state", "fenced"), count("leader", "ok")
    with pytest.raises(FencedOut):
        await store.save_state(full_state(), 1)
    await store.leader()
    assert count("save_state", "fenced") == fenced + 1
    assert count("leader", "ok") == ok + 1

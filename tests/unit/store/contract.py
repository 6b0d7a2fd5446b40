"""The ``Store`` contract as tests, for every implementation (sqlite now, etcd later).

Use: subclass :class:`StoreContract` in a ``test_*.py`` module and give the subclass a
``store_factory`` fixture returning a :class:`StoreFactory` over *fresh, empty* storage::

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path: Path) -> StoreFactory:
            return SqliteFactory(tmp_path / "state.db")

The suite knows nothing of the backend: it only calls the ``Store`` protocol, opens further
handles on the same storage through the factory (durability, two instances), and moves the
store's lease clock through ``factory.advance`` (a virtual clock for sqlite; a real wait for
a backend whose server judges expiry, with a small ``lease_ttl`` to keep that fast).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import fields
from typing import Protocol

import pytest

from orchestrator.engine.state import (
    Initiator,
    Move,
    RunInfo,
    RunStatus,
    ServiceState,
)
from orchestrator.engine.vocabulary import Action
from orchestrator.store.base import (
    ApprovalRecord,
    CorruptState,
    FencedOut,
    JournalRecord,
    JournalStatus,
    LeaderInfo,
    Store,
    StoreError,
    StoreUnavailable,
)

T0 = 1_700_000_000.0  # record timestamps: stored values, not the store's clock


class StoreFactory(Protocol):
    """Gives the contract suite its stores."""

    lease_ttl: float  # the ttl the suite uses; advance() is called in fractions of it

    async def open(self) -> Store:
        """A new handle on this factory's storage: the same data every time (another daemon
        instance, or the same one after a restart). The suite closes what it opens."""
        ...

    async def advance(self, seconds: float) -> None:
        """Move the clock the store judges lease expiry by forward by ``seconds`` (at least)."""
        ...

    async def corrupt_state(self, service: str, body: bytes) -> None:
        """Overwrite the stored state of ``service`` with ``body``, behind the store's back
        (a disk error, a bad restore, a hand edit)."""
        ...

    async def corrupt_journal(self, run_id: str, index: int, body: bytes) -> None:
        """Overwrite the ``index``-th record (append order) of run ``run_id`` with ``body``
        (every copy the backend keeps of it)."""
        ...


def record(
    run_id: str,
    status: JournalStatus,
    token: int,
    *,
    service: str = "web",
    step: str = "",
    attempt: int = 0,
    at: float = T0,
    **extra: object,
) -> JournalRecord:
    return JournalRecord(
        run_id=run_id,
        service=service,
        status=status,
        at=at,
        token=token,
        policy_version="sha256:abc",
        step=step,
        attempt=attempt,
        **extra,  # type: ignore[arg-type]
    )


def full_state(service: str = "web") -> ServiceState:
    """A state with every field away from its default: a running run awaiting approval, moves
    of several kinds, fractional timestamps."""
    return ServiceState(
        service=service,
        active_region="us-east-1",
        paused=True,
        run=RunInfo(
            id="run-0042",
            kind=Action.FAILOVER,
            source="us-east-1",
            target="us-west-2",
            started_at=T0 + 12.345678,
            initiated_by=Initiator.OPERATOR,
            status=RunStatus.RUNNING,
            finished_at=None,
            error="",
            waiting_approval=True,
        ),
        moves=(
            Move(at=T0 - 7200.5, kind=Action.FAILOVER, target="us-west-2"),
            Move(at=T0 - 3600.25, kind=Action.FAILBACK, target="us-east-1"),
            Move(at=T0 + 12.345678, kind=Action.SWITCHOVER, target="us-west-2"),
        ),
        last_move_finished_at=T0 - 3500.125,
        detected_at=T0 + 0.1,
    )


def failed_state(service: str = "web") -> ServiceState:
    return ServiceState(
        service=service,
        active_region="eu-west-1",
        run=RunInfo(
            id="run-7",
            kind=Action.SWITCHOVER,
            source="eu-west-1",
            target="eu-central-1",
            started_at=T0,
            initiated_by=Initiator.POLICY,
            status=RunStatus.FAILED,
            finished_at=T0 + 95.5,
            error="promote_db: DBInstanceNotFound: replica db-2 not found",
        ),
        last_move_finished_at=T0 + 95.5,
    )


class StoreContract:
    """Every ``Store`` passes these. Subclasses provide the ``store_factory`` fixture."""

    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[Store]:
        store = await store_factory.open()
        try:
            yield store
        finally:
            await store.close()

    @pytest.fixture
    def ttl(self, store_factory: StoreFactory) -> float:
        return store_factory.lease_ttl

    # -- lease ---------------------------------------------------------------------------
    async def test_a_free_lease_is_acquired_and_names_the_leader(
        self, store: Store, ttl: float
    ) -> None:
        assert await store.leader() is None
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        assert (lease.holder, lease.ttl) == ("daemon-a", ttl)
        assert await store.leader() == "daemon-a"

    async def test_a_held_lease_is_refused_to_another_holder(
        self, store: Store, ttl: float
    ) -> None:
        assert await store.acquire_lease("daemon-a", ttl) is not None
        assert await store.acquire_lease("daemon-b", ttl) is None
        assert await store.leader() == "daemon-a"

    async def test_renewal_keeps_the_token_and_outlives_the_original_ttl(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        for _ in range(3):  # 3 x 0.6 ttl: well past the first expiry without renewal
            await store_factory.advance(ttl * 0.6)
            renewed = await store.renew_lease(lease)
            assert renewed is not None
            assert (renewed.holder, renewed.token) == (lease.holder, lease.token)
        assert await store.leader() == "daemon-a"
        assert await store.acquire_lease("daemon-b", ttl) is None
        # A renewed token still passes the fence: in-flight writes are not disturbed.
        await store.save_state(full_state(), lease.token)

    async def test_an_expired_lease_goes_to_the_next_holder_with_a_larger_token(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        old = await store.acquire_lease("daemon-a", ttl)
        assert old is not None
        await store_factory.advance(ttl * 1.5)
        assert await store.leader() is None
        new = await store.acquire_lease("daemon-b", ttl)
        assert new is not None
        assert new.token > old.token
        assert await store.leader() == "daemon-b"
        assert await store.renew_lease(old) is None  # lost: expired and taken
        assert await store.leader() == "daemon-b"

    async def test_an_expired_lease_cannot_be_renewed(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        await store_factory.advance(ttl * 1.5)
        assert await store.renew_lease(lease) is None
        again = await store.acquire_lease("daemon-a", ttl)  # the way back: a new acquisition
        assert again is not None
        assert again.token > lease.token

    async def test_release_frees_the_lease_at_once(self, store: Store, ttl: float) -> None:
        a = await store.acquire_lease("daemon-a", ttl)
        assert a is not None
        await store.release_lease(a)
        assert await store.leader() is None
        assert await store.renew_lease(a) is None  # lost: released
        b = await store.acquire_lease("daemon-b", ttl)
        assert b is not None
        assert b.token > a.token

    async def test_releasing_a_lost_lease_leaves_the_new_holder_alone(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        a = await store.acquire_lease("daemon-a", ttl)
        assert a is not None
        await store_factory.advance(ttl * 1.5)
        b = await store.acquire_lease("daemon-b", ttl)
        assert b is not None
        await store.release_lease(a)
        await store.release_lease(a)  # idempotent
        assert await store.leader() == "daemon-b"
        assert await store.renew_lease(b) is not None

    # -- what the leader announces with its lease ----------------------------------------
    async def test_the_leader_announces_its_api_and_policy_version_to_every_instance(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        assert await store.leader_info() is None
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        assert await store.leader_info() == LeaderInfo("daemon-a")  # nothing announced yet
        await store.announce(lease, "http://10.0.0.1:8080", "v-1")
        other = await store_factory.open()  # another instance reads what was announced
        try:
            assert await other.leader_info() == LeaderInfo(
                "daemon-a", "http://10.0.0.1:8080", "v-1"
            )
            await store.announce(lease, "http://10.0.0.1:8080", "v-2")  # a policy reload
            info = await other.leader_info()
            assert info is not None and info.policy_version == "v-2"
        finally:
            await other.close()

    async def test_an_announcement_ends_with_its_lease_and_a_deposed_leader_cannot_announce(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        a = await store.acquire_lease("daemon-a", ttl)
        assert a is not None
        await store.announce(a, "http://a:8080", "v-a")
        await store_factory.advance(ttl * 1.5)
        assert await store.leader_info() is None
        b = await store.acquire_lease("daemon-b", ttl)
        assert b is not None
        assert await store.leader_info() == LeaderInfo("daemon-b")  # not a's address
        with pytest.raises(FencedOut):
            await store.announce(a, "http://a:8080", "v-a")
        await store.announce(b, "http://b:8080", "v-b")
        assert await store.leader_info() == LeaderInfo("daemon-b", "http://b:8080", "v-b")
        # The same holder acquiring again (a restart) starts with nothing announced.
        again = await store.acquire_lease("daemon-b", ttl)
        assert again is not None
        assert await store.leader_info() == LeaderInfo("daemon-b")
        await store.release_lease(again)
        assert await store.leader_info() is None

    async def test_tokens_strictly_increase_across_holders_and_reacquisitions(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        tokens: list[int] = []
        for holder in ("daemon-a", "daemon-b", "daemon-a", "daemon-a", "daemon-c"):
            lease = await store.acquire_lease(holder, ttl)
            assert lease is not None, holder
            tokens.append(lease.token)
            await store.release_lease(lease)
        # ...and after expiry rather than release.
        lease = await store.acquire_lease("daemon-b", ttl)
        assert lease is not None
        tokens.append(lease.token)
        await store_factory.advance(ttl * 1.5)
        lease = await store.acquire_lease("daemon-c", ttl)
        assert lease is not None
        tokens.append(lease.token)
        assert tokens == sorted(set(tokens)), tokens

    async def test_reacquiring_a_held_lease_gives_a_new_token_that_fences_the_old(
        self, store: Store, ttl: float
    ) -> None:
        # A restarted daemon (same holder name) must fence out its previous incarnation.
        first = await store.acquire_lease("daemon-a", ttl)
        second = await store.acquire_lease("daemon-a", ttl)
        assert first is not None
        assert second is not None
        assert second.token > first.token
        with pytest.raises(FencedOut):
            await store.append_journal(record("r1", JournalStatus.RUN_STARTED, first.token))
        await store.append_journal(record("r1", JournalStatus.RUN_STARTED, second.token))

    async def test_concurrent_acquisitions_elect_exactly_one(
        self, store_factory: StoreFactory, ttl: float
    ) -> None:
        stores = [await store_factory.open() for _ in range(2)]
        try:
            results = await asyncio.gather(
                *(s.acquire_lease(f"daemon-{i}", ttl) for i, s in enumerate(stores)),
                *(stores[0].acquire_lease(f"daemon-x{i}", ttl) for i in range(3)),
            )
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, results
            assert await stores[1].leader() == winners[0].holder
        finally:
            for s in stores:
                await s.close()

    async def test_bad_lease_arguments_are_refused(self, store: Store) -> None:
        with pytest.raises(ValueError, match="ttl"):
            await store.acquire_lease("daemon-a", 0)
        with pytest.raises(ValueError, match="ttl"):
            await store.acquire_lease("daemon-a", float("nan"))
        with pytest.raises(ValueError, match="holder"):
            await store.acquire_lease("", 10.0)
        assert await store.leader() is None

    # -- fencing -------------------------------------------------------------------------
    async def test_a_deposed_leader_cannot_write(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        old = await store.acquire_lease("daemon-a", ttl)
        assert old is not None
        await store.save_state(failed_state(), old.token)
        await store.append_journal(record("r1", JournalStatus.RUN_STARTED, old.token))
        await store_factory.advance(ttl * 1.5)
        new = await store.acquire_lease("daemon-b", ttl)
        assert new is not None

        with pytest.raises(FencedOut):
            await store.save_state(full_state(), old.token)
        with pytest.raises(FencedOut):
            await store.append_journal(
                record("r1", JournalStatus.STEP_STARTED, old.token, step="dns")
            )
        # Nothing of the late writes landed.
        assert await store.load_state("web") == failed_state()
        assert [r.status for r in await store.read_run("r1")] == [JournalStatus.RUN_STARTED]
        # The new leader writes fine.
        await store.save_state(full_state(), new.token)
        await store.append_journal(record("r1", JournalStatus.STEP_STARTED, new.token, step="dns"))
        assert await store.load_state("web") == full_state()

    async def test_a_deposed_leader_on_another_instance_cannot_write(
        self, store_factory: StoreFactory, ttl: float
    ) -> None:
        a, b = await store_factory.open(), await store_factory.open()
        try:
            old = await a.acquire_lease("daemon-a", ttl)
            assert old is not None
            await store_factory.advance(ttl * 1.5)
            assert await b.acquire_lease("daemon-b", ttl) is not None
            with pytest.raises(FencedOut):
                await a.append_journal(record("r1", JournalStatus.RUN_STARTED, old.token))
            with pytest.raises(FencedOut):
                await a.save_state(full_state(), old.token)
            assert await b.read_run("r1") == []
            assert await b.load_state("web") is None
        finally:
            await a.close()
            await b.close()

    async def test_an_expired_lease_fences_writes_even_when_nobody_took_it(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        await store_factory.advance(ttl * 1.5)
        with pytest.raises(FencedOut):
            await store.save_state(full_state(), lease.token)
        with pytest.raises(FencedOut):
            await store.append_journal(record("r1", JournalStatus.RUN_STARTED, lease.token))

    async def test_a_released_lease_fences_writes(self, store: Store, ttl: float) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        await store.release_lease(lease)
        with pytest.raises(FencedOut):
            await store.save_state(full_state(), lease.token)
        with pytest.raises(FencedOut):
            await store.append_journal(record("r1", JournalStatus.RUN_STARTED, lease.token))

    async def test_writes_without_any_lease_are_fenced(self, store: Store) -> None:
        for token in (0, 1, 10**6):
            with pytest.raises(FencedOut):
                await store.save_state(full_state(), token)
            with pytest.raises(FencedOut):
                await store.append_journal(record("r1", JournalStatus.RUN_STARTED, token))
        assert await store.load_state("web") is None
        assert await store.unfinished_runs() == []

    async def test_fenced_out_is_a_store_error(self) -> None:
        # Callers that catch StoreError ("take no new action") also catch FencedOut.
        assert issubclass(FencedOut, StoreError)

    # -- journal -------------------------------------------------------------------------
    async def test_a_run_reads_back_in_append_order(self, store: Store, ttl: float) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        t = lease.token
        written = [
            record(
                "r1",
                JournalStatus.RUN_STARTED,
                t,
                kind="failover",
                source_region="us-east-1",
                target_region="us-west-2",
                detail="active region down",
            ),
            record("r1", JournalStatus.STEP_STARTED, t, step="promote_db", attempt=1, at=T0 + 1),
            record(
                "r1",
                JournalStatus.STEP_FAILED,
                t,
                step="promote_db",
                attempt=1,
                at=T0 + 2.5,
                error="Throttling: rate exceeded",
                retryable=True,
            ),
            record("r1", JournalStatus.STEP_STARTED, t, step="promote_db", attempt=2, at=T0 + 4),
            record("r1", JournalStatus.STEP_SUCCEEDED, t, step="promote_db", attempt=2, at=T0 + 9),
            record("r1", JournalStatus.STEP_SKIPPED, t, step="notify", at=T0 + 9),
            record("r1", JournalStatus.RUN_SUCCEEDED, t, at=T0 + 10),
        ]
        other = record("r2", JournalStatus.RUN_STARTED, t, service="api")
        for i, rec in enumerate(written):
            await store.append_journal(rec)
            if i == 2:
                await store.append_journal(other)  # interleaved: must not leak into r1
        assert list(await store.read_run("r1")) == written
        assert list(await store.read_run("r2")) == [other]
        assert list(await store.read_run("unknown")) == []

    async def test_order_is_append_order_not_timestamp_order(
        self, store: Store, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        late = record("r1", JournalStatus.RUN_STARTED, lease.token, at=T0 + 100)
        early = record("r1", JournalStatus.STEP_STARTED, lease.token, step="dns", at=T0)
        await store.append_journal(late)
        await store.append_journal(early)
        assert list(await store.read_run("r1")) == [late, early]

    async def test_concurrent_appends_all_land_in_per_task_order(
        self, store: Store, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None

        async def writer(run_id: str) -> None:
            for attempt in range(1, 21):
                await store.append_journal(
                    record(run_id, JournalStatus.STEP_STARTED, lease.token, attempt=attempt)
                )

        await asyncio.gather(writer("r1"), writer("r2"), writer("r3"))
        for run_id in ("r1", "r2", "r3"):
            attempts = [r.attempt for r in await store.read_run(run_id)]
            assert attempts == list(range(1, 21)), run_id

    async def test_unfinished_runs_are_started_and_not_ended(
        self, store: Store, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        t = lease.token
        assert await store.unfinished_runs() == []
        for run_id in ("done", "failed", "open", "stepping"):
            await store.append_journal(record(run_id, JournalStatus.RUN_STARTED, t))
        await store.append_journal(record("stepping", JournalStatus.STEP_SUCCEEDED, t, step="x"))
        await store.append_journal(record("done", JournalStatus.RUN_SUCCEEDED, t))
        await store.append_journal(record("failed", JournalStatus.STEP_FAILED, t, step="x"))
        await store.append_journal(record("failed", JournalStatus.RUN_FAILED, t))
        # Records without a run_started are not a run to resume.
        await store.append_journal(record("orphan", JournalStatus.STEP_STARTED, t, step="x"))
        assert sorted(await store.unfinished_runs()) == ["open", "stepping"]

    async def test_recent_runs_are_newest_first_per_service_and_limited(
        self, store: Store, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        t = lease.token
        for i in range(5):
            await store.append_journal(record(f"web-{i}", JournalStatus.RUN_STARTED, t))
            await store.append_journal(
                record(f"api-{i}", JournalStatus.RUN_STARTED, t, service="api")
            )
        # A late record of an old run does not make it newer.
        await store.append_journal(record("web-0", JournalStatus.RUN_SUCCEEDED, t))
        assert list(await store.recent_runs("web")) == [f"web-{i}" for i in (4, 3, 2, 1, 0)]
        assert list(await store.recent_runs("web", limit=2)) == ["web-4", "web-3"]
        assert list(await store.recent_runs("api", limit=1)) == ["api-4"]
        assert list(await store.recent_runs("nobody")) == []
        with pytest.raises(ValueError, match="limit"):
            await store.recent_runs("web", limit=0)

    async def test_the_journal_reads_back_filtered_by_service_and_time_newest_limited(
        self, store: Store, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        t = lease.token
        for i in range(6):
            await store.append_journal(
                record("", JournalStatus.DECISION, t, at=T0 + i, detail=f"web {i}")
            )
            await store.append_journal(
                record("r", JournalStatus.RUN_STARTED, t, service="api", at=T0 + i + 0.5)
            )
        web = await store.read_journal("web")
        assert [r.detail for r in web] == [f"web {i}" for i in range(6)]  # oldest first
        assert web[0].status is JournalStatus.DECISION
        assert len(await store.read_journal()) == 12
        # The newest `limit`, still oldest first.
        assert [r.detail for r in await store.read_journal("web", limit=2)] == ["web 4", "web 5"]
        window = await store.read_journal("web", since=T0 + 1, until=T0 + 3)
        assert [r.at for r in window] == [T0 + 1, T0 + 2, T0 + 3]
        both = await store.read_journal(since=T0 + 4.5)
        assert [(r.service, r.at) for r in both] == [
            ("api", T0 + 4.5),
            ("web", T0 + 5),
            ("api", T0 + 5.5),
        ]
        assert await store.read_journal("nobody") == []
        with pytest.raises(ValueError, match="limit"):
            await store.read_journal(limit=0)
        with pytest.raises(ValueError, match="after"):
            await store.read_journal(since=T0 + 2, until=T0 + 1)

    # -- approvals -----------------------------------------------------------------------
    async def test_approvals_are_recorded_per_service_run_and_step(self, store: Store) -> None:
        assert not await store.approved("web", "r1", "gate")
        # Not fenced: a follower's API records approvals without holding the lease.
        await store.record_approval(
            ApprovalRecord(service="web", run_id="r1", step="gate", by="alice", reason="go", at=T0)
        )
        await store.record_approval(
            ApprovalRecord(service="web", run_id="", step="", by="bob", reason="ok", at=T0)
        )
        assert await store.approved("web", "r1", "gate")
        assert await store.approved("web", "", "")  # the pending decision
        assert not await store.approved("web", "r1", "other-gate")
        assert not await store.approved("web", "r2", "gate")
        assert not await store.approved("api", "r1", "gate")
        assert not await store.approved("api", "", "")

    async def test_an_approval_reads_back_who_and_why_first_one_wins(self, store: Store) -> None:
        assert await store.approval("web", "r1", "switch/approve-db") is None
        first = ApprovalRecord("web", "r1", "switch/approve-db", "alice", "replica caught up", T0)
        await store.record_approval(first)
        await store.record_approval(ApprovalRecord("web", "r1", "switch/approve-db", "bob", "", T0))
        await store.record_approval(ApprovalRecord("web", "r1", "switch/other", "carol", "x", T0))
        assert await store.approval("web", "r1", "switch/approve-db") == first
        assert await store.approval("web", "r2", "switch/approve-db") is None

    async def test_approving_twice_is_harmless(self, store: Store) -> None:
        approval = ApprovalRecord("web", "r1", "gate", "alice", "go", T0)
        await store.record_approval(approval)
        await store.record_approval(approval)
        assert await store.approved("web", "r1", "gate")

    # -- service state -------------------------------------------------------------------
    async def test_an_unknown_service_has_no_state(self, store: Store) -> None:
        assert await store.load_state("web") is None

    async def test_state_round_trips_every_field(self, store: Store, ttl: float) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        state = full_state()
        # The fixture really is away from every default, so the round trip covers each field.
        default = ServiceState(service="web", active_region="x")
        for f in fields(ServiceState):
            if f.name != "service":
                assert getattr(state, f.name) != getattr(default, f.name), f.name
        await store.save_state(state, lease.token)
        loaded = await store.load_state("web")
        assert loaded == state
        assert loaded is not None
        assert loaded.running
        assert isinstance(loaded.run, RunInfo)
        assert loaded.run.kind is Action.FAILOVER
        assert loaded.run.initiated_by is Initiator.OPERATOR
        assert isinstance(loaded.moves, tuple)

        await store.save_state(failed_state(), lease.token)  # replaces the whole state
        again = await store.load_state("web")
        assert again == failed_state()
        assert again is not None
        assert again.failed

    async def test_services_keep_separate_states(self, store: Store, ttl: float) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        await store.save_state(full_state("web"), lease.token)
        await store.save_state(failed_state("api"), lease.token)
        assert await store.load_state("web") == full_state("web")
        assert await store.load_state("api") == failed_state("api")

    # -- durability and lifecycle --------------------------------------------------------
    async def test_everything_survives_close_and_reopen(
        self, store_factory: StoreFactory, ttl: float
    ) -> None:
        first = await store_factory.open()
        lease = await first.acquire_lease("daemon-a", ttl)
        assert lease is not None
        await first.save_state(full_state(), lease.token)
        journal = [
            record("r1", JournalStatus.RUN_STARTED, lease.token, kind="failover"),
            record("r1", JournalStatus.STEP_STARTED, lease.token, step="dns", attempt=1),
        ]
        for rec in journal:
            await first.append_journal(rec)
        await first.record_approval(ApprovalRecord("web", "r1", "gate", "alice", "go", T0))
        await first.close()
        await first.close()  # idempotent

        second = await store_factory.open()
        try:
            assert await second.leader() == "daemon-a"
            assert await second.load_state("web") == full_state()
            assert list(await second.read_run("r1")) == journal
            assert list(await second.unfinished_runs()) == ["r1"]
            assert await second.approved("web", "r1", "gate")
            # The lease (and its token) survived: the holder renews and keeps writing...
            renewed = await second.renew_lease(lease)
            assert renewed == lease
            await second.append_journal(
                record("r1", JournalStatus.STEP_SUCCEEDED, lease.token, step="dns", attempt=1)
            )
            # ...and the next acquisition still gets a larger token.
            await second.release_lease(lease)
            after = await second.acquire_lease("daemon-b", ttl)
            assert after is not None
            assert after.token > lease.token
        finally:
            await second.close()

    async def test_a_closed_store_refuses_calls(self, store_factory: StoreFactory) -> None:
        store = await store_factory.open()
        await store.close()
        with pytest.raises(StoreError):
            await store.leader()
        with pytest.raises(StoreError):
            await store.load_state("web")

    async def test_the_store_states_its_time_bound(self, store: Store) -> None:
        assert store.timeout > 0

    # -- corrupt records ---------------------------------------------------------------------
    async def test_a_corrupt_state_is_quarantined_and_reported_not_unavailable(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        await store.save_state(full_state("web"), lease.token)
        await store.save_state(failed_state("api"), lease.token)
        junk = b'{"v": 1, "service": "web", "active_region": 7}'
        await store_factory.corrupt_state("web", junk)
        for _ in range(2):  # reported on every read (a corrupt state is not "no state")...
            with pytest.raises(CorruptState) as err:
                await store.load_state("web")
            assert not isinstance(err.value, StoreUnavailable)
            assert err.value.service == "web" and "web" in err.value.key
            assert "corrupt state of service 'web'" in str(err.value)
            assert "quarantined" in str(err.value)
        # ...and takes nothing else with it.
        assert await store.load_state("api") == failed_state("api")
        assert await store.leader() == "daemon-a"
        kept = list(await store.quarantined())
        assert [(q.kind, q.key, q.body) for q in kept] == [("service_state", err.value.key, junk)]
        assert "corrupt state of service 'web'" in kept[0].error
        # The leader's next save replaces it; the copy stays.
        await store.save_state(full_state("web"), lease.token)
        assert await store.load_state("web") == full_state("web")
        assert len(await store.quarantined()) == 1

    async def test_a_corrupt_journal_record_takes_out_only_itself(
        self, store: Store, store_factory: StoreFactory, ttl: float
    ) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        t = lease.token
        journal = [
            record("r1", JournalStatus.RUN_STARTED, t, at=T0, kind="failover"),
            record("r1", JournalStatus.STEP_STARTED, t, at=T0 + 1, step="db", attempt=1),
            record("r1", JournalStatus.STEP_SUCCEEDED, t, at=T0 + 2, step="db", attempt=1),
            record("r1", JournalStatus.RUN_SUCCEEDED, t, at=T0 + 3),
        ]
        for r in journal:
            await store.append_journal(r)
        await store.append_journal(record("r2", JournalStatus.RUN_STARTED, t, at=T0 + 10))
        await store_factory.corrupt_journal("r1", 1, b"\x00 not json")
        for _ in range(2):
            got = list(await store.read_run("r1"))
            assert [r.status for r in got] == [
                JournalStatus.RUN_STARTED,
                JournalStatus.CORRUPT,
                JournalStatus.STEP_SUCCEEDED,
                JournalStatus.RUN_SUCCEEDED,
            ]
            assert got[0] == journal[0] and got[2:] == journal[2:]
            bad = got[1]
            assert bad.run_id == "r1" and bad.detail and "not JSON" in bad.error
            assert bad.at == T0  # its older neighbour's time: it sits where it was
        # The audit view: the corrupt record in its place, the rest as written.
        audit = list(await store.read_journal("web"))
        assert [r.status for r in audit][:2] == [JournalStatus.RUN_STARTED, JournalStatus.CORRUPT]
        assert len(audit) == 5
        window = list(await store.read_journal("web", since=T0 + 2, until=T0 + 3))
        assert [r.status for r in window] == [
            JournalStatus.STEP_SUCCEEDED,
            JournalStatus.RUN_SUCCEEDED,
        ]
        assert list(await store.read_journal(limit=2)) == [journal[3], audit[-1]]
        assert list(await store.unfinished_runs()) == ["r2"]
        assert list(await store.recent_runs("web")) == ["r2", "r1"]
        # Kept once per stored copy (a backend may hold a record under several keys).
        kept = list(await store.quarantined())
        assert {(q.kind, q.body) for q in kept} == {("journal", b"\x00 not json")}
        assert bad.detail in {q.key for q in kept}
        assert len({q.key for q in kept}) == len(kept)

    async def test_a_corrupt_record_is_never_written(self, store: Store, ttl: float) -> None:
        lease = await store.acquire_lease("daemon-a", ttl)
        assert lease is not None
        with pytest.raises(ValueError, match="never written"):
            await store.append_journal(record("r1", JournalStatus.CORRUPT, lease.token))

"""The flight recorder: what it keeps (changes only), its files (a snapshot first, rotation,
incidents opening and closing, a restart, torn lines, pruning and the size cap), and the whole
loop on a real controller in virtual time: an outage recorded, exported as a scenario that
``failoverd test`` replays to the same decisions, and ``failoverd diff`` against a policy with a
longer detection rule reporting the later failover."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from orchestrator.cli.diff import run_diff
from orchestrator.daemon.controller import Controller
from orchestrator.daemon.flight_recorder import (
    FlightRecorder,
    prune,
    read_incidents,
    read_lines,
    segments,
)
from orchestrator.engine.expectations import check
from orchestrator.engine.observation import Observation
from orchestrator.engine.scenario_loader import load_scenario
from orchestrator.engine.simulator import Simulation
from orchestrator.engine.state import (
    Command,
    CommandSource,
    Decision,
    LagReading,
    OperatorCommand,
    ServiceState,
)
from orchestrator.engine.vocabulary import Action, Phase, Reason
from orchestrator.incident_export import read_recording, to_scenario, window_for
from orchestrator.policy.loader import load_policy_text
from orchestrator.store.sqlite import SqliteStore
from tests.fixtures.clock import VirtualClock, eventually
from tests.fixtures.controller import policy_text
from tests.unit.daemon.controller_support import running, see
from tests.unit.daemon.recorder_support import POLICY, FakeSource
from tests.unit.runbook.fakes import ScriptedAction


@pytest.fixture
def lease_ttl() -> float:
    # The controller's lease outlives the test's virtual minutes: leadership is not the point.
    return 1e6


def recorder(folder: Path, clock: VirtualClock, **kw: float) -> FlightRecorder:
    r = FlightRecorder(
        folder,
        lead=kw.get("lead", 60.0),
        after=kw.get("after", 10.0),
        segment=kw.get("segment", 30.0),
        max_bytes=int(kw.get("max_bytes", 1 << 30)),
        node_id="node-a",
        clock=clock,
    )
    r.load()
    return r


def flush(r: FlightRecorder, source: FakeSource | Controller) -> None:
    r.write(r.tick(source))


def decision(clock: VirtualClock, phase: Phase) -> Decision:
    return Decision(
        "shop", clock.now(), phase, Action.NONE, "us-east-1", reasons=(Reason.NO_QUORUM,)
    )


def records(folder: Path, kind: str | None = None) -> list[dict[str, object]]:
    out = []
    for _, path in segments(folder / "shop"):
        out += [r for r in read_lines(path) if kind is None or r["k"] == kind]
    return out


# -- what is kept ----------------------------------------------------------------------------


def test_only_observations_that_say_something_new_are_recorded(tmp_path: Path) -> None:
    clock = VirtualClock()
    source = FakeSource()
    r = recorder(tmp_path, clock)
    r.attach(source)
    flush(r, source)  # the first file: its snapshot

    def feed(ok: bool | None, detail: str = "") -> None:
        obs = Observation("shop", "us-east-1", "api", "local", ok, clock.now(), detail=detail)
        source.book.observe(obs, r.observation)

    for _ in range(5):
        clock.advance(1.0)
        feed(True)  # the first is new, the next four are not
    clock.advance(1.0)
    feed(False, "connect")
    clock.advance(1.0)
    feed(False, "timeout")  # the kind of failure changed
    clock.advance(1.0)
    feed(False, "timeout")
    clock.advance(4000.0)  # silent longer than the staleness (1h)
    feed(False, "timeout")
    flush(r, source)
    seen = [(o["ok"], o["d"], "prev" in o) for o in records(tmp_path, "obs")]
    assert seen == [
        (True, "", False),
        (False, "connect", True),
        (False, "timeout", True),
        (False, "timeout", True),
    ]
    assert records(tmp_path, "obs")[-1]["prev"] == clock.now() - 4000.0


def test_lag_is_recorded_when_it_moves_crosses_the_rpo_or_freezes(tmp_path: Path) -> None:
    clock = VirtualClock()
    source = FakeSource()
    r = recorder(tmp_path, clock)
    r.attach(source)
    for seconds in (2.0, 3.0, 2.5, 20.0, 61.0, 59.0):  # RPO 1m: a tenth is 6s
        clock.advance(10.0)
        r.lag("shop", "us-west-2", LagReading(seconds, clock.now()))
    frozen_at = clock.now()
    for _ in range(3):  # the metric stops: the same datapoint again and again
        clock.advance(10.0)
        r.lag("shop", "us-west-2", LagReading(59.0, frozen_at))
    clock.advance(10.0)
    r.lag("shop", "us-west-2", LagReading(None, clock.now()))
    flush(r, source)
    got = [(x["sec"], x["frozen"]) for x in records(tmp_path, "lag")]
    assert got == [
        (2.0, False),
        (20.0, False),
        (61.0, False),
        (59.0, False),
        (59.0, True),
        (None, False),
    ]


def test_operator_commands_keep_every_field_and_leadership_changes_are_noted(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    source = FakeSource()
    r = recorder(tmp_path, clock)
    r.attach(source)
    flush(r, source)
    command = OperatorCommand(
        Command.FAILOVER,
        to="us-west-2",
        force=True,
        by="alice",
        reason="db",
        source=CommandSource.CLI,
        user="alice@host",
        id="cmd-1",
    )
    r.command("shop", command, clock.now())
    r.leadership(False)
    r.leadership(False)  # no change, no record
    r.leadership(True)
    flush(r, source)
    cmd = records(tmp_path, "cmd")
    assert cmd == [
        {
            "k": "cmd",
            "at": clock.now(),
            "command": "failover",
            "to": "us-west-2",
            "force": True,
            "by": "alice",
            "reason": "db",
            "source": "cli",
            "user": "alice@host",
            "id": "cmd-1",
        }
    ]
    assert [x["on"] for x in records(tmp_path, "leader")] == [False, True]


# -- files -----------------------------------------------------------------------------------


def test_every_file_begins_with_a_snapshot_and_files_are_cut_every_segment(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    source = FakeSource()
    source.book.observe(Observation("shop", "us-west-2", "api", "local", True, clock.now()))
    r = recorder(tmp_path, clock, segment=30.0)
    r.attach(source)
    for _ in range(70):
        clock.advance(1.0)
        flush(r, source)
    files = segments(tmp_path / "shop")
    # The first file is cut short, by a share of the segment fixed by the service's name
    # (services cut at staggered times); then every segment.
    starts = [round(start - files[0][0]) for start, _ in files]
    assert starts[0] == 0 and 15 <= starts[1] <= 30
    assert starts[2] - starts[1] == 30 and len(starts) == 3
    for _, path in files:
        header = read_lines(path)[0]
        assert header["k"] == "segment" and header["v"] == 1 and header["node"] == "node-a"
        assert header["cells"] == [["us-west-2", "api", "local", VirtualClock().now(), True, ""]]
        assert header["state"]["active_region"] == "us-east-1"


def test_incidents_open_on_the_first_suspect_and_close_after_a_steady_spell(
    tmp_path: Path,
) -> None:
    clock = VirtualClock()
    source = FakeSource()
    r = recorder(tmp_path, clock, after=10.0)
    r.attach(source)
    clock.advance(5.0)
    r.decision(decision(clock, Phase.STEADY))
    opened = clock.advance(5.0) or clock.now()
    r.decision(decision(clock, Phase.SUSPECT))
    clock.advance(5.0)
    r.decision(decision(clock, Phase.BLOCKED))
    clock.advance(5.0)
    r.decision(decision(clock, Phase.STEADY))
    clock.advance(5.0)
    flush(r, source)
    assert read_incidents(tmp_path / "shop" / "incidents.jsonl") == [(opened, None)]
    clock.advance(5.0)
    flush(r, source)  # steady for 10s: over
    assert read_incidents(tmp_path / "shop" / "incidents.jsonl") == [(opened, clock.now())]
    assert [d["phase"] for d in records(tmp_path, "dec")] == [
        "steady",
        "suspect",
        "blocked",
        "steady",
    ]


def test_a_restart_goes_on_with_an_open_incident_and_says_so(tmp_path: Path) -> None:
    clock = VirtualClock()
    source = FakeSource()
    first = recorder(tmp_path, clock)
    first.attach(source)
    r_opened = clock.now()
    first.decision(decision(clock, Phase.SUSPECT))
    flush(first, source)
    # The process dies; a new one starts on the same folder.
    clock.advance(30.0)
    second = recorder(tmp_path, clock, after=10.0)
    second.attach(source)
    flush(second, source)
    header = read_lines(segments(tmp_path / "shop")[-1][1])[0]
    assert header["restart"] is True
    second.decision(decision(clock, Phase.STEADY))
    clock.advance(10.0)
    flush(second, source)
    assert read_incidents(tmp_path / "shop" / "incidents.jsonl") == [(r_opened, clock.now())]


def test_torn_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "1.jsonl"
    path.write_text('{"k": "obs", "at": 1}\n[1, 2]\nnot json\n{"k": "lag", "at": 2, "r": "us-w')
    assert read_lines(path) == [{"k": "obs", "at": 1}]
    incidents = tmp_path / "incidents.jsonl"
    incidents.write_text('{"k":"open","at":5}\n{"k":"open","at":6}\n{"k":"close","at":9}\n{"k":"op')
    assert read_incidents(incidents) == [(5.0, 9.0)]


def test_pruning_keeps_the_lead_and_incident_windows_and_caps_the_total(tmp_path: Path) -> None:
    service = tmp_path / "shop"
    service.mkdir()
    now = 10_000.0

    def file(start: float, size: int) -> Path:
        path = service / f"{round(start * 1000):013d}.jsonl"
        path.write_text("x" * (size - 1) + "\n")
        return path

    old = file(1_000, 100)  # long ago, no incident: goes
    before = file(3_000, 100)  # runs into the incident's window (until 5,000): kept
    incident = file(5_000, 100)  # inside an incident's window: kept
    after = file(5_600, 100)  # ends before the lead, after the incident: goes
    recent = file(9_000, 100)  # ends inside the lead (the next starts at 9,500): kept
    current = file(9_500, 100)  # being written: always kept
    windows = {"shop": [(4_900.0, 5_500.0)]}
    left = prune(
        tmp_path, now=now, lead=600.0, max_bytes=1 << 20, current={current}, windows=windows
    )
    kept = [p.exists() for p in (old, before, incident, after, recent, current)]
    assert kept == [False, True, True, False, True, True]
    assert left == 400
    # Over the cap: the oldest go first, never the current file.
    left = prune(tmp_path, now=now, lead=600.0, max_bytes=150, current={current}, windows=windows)
    assert [p.exists() for p in (before, incident, recent, current)] == [False, False, False, True]
    assert left == 100


def test_a_service_folder_survives_a_full_queue_by_dropping_and_counting(tmp_path: Path) -> None:
    import orchestrator.daemon.flight_recorder as fr

    clock = VirtualClock()
    source = FakeSource()
    r = recorder(tmp_path, clock)
    r.attach(source)
    counted = REGISTRY.get_sample_value("failoverd_flight_recorder_dropped_total") or 0.0
    cap, fr.PENDING_CAP = fr.PENDING_CAP, 3
    try:
        for i in range(5):
            r.command("shop", OperatorCommand(Command.PAUSE, reason=str(i)), clock.now())
    finally:
        fr.PENDING_CAP = cap
    assert r.dropped == 2
    assert REGISTRY.get_sample_value("failoverd_flight_recorder_dropped_total") == counted + 2
    batch = r.tick(source)  # the first pass prunes: the size on disk is exported
    assert batch.prune
    r.write(batch)
    assert r.bytes_on_disk > 0
    assert REGISTRY.get_sample_value("failoverd_flight_recorder_bytes") == r.bytes_on_disk


# -- the whole loop ---------------------------------------------------------------------------


async def test_a_recorded_outage_replays_to_the_same_decisions_and_diffs_later_when_slower(
    controller: Controller,
    store: SqliteStore,
    clock: VirtualClock,
    action: ScriptedAction,
    policy_dir: Path,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "flight-recorder" / "node-a"
    r = recorder(folder, clock, lead=60.0, after=20.0, segment=30.0)
    r.attach(controller)
    controller.recorder = r
    controller.on_decision.append(r.decision)
    action.durations["move"] = 3.0
    outage_at = moved_at = None
    async with running(controller):
        await eventually(controller.is_leader, "the lease")
        for second in range(200):
            clock.advance(1.0)
            down = second >= 100
            see(controller, clock, "us-east-1", not down)
            see(controller, clock, "us-west-2", True)
            if second == 80:
                await controller.command(
                    "shop", OperatorCommand(Command.PAUSE, by="alice", reason="look around")
                )
            if second == 90:
                await controller.command("shop", OperatorCommand(Command.RESUME, by="alice"))
            await controller.evaluate_all()
            snap = controller.snapshot("shop")
            assert snap is not None
            if down and outage_at is None:
                outage_at = clock.now()
            if moved_at is None and snap.run is not None:
                moved_at = snap.run.decided_at
            if second % 5 == 0:
                flush(r, controller)
        await eventually(
            lambda: controller.snapshot("shop").active_region == "us-west-2",  # type: ignore[union-attr]
            "the failover to finish",
        )
        flush(r, controller)
    assert moved_at is not None and outage_at is not None
    incidents = read_incidents(folder / "shop" / "incidents.jsonl")
    assert len(incidents) == 1 and incidents[0][1] is not None  # steady in us-west-2 again

    since, until = window_for(folder, "shop", lead=60.0, now=clock.now())
    assert since == incidents[0][0] - 60.0 and until == incidents[0][1]
    recording = read_recording(folder, "shop", since, until)
    out = tmp_path / "scenarios" / "incident.yaml"
    out.parent.mkdir()
    data = to_scenario(recording, controller.policy_set.policies["shop"], "../policies/shop.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    # It reads like a hand-written scenario, and names what the daemon did.
    timeline = data["timeline"]
    assert timeline[0] == {"at": "0s", "probes": {"region": "us-east-1", "state": "up"}}
    assert {"at": "0s", "probes": {"region": "us-west-2", "state": "up"}} in timeline
    assert any(
        e.get("operator") == {"command": "pause", "by": "alice", "reason": "look around"}
        for e in timeline
    )
    # How long the step took in the daemon (the fake action's 3s, on a clock moved by seconds).
    assert any(set(e.get("step", {})) == {"name", "duration"} for e in timeline)
    failover = next(x["failover"] for x in data["expect"] if "failover" in x)
    assert failover["to"] == "us-west-2"
    assert {"failovers": {"count": 1}} in data["expect"]

    # failoverd test: the replay decides the same.
    loaded = load_scenario(out)
    result = Simulation(loaded.scenario, loaded.policy).run()
    assert check(result) == []
    [run] = result.runs
    assert abs((since + run.started_at) - moved_at) <= 1.0
    assert json.dumps(data)  # plain data all the way

    # failoverd diff: the same incident under a longer detection rule fails over later.
    slower = tmp_path / "slower"
    slower.mkdir()
    (slower / "shop.yaml").write_text(
        policy_text().replace("consecutive_failures: 2", "consecutive_failures: 8")
    )
    report = run_diff(str(policy_dir), str(slower), [str(out)])
    [diff] = [d for d in report.diffs if d.file == str(out)]
    assert diff.changed and diff.failing
    assert diff.difference is not None and diff.difference.old is not None
    assert diff.difference.old.action == "failover"
    assert [r.started_at for r in diff.new_runs] == [r.started_at + 6.0 for r in diff.old_runs]
    assert report.exit_code == 1


def test_a_window_from_before_the_first_file_starts_with_what_was_queued_for_it(
    tmp_path: Path,
) -> None:
    # The daemon decided (and observed) before the recorder cut its first file: a window
    # asked from earlier begins with those records, not with the file's later snapshot.
    clock = VirtualClock()
    source = FakeSource()
    r = recorder(tmp_path, clock)
    r.attach(source)
    begin = clock.now()
    for second in range(6):
        clock.advance(1.0)
        for region, ok in (("us-east-1", second < 3), ("us-west-2", True)):
            obs = Observation("shop", region, "api", "local", ok, clock.now())
            source.book.observe(obs, r.observation)
        if second == 0:
            r.decision(decision(clock, Phase.STEADY))
        if second == 4:
            r.decision(
                Decision(
                    "shop",
                    clock.now(),
                    Phase.FAILING_OVER,
                    Action.FAILOVER,
                    "us-east-1",
                    "us-west-2",
                    (Reason.ACTIVE_DOWN,),
                )
            )
            source.state = ServiceState("shop", "us-west-2")
    flush(r, source)  # the first file, cut now: its snapshot shows us-west-2 active
    recording = read_recording(tmp_path, "shop", begin - 600, clock.now())
    assert recording.since == begin + 1.0  # the first observations are inside the window
    assert recording.state is not None and recording.state.active_region == "us-east-1"
    data = to_scenario(recording, POLICY, "shop.yaml")
    assert "start" not in data  # the primary active, no history
    # decided 4s in: the replay may decide up to 6s earlier or 3s later
    assert {"failover": {"to": "us-west-2", "between": ["0s", "7s"]}} in data["expect"]
    downs = [e for e in data["timeline"] if e.get("probes", {}).get("state") == "down"]
    assert [e["at"] for e in downs] == ["3s"]


def test_lag_readings_export_with_the_age_they_had_when_read(tmp_path: Path) -> None:
    text = policy_text() + (
        "replication:\n"
        "  sources: {us-west-2: {type: rds_replica_lag, db_instance: shop-db-usw2}}\n"
        "  interval: 10s\n"
        "  max_age: 4m\n"
    )
    policy = load_policy_text(text, "shop.yaml")
    clock = VirtualClock()
    source = FakeSource()
    r = recorder(tmp_path, clock)
    r.attach(source)
    begin = clock.now()
    flush(r, source)
    for _ in range(3):  # CloudWatch: each datapoint arrives stamped 2 minutes back
        clock.advance(10.0)
        r.lag("shop", "us-west-2", LagReading(5.0, clock.now() - 120.0))
    stopped = clock.now() - 120.0
    for _ in range(3):  # then the metric stops
        clock.advance(10.0)
        r.lag("shop", "us-west-2", LagReading(5.0, stopped))
    flush(r, source)
    data = to_scenario(read_recording(tmp_path, "shop", begin, clock.now()), policy, "s.yaml")
    lags = [(e["at"], e["lag"]) for e in data["timeline"] if "lag" in e]
    assert lags == [
        ("10s", {"region": "us-west-2", "seconds": 5.0, "age": "2m"}),
        ("40s", {"region": "us-west-2", "seconds": 5.0, "frozen": True, "age": "2m10s"}),
    ]

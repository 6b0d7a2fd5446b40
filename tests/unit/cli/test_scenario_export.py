"""``failoverd scenario export``: the window (the latest incident, ``--run``, ``--since`` and
``--until``), the folder and policy found from the daemon's settings, the file it writes (a
valid scenario naming its policy by a relative path), and exit 2 with a reason when nothing
usable is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli.main import main
from orchestrator.daemon.flight_recorder import FlightRecorder
from orchestrator.engine.observation import Observation
from orchestrator.engine.scenario_loader import load_scenario
from orchestrator.engine.state import Decision, Initiator, RunStatus, ServiceState
from orchestrator.engine.vocabulary import Action, Phase, Reason
from orchestrator.policy.yamlsource import Limits
from orchestrator.runbook.rto import RunProgress
from tests.fixtures.clock import VirtualClock
from tests.fixtures.controller import policy_text
from tests.unit.daemon.recorder_support import FakeSource


def progress(clock: VirtualClock, status: RunStatus) -> RunProgress:
    done = status is not RunStatus.RUNNING
    return RunProgress(
        run_id="shop-run-1",
        service="shop",
        kind="failover",
        source="us-east-1",
        target="us-west-2",
        policy_version="v1",
        status=status,
        error="",
        steps=(),
        detected_at=clock.now(),
        decided_at=clock.now(),
        started_at=clock.now(),
        finished_at=clock.now() if done else None,
        rto=900.0,
        elapsed=0.0,
        rto_remaining=900.0,
    )


@pytest.fixture
def deployment(tmp_path: Path) -> tuple[Path, VirtualClock]:
    """A settings file, its policy folder, and the recorder's folder of node-a holding one
    incident: us-east-1 down at 100s, failover at 102s, steady in us-west-2 after."""
    policies = tmp_path / "etc" / "policies"
    policies.mkdir(parents=True)
    (policies / "shop.yaml").write_text(policy_text())
    config = tmp_path / "etc" / "failoverd.yaml"
    settings = {
        "node_id": "node-a",
        "policies": [str(policies)],
        "state": {"path": str(tmp_path / "var" / "state.db")},
        "flight_recorder": {"lead": "1m", "after": "10s"},
    }
    config.write_text(yaml.safe_dump(settings))
    clock = VirtualClock()
    source = FakeSource()
    folder = tmp_path / "var" / "flight-recorder" / "node-a"
    r = FlightRecorder(folder, lead=60.0, after=10.0, segment=60.0, node_id="node-a", clock=clock)
    r.load()
    r.attach(source)

    def decide(phase: Phase, action: Action = Action.NONE, target: str | None = None) -> None:
        reasons = (Reason.ACTIVE_DOWN,) if phase is not Phase.STEADY else ()
        active = source.state.active_region
        r.decision(
            Decision("shop", clock.now(), phase, action, active, target, reasons, Initiator.POLICY)
        )

    decide(Phase.STEADY)
    for second in range(1, 140):
        clock.advance(1.0)
        down = second >= 100
        for region, ok in (("us-east-1", not down), ("us-west-2", True)):
            obs = Observation(
                "shop", region, "api", "local", ok, clock.now(), detail="" if ok else "connect"
            )
            source.book.observe(obs, r.observation)
        if second == 101:
            decide(Phase.FAILING_OVER, Action.FAILOVER, "us-west-2")
            source.progress = progress(clock, RunStatus.RUNNING)
        if second == 103:
            source.progress = progress(clock, RunStatus.SUCCEEDED)
            source.state = ServiceState("shop", "us-west-2")
            decide(Phase.STEADY)
        r.write(r.tick(source))
    return config, clock


def export(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["scenario", "export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_latest_incident_is_written_as_a_scenario(
    deployment: tuple[Path, VirtualClock], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = deployment
    out = tmp_path / "repo" / "policies" / "shop" / "tests" / "incident.yaml"
    out.parent.mkdir(parents=True)
    code, _, err = export(capsys, "--config", str(config), "--service", "shop", "-o", str(out))
    assert code == 0, err
    data = yaml.safe_load(out.read_text())
    assert data["policy"] == "../../../../etc/policies/shop.yaml"
    assert data["scenario"].startswith("shop incident ")
    # from lead (60s) before the incident opened (at 101s) until it closed (steady 10s)
    assert data["duration"] == "1m12s"
    loaded = load_scenario(out)  # a valid scenario, bound to its policy
    assert loaded.policy.service == "shop"
    code = main(["test", str(out)])
    assert code == 0, capsys.readouterr().out
    # the daemon moved 60s in; the replay may decide up to 6s earlier or 3s later
    assert {"failover": {"to": "us-west-2", "between": ["54s", "1m3s"]}} in data["expect"]


def test_run_since_until_and_standard_output(
    deployment: tuple[Path, VirtualClock], capsys: pytest.CaptureFixture[str]
) -> None:
    config, clock = deployment
    code, out, err = export(
        capsys, "--config", str(config), "--service", "shop", "--run", "shop-run-1"
    )
    assert code == 0, err
    assert yaml.safe_load(out)["duration"] == "1m12s"
    start = clock.now() - 139 + 90  # 90s into the record, before the outage
    code, out, err = export(
        capsys,
        "--config",
        str(config),
        "--service",
        "shop",
        "--since",
        f"{start:.0f}",
        "--until",
        f"{start + 20:.0f}",
    )
    assert code == 0, err
    data = yaml.safe_load(out)
    assert data["duration"] == "20s"
    assert {"failovers": {"count": 1}} in data["expect"]
    downs = [e for e in data["timeline"] if e.get("probes", {}).get("state") == "down"]
    assert [e["at"] for e in downs] == ["10s"]


def test_nothing_usable_exits_2_and_says_why(
    deployment: tuple[Path, VirtualClock], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = deployment
    code, _, err = export(capsys, "--config", str(config), "--service", "cart")
    assert code == 2 and "nothing recorded for 'cart'" in err and "recorded: shop" in err
    code, _, err = export(capsys, "--config", str(config), "--service", "shop", "--run", "nope")
    assert code == 2 and "no run 'nope'" in err
    code, _, err = export(capsys, "--config", str(config), "--service", "shop", "--since", "soon")
    assert code == 2 and "expected an RFC 3339 time" in err
    empty = tmp_path / "empty"
    (empty / "shop").mkdir(parents=True)
    (empty / "shop" / "0000000000001.jsonl").write_text("")
    code, _, err = export(
        capsys, "--config", str(config), "--service", "shop", "--folder", str(empty)
    )
    assert code == 2 and "no incident recorded for 'shop'" in err


def test_a_long_recorded_incident_larger_than_a_policy_may_be_still_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon refuses policy files over 256 KiB; an exported incident holding hours of
    observations is bigger and must still be a scenario `failoverd test` reads."""
    (tmp_path / "shop.yaml").write_text(policy_text())
    timeline: list[dict[str, object]] = [
        {"at": "0s", "probes": {"region": "us-west-2", "state": "up"}}
    ]
    # us-east-1's probes alternate every 2 s for 3 h (down at 2 s: this policy moves at once)
    for second in range(0, 3 * 3600, 2):
        state = "up" if (second // 2) % 2 == 0 else "down"
        timeline.append({"at": f"{second}s", "probes": {"region": "us-east-1", "state": state}})
    scenario = {
        "scenario": "shop - a long flap",
        "policy": "shop.yaml",
        "duration": "3h",
        "timeline": timeline,
        "expect": [{"failover": {"to": "us-west-2", "between": ["0s", "10s"]}}],
    }
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    assert path.stat().st_size > Limits().max_bytes
    assert load_scenario(path).scenario.duration == 3 * 3600
    assert main(["test", str(path)]) == 0, capsys.readouterr().out

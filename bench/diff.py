"""Benchmark: ``failoverd diff`` over 100 scenarios of one simulated hour each.

The example policies (webapp, catalog, ledger, reports) are copied twice into a temporary
folder: ``old/`` as they are, ``new/`` with a longer detection rule in every policy (one more
consecutive failure), so that every scenario runs under both versions. 100 scenarios of one
hour each are generated beside the old policies (a fixed random seed; 25 per service): every
region up, then one to three incidents - a region down from everywhere or from one vantage
point, a flap, a recovery, replication lag rising or frozen, the AWS Health API failing, an
operator's failback, a lost leader lease, a failing runbook step.

Measured on one core (pinned), in the same run:

* the simulator: the 100 scenarios under the old policies, skipping idle ticks (what
  ``failoverd test`` and ``diff`` use), against the same with every tick judged (the
  simulator before skipping was added: the baseline), as simulated hours per second of CPU;
* ``failoverd diff old new`` end to end (reading both policy sets and the 100 scenario files,
  200 simulations, the comparison), wall-clock seconds, against the 5 s target.

The last line printed is ``sim_hours_per_s=<n> diff_100x1h_s=<n>``.

    python bench/diff.py [--scenarios N] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.cli.diff import run_diff  # noqa: E402
from orchestrator.engine.scenario_loader import load_scenario  # noqa: E402
from orchestrator.engine.simulator import Simulation  # noqa: E402
from orchestrator.policy.loader import load_policy_file  # noqa: E402

TARGET_S = 5.0
SERVICES = ("webapp", "catalog", "ledger", "reports")
HOUR = 3600


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        return f"not pinned ({exc})"
    return f"pinned to cpu {cpu}"


def _m(seconds: int) -> str:
    return f"{seconds}s"


def timeline(service: str, rng: random.Random) -> list[dict[str, Any]]:
    """Facts for one hour of one service: all up, then one to three incidents."""
    policy = load_policy_file(ROOT / "policies" / service / f"{service}.yaml")
    regions = list(policy.regions)
    primary, standby = regions[0], regions[1]
    vantages = list(policy.vantage_points)
    facts: list[dict[str, Any]] = [
        {"at": "0s", "probes": {"region": r, "state": "up"}} for r in regions
    ]
    if any(s.type == "aws_health" for s in policy.signals):
        facts.append({"at": "0s", "aws_health_api": "available"})
    alarms = [
        (region, name)
        for s in policy.signals
        if s.type == "cloudwatch_alarm"
        for region, names in s.alarms.items()
        for name in names
    ]
    facts += [{"at": "0s", "alarm": {"name": n, "state": "OK"}} for _, n in alarms]
    replicated = list(policy.replication.sources) if policy.replication else []
    facts += [{"at": "0s", "lag": {"region": r, "seconds": 2}} for r in replicated]
    steps = [s.name for s in policy.runbooks.failover]
    at = rng.randrange(300, 1200)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(
            ["outage", "outage", "partial", "flap", "lag", "health", "alarm", "leader", "step"]
        )
        length = rng.randrange(120, 900)
        if kind == "outage":
            facts.append({"at": _m(at), "probes": {"region": primary, "state": "down"}})
            if rng.random() < 0.6:
                facts.append({"at": _m(at + length), "probes": {"region": primary, "state": "up"}})
                if rng.random() < 0.4:
                    when = at + length + rng.randrange(300, 900)
                    facts.append({"at": _m(when), "operator": {"command": "failback"}})
                    facts.append({"at": _m(when + 60), "operator": {"command": "approve"}})
        elif kind == "partial":
            vantage = rng.choice(vantages)
            facts.append(
                {"at": _m(at), "probes": {"region": primary, "vantage": vantage, "state": "down"}}
            )
            facts.append({"at": _m(at + length), "probes": {"region": primary, "state": "up"}})
        elif kind == "flap":
            period = rng.choice([10, 20, 40])
            facts.append(
                {"at": _m(at), "probes": {"region": primary, "state": {"flap": f"{period}s"}}}
            )
            facts.append({"at": _m(at + length), "probes": {"region": primary, "state": "up"}})
        elif kind == "lag" and replicated:
            region = rng.choice(replicated)
            lag: dict[str, Any] = {"region": region, "seconds": rng.choice([30, 600, None])}
            if rng.random() < 0.3:
                lag["frozen"] = True
            facts.append({"at": _m(at), "lag": lag})
            facts.append({"at": _m(at + 60), "probes": {"region": primary, "state": "down"}})
        elif kind == "health":
            facts.append({"at": _m(at), "aws_health_api": "unavailable"})
            facts.append({"at": _m(at + length), "aws_health_api": "available"})
            facts.append({"at": _m(at + 30), "probes": {"region": standby, "state": "slow"}})
            facts.append({"at": _m(at + length), "probes": {"region": standby, "state": "up"}})
        elif kind == "alarm" and alarms:
            region, name = rng.choice(alarms)
            facts.append({"at": _m(at), "alarm": {"name": name, "state": "ALARM"}})
            facts.append({"at": _m(at + length), "alarm": {"name": name, "state": "OK"}})
        elif kind == "leader":
            facts.append({"at": _m(at), "leader": False})
            facts.append({"at": _m(at + 30), "probes": {"region": primary, "state": "down"}})
            facts.append({"at": _m(at + length), "leader": True})
        else:
            facts.append({"at": _m(at), "step": {"name": rng.choice(steps), "outcome": "fail"}})
            facts.append({"at": _m(at + 30), "probes": {"region": primary, "state": "down"}})
            facts.append({"at": _m(at + length), "operator": {"command": "resume"}})
        at += length + rng.randrange(300, 900)
        if at > HOUR - 300:
            break
    facts = [f for f in facts if int(f["at"][:-1]) <= HOUR]
    return sorted(facts, key=lambda f: int(f["at"][:-1]))


def build(workdir: Path, count: int, seed: int) -> tuple[Path, Path, list[Path]]:
    """old/ and new/ policies, and ``count`` one-hour scenarios beside the old ones."""
    rng = random.Random(seed)
    old, new = workdir / "old", workdir / "new"
    files: list[Path] = []
    for service in SERVICES:
        for side in (old, new):
            (side / service).mkdir(parents=True)
            shutil.copy(ROOT / "policies" / service / f"{service}.yaml", side / service)
        data = yaml.safe_load((old / service / f"{service}.yaml").read_text())
        data["detection"]["consecutive_failures"] = (
            data["detection"].get("consecutive_failures", 3) + 1
        )
        (new / service / f"{service}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    for i in range(count):
        service = SERVICES[i % len(SERVICES)]
        folder = old / service / "tests"
        folder.mkdir(exist_ok=True)
        scenario = {
            "scenario": f"{service} bench {i:03d}",
            "policy": f"../{service}.yaml",
            "duration": "1h",
            "timeline": timeline(service, rng),
            "expect": [{"failovers": {"max": 10}}],
        }
        path = folder / f"bench_{i:03d}.yaml"
        path.write_text(yaml.safe_dump(scenario, sort_keys=False))
        files.append(path)
    return old, new, files


def simulate_all(files: list[Path], every_tick: bool) -> tuple[float, int]:
    """CPU seconds to simulate every scenario (loaded beforehand), and moments judged."""
    loaded = [load_scenario(f) for f in files]
    start = time.process_time()
    moments = 0
    for item in loaded:
        result = Simulation(
            item.scenario, item.policy, item.policy_version, every_tick=every_tick
        ).run()
        moments += len(result.moments)
    return time.process_time() - start, moments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=100, help="scenarios (default 100)")
    parser.add_argument("--seed", type=int, default=16, help="random seed (default 16)")
    args = parser.parse_args(argv)
    pinned = pin_to_one_core()
    print(f"python {platform.python_version()} on {platform.machine()}, {pinned}")
    with tempfile.TemporaryDirectory(prefix="failoverd-bench-diff-") as tmp:
        old, new, files = build(Path(tmp), args.scenarios, args.seed)
        hours = args.scenarios  # one hour each
        dense_s, dense_moments = simulate_all(files, every_tick=True)
        skip_s, skip_moments = simulate_all(files, every_tick=False)
        baseline = hours / dense_s
        rate = hours / skip_s
        print(
            f"simulator, {hours} scenarios x 1h: every tick {dense_s:.2f} s CPU"
            f" ({dense_moments} moments judged, {baseline:.1f} sim h/s);"
            f" skipping idle ticks {skip_s:.2f} s CPU ({skip_moments} moments,"
            f" {rate:.1f} sim h/s) = {rate / baseline:.1f}x the baseline"
        )
        runs = []
        for _ in range(3):
            wall = time.perf_counter()
            cpu = time.process_time()
            report = run_diff(str(old), str(new))
            runs.append((time.perf_counter() - wall, time.process_time() - cpu))
        wall_s, cpu_s = min(runs)
        print(
            f"failoverd diff old new: {report.summary.text()}; best of 3: {wall_s:.2f} s wall,"
            f" {cpu_s:.2f} s CPU (target under {TARGET_S:g} s:"
            f" {'met' if wall_s < TARGET_S else 'MISSED'})"
        )
        assert report.summary.scenarios == args.scenarios, report.summary
    print(f"baseline_every_tick_sim_hours_per_s={baseline:.1f} speedup={rate / baseline:.1f}")
    print(f"sim_hours_per_s={rate:.1f} diff_100x1h_s={wall_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak: the sandbox with 100 services under a fault every few minutes, for a set time.

``failoverd sandbox``'s world (moto, the Health emulator, one endpoint per region,
mosquitto with two signing agents, the real daemon) runs the example policies plus
enough small ones (http probes of the region endpoints from the daemon and both agents,
quorum 2, automatic failback after 30 s, a one-step runbook) to make ``--services``. Every
``--fault-every`` seconds one fault from a fixed cycle is applied for ``--fault-hold``
seconds, then cleared: us-east-1 down, an observer partition (only the daemon's own probes
of us-east-1 fail), us-west-2 down, us-east-1 slow, us-east-1 flapping, Route 53 throttled,
30% of AWS calls failing.

Measured on the daemon process, after a warm-up (the first fault cycle) and at the end, each
in a quiet moment with every service settled: its RSS (``/proc/<pid>/status``), its open
file descriptors (``/proc/<pid>/fd``) and its live asyncio tasks
(``failoverd_asyncio_tasks``). Judged from the fault timeline and the daemon's journal: a
*wrong decision* is a run started away from a region that was not failing (an observer
partition included), a run to a region that was failing or flapping, or a small service
(no guard in its way) still active in a region at the end of that region's outage.

The last line: ``rss_growth_pct=<n> fd_growth=<n> tasks_growth=<n> decisions_wrong=<n>``
(targets: RSS growth under 5%, 0, 0, 0). Everything is on 127.0.0.1 and stopped at exit.

    python bench/soak.py [--minutes 20 | --hours H] [--services 100] [--fault-every 180]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.sandbox.runner import Sandbox  # noqa: E402
from orchestrator.store.base import JournalRecord, JournalStatus  # noqa: E402
from orchestrator.store.sqlite import SqliteStore  # noqa: E402
from orchestrator.telemetry import configure_logging  # noqa: E402

REGIONS = ("us-east-1", "us-west-2")
# (fault, argument, is the region failing for the services' probes)
CYCLE: tuple[tuple[str, str, bool], ...] = (
    ("region-down", "us-east-1", True),
    ("local-down", "us-east-1", False),  # an observer partition: nothing may move
    ("region-down", "us-west-2", True),
    ("slow", "us-east-1", True),
    ("flap", "us-east-1", False),  # never healthy; never a target; moving away is allowed
    ("throttle", "route53", False),
    ("aws-errors", "30%", False),
)
CLEAR = {
    "region-down": ("region-up", None),
    "local-down": ("region-up", None),
    "slow": ("region-up", None),
    "flap": ("region-up", None),
    "throttle": ("throttle", "off"),
    "aws-errors": ("aws-errors", "off"),
}
SETTLE_S = 240.0  # the longest a quiet sandbox may take to settle (failbacks after 30 s)
DETECT_SLACK_S = 30.0  # a run may start this long after its cause ended (detection, guards)
HTTP = aiohttp.ClientTimeout(total=10)

SMALL_POLICY = """\
service: soak{index:03d}
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
vantage_points: {vantages}
detection: {{interval: 5s, timeout: 2s, consecutive_failures: 3, quorum: {quorum},
  staleness: 30s}}
signals:
  - name: api
    type: http
    targets: {{us-east-1: "http://127.0.0.1:{east}/healthz",
              us-west-2: "http://127.0.0.1:{west}/healthz"}}
    expect_status: [200]
guards:
  cooldown: 0s
  max_failovers: {{count: 20, window: 10m}}
  failback: {{mode: automatic, stable_period: 30s}}
runbooks:
  failover:
    - {{name: move, action: wait, params: {{duration: 1s}}}}
  failback:
    - {{name: move-back, action: wait, params: {{duration: 1s}}}}
"""


class SoakError(Exception):
    """The soak could not run; the message says why."""


@dataclass(frozen=True)
class Fault:
    name: str
    arg: str
    failing: bool  # the region fails for every vantage point
    start: float  # wall clock
    end: float


@dataclass
class Sample:
    rss_kb: int
    fds: int
    tasks: int


@dataclass
class Soak:
    sandbox: Sandbox
    services: int  # how many the daemon must show (the sandbox's examples and the small ones)
    cycle: tuple[tuple[str, str, bool], ...] = CYCLE
    faults: list[Fault] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.sandbox.pids["daemon"]

    async def status(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.sandbox.api_url}/v1/status") as response:
            body = await response.json()
        if response.status != 200 or not isinstance(body, dict):
            raise SoakError(f"/v1/status answered {response.status}")
        return body

    async def settled(self, http: aiohttp.ClientSession, within: float) -> dict[str, str]:
        """Wait until every service is steady with no run going; their active regions."""
        deadline = time.monotonic() + within
        last: Any = None
        while time.monotonic() < deadline:
            try:
                body = await self.status(http)
                services = body["services"]
                last = [
                    s for s in services if s["phase"] != "steady" or s["run_status"] == "running"
                ]
                if len(services) == self.services and not last:
                    return {s["name"]: s["active_region"] for s in services}
            except (aiohttp.ClientError, TimeoutError, SoakError, ValueError) as exc:
                last = repr(exc)
            await asyncio.sleep(2.0)
        raise SoakError(f"not settled within {within:.0f}s: {str(last)[:600]}")

    def _proc(self) -> tuple[int, int]:
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        if found is None:
            raise SoakError(f"no VmRSS for pid {self.pid}")
        return int(found[1]), len(list(Path(f"/proc/{self.pid}/fd").iterdir()))

    async def sample(self, http: aiohttp.ClientSession) -> Sample:
        rss, fds = await asyncio.to_thread(self._proc)
        async with http.get(f"{self.sandbox.api_url}/metrics") as response:
            text = await response.text()
        found = re.search(r"^failoverd_asyncio_tasks (\S+)$", text, re.MULTILINE)
        return Sample(rss, fds, int(float(found[1])) if found else -1)

    async def samples(self, http: aiohttp.ClientSession, n: int = 10) -> Sample:
        """``n`` samples a second apart: the median RSS (one GC cycle does not decide), the
        fewest fds and tasks (probes in flight come and go with their sockets and tasks; a
        leak raises the floor)."""
        taken = []
        for _ in range(n):
            taken.append(await self.sample(http))
            await asyncio.sleep(1.0)
        return Sample(
            int(statistics.median(s.rss_kb for s in taken)),
            min(s.fds for s in taken),
            min(s.tasks for s in taken),
        )

    async def fault(self, http: aiohttp.ClientSession, index: int, hold: float) -> None:
        name, arg, failing = self.cycle[index % len(self.cycle)]
        start = time.time()
        say(f"fault {name} {arg}: {await self.sandbox.faults.apply(name, arg)}")
        await asyncio.sleep(hold)
        if failing:  # every small service must have left the region by now
            body = await self.status(http)
            stuck = [
                s["name"]
                for s in body["services"]
                if s["name"].startswith("soak") and s["active_region"] == arg
            ]
            self.missed += [f"{s} still in {arg} after {hold:.0f}s of {name}" for s in stuck]
        clear, clear_arg = CLEAR[name]
        await self.sandbox.faults.apply(clear, clear_arg or arg)
        self.faults.append(Fault(name, arg, failing, start, time.time()))
        say(f"cleared {name} {arg}")

    def judge(self, runs: list[JournalRecord]) -> list[str]:
        """Every run_started against the fault timeline (see the module docstring)."""
        wrong: list[str] = []
        for r in runs:
            causes = [
                f
                for f in self.faults
                if f.start - 1.0 <= r.at <= f.end + DETECT_SLACK_S and f.arg in REGIONS
            ]
            away_ok = any(
                f.arg == r.source_region and (f.failing or f.name == "flap") for f in causes
            )
            into_bad = any(
                f.arg == r.target_region and (f.failing or f.name == "flap") and f.end >= r.at
                for f in causes
            )
            kind = r.kind
            at = time.strftime("%H:%M:%S", time.localtime(r.at))
            if kind == "failover" and not away_ok:
                why = f"failover away from healthy {r.source_region} at {at}"
                wrong.append(f"{r.service} {r.run_id}: {why}")
            if into_bad:
                why = f"{kind} into failing {r.target_region} at {at}"
                wrong.append(f"{r.service} {r.run_id}: {why}")
        return wrong


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def small_policies(total: int) -> Any:
    """The hook that tops the sandbox's examples up to ``total`` services."""

    def write(folder: Path, ports: dict[str, int], vantages: list[str]) -> None:
        quorum = 2 if len(vantages) > 1 else 1
        examples = len(list(folder.glob("*.yaml")))
        for i in range(max(0, total - examples)):
            text = SMALL_POLICY.format(
                index=i,
                vantages="[" + ", ".join(vantages) + "]",
                quorum=quorum,
                east=ports["us-east-1"],
                west=ports["us-west-2"],
            )
            (folder / f"soak{i:03d}.yaml").write_text(text, encoding="utf-8")

    return write


async def run(args: argparse.Namespace) -> int:
    duration = args.hours * 3600 if args.hours else args.minutes * 60
    workdir = Path(tempfile.mkdtemp(prefix="failoverd-soak-"))
    sandbox = Sandbox(port=0, agents=True, workdir=workdir, out=sys.stderr)
    sandbox.extra_policies = small_policies(args.services)
    cycle = CYCLE
    if args.faults:
        names = args.faults.split(",")
        cycle = tuple(c for c in CYCLE if c[0] in names)
        if not cycle:
            raise SystemExit(f"--faults: none of {names} is in the cycle")
    soak = Soak(sandbox, 0, cycle)
    started = time.monotonic()
    try:
        say(f"starting the sandbox with {args.services} services in {workdir}")
        await sandbox.start()
        soak.services = len(list((workdir / "policies").glob("*.yaml")))
        # One connection per request: a keep-alive connection of ours is a task in the
        # daemon (aiohttp's handler), and our pool holding one more at the end than at the
        # baseline read as tasks_growth=1 (seen: the daemon's own tasks unchanged).
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=HTTP, connector=connector) as http:
            await soak.settled(http, SETTLE_S)
            say("settled; warm-up: the first fault")
            index = 0
            await soak.fault(http, index, args.fault_hold)
            index += 1
            await soak.settled(http, SETTLE_S)
            base = await soak.samples(http)
            say(f"baseline: rss {base.rss_kb} kB, fds {base.fds}, tasks {base.tasks}")
            while time.monotonic() - started + args.fault_every < duration:
                next_at = time.monotonic() + args.fault_every
                await soak.fault(http, index, args.fault_hold)
                index += 1
                await soak.settled(http, SETTLE_S)
                now = await soak.sample(http)
                say(f"after {index} faults: rss {now.rss_kb} kB, fds {now.fds}, tasks {now.tasks}")
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await soak.settled(http, SETTLE_S)
            end = await soak.samples(http)
        db = workdir / "state.db"
        store = await SqliteStore.open(db)
        try:
            records = list(await store.read_journal(limit=1_000_000))
        finally:
            await store.close()
        runs = [r for r in records if r.status is JournalStatus.RUN_STARTED]
        wrong = soak.judge(runs) + soak.missed
        for line in wrong:
            say(f"WRONG: {line}")
        say(
            f"{index} faults, {len(runs)} runs, {len(records)} journal records in"
            f" {(time.monotonic() - started) / 60:.1f} min; end: rss {end.rss_kb} kB, fds"
            f" {end.fds}, tasks {end.tasks}"
        )
        growth = 100.0 * (end.rss_kb - base.rss_kb) / base.rss_kb
        print(
            f"rss_growth_pct={growth:.1f} fd_growth={end.fds - base.fds}"
            f" tasks_growth={end.tasks - base.tasks} decisions_wrong={len(wrong)}",
            flush=True,
        )
        return 0
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    finally:
        await sandbox.aclose()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=20.0, help="how long (default 20)")
    length.add_argument("--hours", type=float, help="how long, in hours")
    parser.add_argument("--services", type=int, default=100, help="services (default 100)")
    parser.add_argument("--fault-every", type=float, default=180.0, help="seconds between faults")
    parser.add_argument("--fault-hold", type=float, default=60.0, help="seconds each fault lasts")
    parser.add_argument(
        "--faults", help="only these faults of the cycle, comma-separated (e.g. flap,slow)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    if args.services < 1:
        parser.error("--services must be at least 1 (the sandbox's examples count)")
    configure_logging("warning")
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the whole daemon, end to end, on loopback.

1. **Detection and failover in the sandbox** (1 s probe interval, 3 consecutive failures, the
   sandbox's defaults): ``failoverd sandbox --demo --port 0`` is run ``--runs`` times (a
   fresh sandbox each time: the reset between outages), and its last line is parsed:
   ``detect_s`` is fault -> the run's detection (the daemon's run record), ``failover_s`` is
   decision -> traffic moved, as a DNS query for the service's name first answers the
   standby. Targets: detection within interval x failures + 0.5 s = 3.5 s; failover under 2 s.
2. **Memory with 1,000 services**: that many small policies (one TCP probe per region to a
   loopback listener this script runs, vantage point local, quorum 1) are loaded by
   ``failoverd run`` (state in a temp dir, API on port 0, engine tick 1 s). Once the daemon
   says READY=1 on a fake ``NOTIFY_SOCKET`` and its probes have reached the listener for
   every service twice over, VmRSS is read from ``/proc/<pid>/status``. Target: < 150 MB.

Everything listens on 127.0.0.1 and is stopped before exit; the whole run is bounded
(about 90 s on 2 cores). The last two lines are ``rss_mb_1000_services=<n>`` and
``detect_s=<median> failover_s=<median>``.

``--control-plane-down`` measures the data-plane path instead (issue 14):
``failoverd sandbox --demo --control-plane-down`` — us-east-1 down with its control planes
(every us-east-1 API and Route 53's API failing, its ARC endpoint blackholed), the storefront
failing over by ARC routing controls — ``--runs`` times, then the same with 4 of the 5 ARC
cluster endpoints blackholed (``--arc-endpoints-down 4``). From each demo: ``detect_s`` (fault
-> decision), ``failover_s`` (decision -> routing controls set, as the ARC cluster emulator
saw the standby's control turn On) and ``dns_s`` (decision -> the DNS answer changed). The
4-endpoints-down series is reported as a ratio to the first (the baseline, same run).
Targets: failover_s < 2, and < 6 with 4 endpoints down. Last line:
``detect_s=<median> failover_s=<median> dns_s=<median>`` (the baseline series); the line
before it, the same for 4 endpoints down.

    python bench/e2e.py [--runs N] [--services N]
    python bench/e2e.py --control-plane-down [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
FAILOVERD = [sys.executable, "-m", "orchestrator"]
INTERVAL, FAILURES = 1.0, 3  # the sandbox policy's detection
DETECT_TARGET_S = INTERVAL * FAILURES + 0.5
FAILOVER_TARGET_S = 2.0
RSS_TARGET_MB = 150.0
DEMO_DEADLINE_S = 45.0  # passed to --demo; the subprocess gets a little more to stop
READY_DEADLINE_S = 60.0  # 1,000 policies to parse and plan on 2 cores
PROBE_ROUNDS = 2  # probe rounds seen at the listener before RSS is read
ROUNDS_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0
PROBE_INTERVAL = "5s"  # per service: 1,000 services x 2 regions / 5 s = 400 probes/s
LAST_LINE = re.compile(
    r"demo: failover to \S+ complete, detect_s=(?P<detect>[\d.]+)"
    r" failover_s=(?P<failover>[\d.]+) rto_budget_s=\d+( path=\S+)?"
)
NUMBERS = re.compile(
    r"demo: numbers detect_s=(?P<detect>[\d.]+) flip_s=(?P<flip>[\d.]+) dns_s=(?P<dns>[\d.]+)"
    r" flip_step_s=(?P<step>[\d.]+)"
)
DATA_PLANE_TARGET_S = 2.0
DATA_PLANE_4_DOWN_TARGET_S = 6.0

POLICY = """\
service: svc{index:04d}
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
vantage_points: [local]
detection: {{interval: {interval}, timeout: 1s, consecutive_failures: 3, quorum: 1, \
staleness: 1m}}
signals:
  - name: db
    type: tcp
    targets: {{us-east-1: "127.0.0.1:{port}", us-west-2: "127.0.0.1:{port}"}}
runbooks:
  failover:
    - name: move
      action: wait
      params: {{duration: 1s}}
"""


class BenchError(Exception):
    """A part of the benchmark could not run; the message says which and why."""


# -- 1. detection and failover -------------------------------------------------------------
@dataclass(frozen=True)
class DemoRun:
    detect_s: float
    failover_s: float


def _demo(extra: list[str]) -> tuple[list[str], re.Match[str]]:
    """One ``sandbox --demo`` with ``extra`` options: its output lines and last-line match."""
    try:
        done = subprocess.run(
            [
                *FAILOVERD,
                "sandbox",
                "--demo",
                "--port",
                "0",
                "--deadline",
                str(DEMO_DEADLINE_S),
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=DEMO_DEADLINE_S + 30,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the demo did not finish within {exc.timeout:.0f}s") from None
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1]) if lines else None
    if done.returncode != 0 or match is None:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise BenchError(f"the demo failed (exit {done.returncode}):\n{tail}")
    return lines, match


def demo_once() -> DemoRun:
    """One ``sandbox --demo``: a fresh world, one outage of us-east-1, its numbers."""
    _, match = _demo([])
    return DemoRun(float(match["detect"]), float(match["failover"]))


@dataclass(frozen=True)
class DataPlaneRun:
    detect_s: float
    failover_s: float  # decision -> routing controls set
    dns_s: float  # decision -> DNS answered the standby
    flip_step_s: float  # of failover_s: the flip step's start -> routing controls set


def data_plane_once(arc_endpoints_down: int = 0) -> DataPlaneRun:
    """One ``sandbox --demo --control-plane-down`` (optionally with more ARC endpoints
    blackholed, N of 5 in all): its numbers from the demo's ``numbers`` line."""
    extra = ["--control-plane-down"]
    if arc_endpoints_down:
        extra += ["--arc-endpoints-down", str(arc_endpoints_down)]
    lines, _ = _demo(extra)
    found = [m for m in map(NUMBERS.fullmatch, lines) if m]
    if not found:
        raise BenchError("the data-plane demo printed no `demo: numbers` line")
    m = found[-1]
    return DataPlaneRun(float(m["detect"]), float(m["flip"]), float(m["dns"]), float(m["step"]))


def data_plane_series(runs: int, arc_endpoints_down: int, label: str) -> DataPlaneRun:
    results: list[DataPlaneRun] = []
    for i in range(runs):
        run = data_plane_once(arc_endpoints_down)
        results.append(run)
        print(
            f"{label} run {i + 1}: detect_s={run.detect_s:.2f} failover_s={run.failover_s:.2f}"
            f" dns_s={run.dns_s:.2f} (the flip step itself: {run.flip_step_s:.2f}s)",
            flush=True,
        )
    return DataPlaneRun(
        statistics.median(r.detect_s for r in results),
        statistics.median(r.failover_s for r in results),
        statistics.median(r.dns_s for r in results),
        statistics.median(r.flip_step_s for r in results),
    )


def control_plane_down(runs: int) -> int:
    """The data-plane path with us-east-1's control planes down (see the docstring)."""
    try:
        base = data_plane_series(runs, 0, "control planes down")
        down = data_plane_series(runs, 4, "4 of 5 ARC endpoints down too")
    except BenchError as exc:
        print(f"e2e: {exc}", file=sys.stderr)
        return 1
    met = "met" if base.failover_s < DATA_PLANE_TARGET_S else "MISSED"
    met4 = "met" if down.failover_s < DATA_PLANE_4_DOWN_TARGET_S else "MISSED"
    ratio = down.failover_s / base.failover_s if base.failover_s > 0 else float("inf")
    print(
        f"median, control planes down: failover_s={base.failover_s:.2f}"
        f" (target < {DATA_PLANE_TARGET_S:g}: {met}) dns_s={base.dns_s:.2f};"
        f" the flip step itself {base.flip_step_s:.2f}s, the steps before it the rest"
    )
    print(
        f"median, 4 of 5 ARC endpoints down too: failover_s={down.failover_s:.2f}"
        f" (target < {DATA_PLANE_4_DOWN_TARGET_S:g}: {met4}) dns_s={down.dns_s:.2f};"
        f" the flip step itself {down.flip_step_s:.2f}s; {ratio:.2f}x the baseline"
    )
    print(
        f"arc_endpoints_down=4 detect_s={down.detect_s:.2f} failover_s={down.failover_s:.2f}"
        f" dns_s={down.dns_s:.2f}"
    )
    print(
        f"detect_s={base.detect_s:.2f} failover_s={base.failover_s:.2f} dns_s={base.dns_s:.2f}",
        flush=True,
    )
    return 0


# -- 2. memory with many services ----------------------------------------------------------
class TcpListener:
    """A loopback TCP port that accepts and closes every connection, counting them: the
    probes' target, and the witness that they are running. ``close`` is idempotent."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self._sock.settimeout(0.2)  # so that the thread sees ``close`` promptly
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-target", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def _wait(check: object, what: str, within: float, proc: subprocess.Popen[bytes]) -> None:
    assert callable(check)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise BenchError(f"the daemon exited ({proc.returncode}) before {what}")
        time.sleep(0.1)
    raise BenchError(f"timed out after {within:.0f}s waiting for {what}")


def _vmrss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


def rss_with_services(services: int) -> float:
    """The daemon's VmRSS (MB) with ``services`` policies loaded and probing."""
    workdir = Path(tempfile.mkdtemp(prefix="fo-e2e-", dir="/tmp"))  # short: a unix socket
    listener = TcpListener()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    proc: subprocess.Popen[bytes] | None = None
    try:
        policies = workdir / "policies"
        policies.mkdir()
        for i in range(services):
            text = POLICY.format(index=i, port=listener.port, interval=PROBE_INTERVAL)
            (policies / f"svc{i:04d}.yaml").write_text(text)
        config = workdir / "failoverd.yaml"
        config.write_text(
            f"node_id: bench\npolicies: [{policies}]\nstate: {{path: {workdir / 'state.db'}}}\n"
            "engine: {tick: 1s}\nleader: {ttl: 3s}\nhttp: {bind: 127.0.0.1, port: 0}\n"
            "log: {level: warning}\n"
        )
        address = str(workdir / "notify")
        notify.bind(address)
        notify.settimeout(0.1)
        messages: list[str] = []

        def ready() -> bool:
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode(errors="replace"))
            return any("READY=1" in m for m in messages)

        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "FAILOVERD_"))  # no real account, no user overrides
        }
        env.update(NOTIFY_SOCKET=address, AWS_ACCESS_KEY_ID="testing")
        env.update(AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        log = (workdir / "daemon.log").open("wb")
        with log:
            proc = subprocess.Popen(
                [*FAILOVERD, "run", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        started = time.monotonic()
        try:
            _wait(ready, "READY=1", READY_DEADLINE_S, proc)
        except BenchError as exc:
            tail = (workdir / "daemon.log").read_text(errors="replace").splitlines()[-10:]
            raise BenchError(f"{exc}\n" + "\n".join(tail)) from None
        print(f"  daemon READY=1 after {time.monotonic() - started:.1f}s", flush=True)
        base = listener.accepted
        want = base + PROBE_ROUNDS * 2 * services  # two regions per service

        def probed() -> bool:
            return listener.accepted >= want

        _wait(probed, f"{want - base} probes at the listener", ROUNDS_DEADLINE_S, proc)
        print(f"  probes seen at the listener: {listener.accepted}", flush=True)
        return _vmrss_mb(proc.pid)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()
        listener.close()
        shutil.rmtree(workdir, ignore_errors=True)


# -- main ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="sandbox outages (default 5)")
    parser.add_argument("--services", type=int, default=1000, help="policies for the RSS run")
    parser.add_argument(
        "--control-plane-down",
        action="store_true",
        help="measure the data-plane failover with us-east-1's control planes down instead",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error(f"--runs must be 1..20, got {args.runs}")
    if not 1 <= args.services <= 5000:
        parser.error(f"--services must be 1..5000, got {args.services}")
    if args.control_plane_down:
        return control_plane_down(args.runs)
    try:
        runs: list[DemoRun] = []
        for i in range(args.runs):
            run = demo_once()
            runs.append(run)
            print(
                f"run {i + 1}: detect_s={run.detect_s:.2f} failover_s={run.failover_s:.2f}",
                flush=True,
            )
        detect = statistics.median(r.detect_s for r in runs)
        failover = statistics.median(r.failover_s for r in runs)
        print(
            f"median: detect_s={detect:.2f} (target <= {DETECT_TARGET_S:.1f}:"
            f" interval {INTERVAL:g}s x {FAILURES} failures + 0.5s)"
            f" failover_s={failover:.2f} (target < {FAILOVER_TARGET_S:.1f})"
        )
        print(f"memory: failoverd run with {args.services} services", flush=True)
        rss = rss_with_services(args.services)
    except BenchError as exc:
        print(f"e2e: {exc}", file=sys.stderr)
        return 1
    print(f"rss target < {RSS_TARGET_MB:.0f} MB: {'met' if rss < RSS_TARGET_MB else 'MISSED'}")
    print(f"rss_mb_{args.services}_services={rss:.1f}")
    print(f"detect_s={detect:.2f} failover_s={failover:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

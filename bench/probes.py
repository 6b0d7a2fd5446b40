"""Benchmark: HTTP probes per CPU-second and scheduling lateness, against blackbox_exporter.

Everything runs on loopback and stops by itself (about a minute):

1. A minimal HTTP/1.1 target (raw asyncio, ``Connection: close``) starts in a separate
   process, so its CPU is not counted against either prober.
2. **Ours at saturation**, for reference: ``HttpProber`` (fresh connection per probe, body
   check) with 64 probes in flight for a few seconds, once with the lean HTTP/1.1 client
   (the default for http://) and once through aiohttp; CPU from ``time.process_time()``.
3. **Ours through the scheduler at 1,000 probes/s** (the headline): ``ProbeScheduler`` with
   10,000 targets at a 10 s interval (the production path: planner, semaphore, metrics,
   observations) for 20 s. Reports probes per CPU-second of this process (user + system,
   ``getrusage``) and the scheduling lateness: each probe's start against its grid deadline,
   measured at the prober (so it includes the scheduler's own per-probe work).
4. **blackbox_exporter** (when ``/usr/bin/prometheus-blackbox-exporter`` exists), on a
   loopback port with an ``http_2xx`` module doing the same check (status 2xx, the same body
   regexp, a new connection per probe). A separate driver process calls
   ``/probe?target=...&module=http_2xx`` at 1,000/s, then at saturation; blackbox's CPU is
   utime+stime from ``/proc/<pid>/stat``.

The ratio compares both at the same rate (1,000 probes/s), same target, same run:
blackbox's cost includes serving its ``/probe`` request, which is how it is always driven.

Last line: ``probes_per_cpu_s=<n> lateness_p99_ms=<n> ratio_vs_blackbox=<n|na>``.

    python bench/probes.py [--targets N] [--interval S] [--duration S] [--slack S]
                           [--aiohttp] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
BODY = b'{"status":"ok"}'
BODY_CHECK = '"status":"ok"'
TARGET_RATIO = 2.0
TARGET_LATENESS_MS = 10.0


# --- the target server (own process) -------------------------------------------------------


def serve(port_file: str) -> None:
    """A fast HTTP/1.1 responder: one fixed 200 response per connection, then close."""
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY)
    )

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            if b"\r\n\r\n" in self.buffer:
                self.transport.write(response)
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Responder, "127.0.0.1", 0, backlog=4096)
        port = str(server.sockets[0].getsockname()[1])
        await asyncio.to_thread(Path(port_file).write_text, port)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(main())


# --- the blackbox driver (own process) -------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(blackbox: str, target: str, pid: int, rate: float, seconds: float) -> None:
    """Call blackbox's /probe at ``rate``/s (0: as fast as 64 in flight allow) for
    ``seconds`` after a short warm-up; print one JSON line with what blackbox spent."""
    import aiohttp

    async def main() -> None:
        url = f"http://{blackbox}/probe"
        params = {"target": target, "module": "http_2xx"}
        counts = {"ok": 0, "failed": 0}
        in_flight = asyncio.Semaphore(64)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as session:

            async def one(count: bool) -> None:
                async with in_flight, session.get(url, params=params) as resp:
                    text = await resp.text()
                if count:
                    counts["ok" if "probe_success 1" in text else "failed"] += 1

            async def phase(duration: float, count: bool) -> None:
                async with asyncio.TaskGroup() as tasks:
                    start = time.monotonic()
                    sent = 0
                    while (now := time.monotonic()) - start < duration:
                        if rate > 0:
                            due = int((now - start) * rate) + 1
                            while sent < due:
                                tasks.create_task(one(count))
                                sent += 1
                            await asyncio.sleep(1.0 / rate)
                        else:
                            await in_flight.acquire()
                            in_flight.release()
                            tasks.create_task(one(count))
                            await asyncio.sleep(0)

            await phase(1.5, count=False)  # warm-up: connections, Go runtime, page cache
            cpu0, wall0 = proc_cpu_seconds(pid), time.monotonic()
            await phase(seconds, count=True)
            cpu, wall = proc_cpu_seconds(pid) - cpu0, time.monotonic() - wall0
        print(json.dumps({**counts, "cpu": cpu, "wall": wall}), flush=True)

    asyncio.run(main())


# --- helpers --------------------------------------------------------------------------------


@contextmanager
def process(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, text=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- ours -----------------------------------------------------------------------------------


async def ours_saturated(url: str, seconds: float, lean: bool) -> tuple[int, float]:
    """Probes and CPU seconds with 64 probes in flight for ``seconds``."""
    from orchestrator.signals.probes import HttpProber, ProbeContext

    async with ProbeContext() as ctx:
        prober = HttpProber(ctx, timeout=5.0, body_contains=BODY_CHECK, lean=lean)
        failed = 0

        async def worker(until: float) -> int:
            nonlocal failed
            done = 0
            while time.monotonic() < until:
                result = await prober.probe(url)
                done += 1
                failed += not result.ok
            return done

        async def burst(seconds: float) -> int:
            until = time.monotonic() + seconds
            async with asyncio.TaskGroup() as tasks:
                workers = [tasks.create_task(worker(until)) for _ in range(64)]
            return sum(w.result() for w in workers)

        await burst(1.0)  # warm-up
        failed = 0
        cpu0 = time.process_time()
        done = await burst(seconds)
        cpu = time.process_time() - cpu0
    if failed:
        raise SystemExit(f"{failed} of {done} probes failed against the local target")
    return done, cpu


async def ours_scheduled(
    base_url: str, targets: int, interval: float, seconds: float, slack: float, lean: bool
) -> tuple[int, tuple[float, float], list[float], int]:
    """Run the scheduler; return (probes in the window, (user, system) CPU seconds, start
    offsets against the deadlines, failures)."""
    from orchestrator.engine.observation import Observation
    from orchestrator.policy.models import HttpSignal, Policy
    from orchestrator.signals.probes import HttpProber, ProbeContext, Prober, ProbeResult
    from orchestrator.signals.probes.plan import phase_offset
    from orchestrator.signals.scheduler import ProbeScheduler, ProbeSignal

    regions = ["us-east-1", "us-west-2"]
    per_service = 50
    services = max(1, targets // (len(regions) * per_service))
    policies = [
        Policy.model_validate(
            {
                "service": f"svc{s}",
                "regions": regions,
                "rto": "15m",
                "rpo": "1m",
                "detection": {"interval": f"{int(interval * 1000)}ms", "timeout": "5s"},
                "signals": [
                    {
                        "name": f"api{i}",
                        "type": "http",
                        "target": f"{base_url}/svc{s}/{{region}}/api{i}",
                        "body_contains": BODY_CHECK,
                    }
                    for i in range(per_service)
                ],
                "runbooks": {
                    "failover": [
                        {
                            "name": "noop",
                            "action": "route53.set_record",
                            "params": {"hosted_zone_id": "Z", "name": "n", "value": "v"},
                        }
                    ]
                },
            }
        )
        for s in range(services)
    ]
    phases: dict[str, float] = {}
    lateness: list[float] = []
    measuring = False

    class Timed:
        """Wraps the real prober: records when each probe started against its grid
        deadline (phase + n * interval), as the prober sees it."""

        def __init__(self, inner: Prober) -> None:
            self.inner = inner
            self.type = inner.type
            self.timeout = inner.timeout

        def validate(self, target: str) -> None:
            self.inner.validate(target)

        async def probe(self, target: str) -> ProbeResult:
            if measuring:
                # Signed distance to the nearest grid point: > 0 late, < 0 early (slack).
                half = interval / 2
                lateness.append((time.monotonic() - phases[target] + half) % interval - half)
            return await self.inner.probe(target)

    class CountingSink:
        """Counts, keeps nothing: a sink that grew without bound would tax the GC, which
        the daemon's health book (bounded windows) does not."""

        def __init__(self) -> None:
            self.count = 0
            self.failures = 0

        def put(self, obs: Observation) -> None:
            self.count += 1
            self.failures += obs.ok is not True

    sink = CountingSink()
    async with ProbeContext() as ctx:

        def factory(signal: ProbeSignal, timeout: float, /) -> Prober:
            if not lean and isinstance(signal, HttpSignal):
                return Timed(
                    HttpProber(ctx, timeout=timeout, body_contains=signal.body_contains, lean=False)
                )
            return Timed(ctx.make_prober(signal, timeout))

        scheduler = ProbeScheduler(policies, "local", factory, dispatch_slack=slack)
        for t in scheduler.targets:
            phases[t.target] = phase_offset(t.key, t.interval)
        print(f"  scheduler: {len(scheduler.targets)} targets every {interval:g}s", flush=True)
        async with asyncio.TaskGroup() as tasks:
            run = tasks.create_task(scheduler.run(sink))
            await asyncio.sleep(2.0)  # warm-up
            measuring = True
            first = sink.count
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.sleep(seconds)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            done = sink.count - first
            measuring = False
            run.cancel()
    user = usage.ru_utime - usage0.ru_utime
    system = usage.ru_stime - usage0.ru_stime
    return done, (user, system), lateness, sink.failures


# --- blackbox ---------------------------------------------------------------------------------


def blackbox_runs(target_url: str, rate: float, seconds: float) -> dict[str, dict[str, float]]:
    """Start blackbox_exporter and measure it at ``rate``/s and at saturation."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "blackbox.yml"
        config.write_text(
            "modules:\n"
            "  http_2xx:\n"
            "    prober: http\n"
            "    timeout: 5s\n"
            "    http:\n"
            "      method: GET\n"
            "      preferred_ip_protocol: ip4\n"
            "      fail_if_body_not_matches_regexp:\n"
            f"        - '{BODY_CHECK}'\n"
        )
        port = free_port()
        with process(
            [
                BLACKBOX,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as bb:
            wait_for(lambda: port_open(port), 10, "blackbox_exporter to listen")
            for label, r, secs in (("rate", rate, seconds), ("saturated", 0.0, 4.0)):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "_drive",
                        f"127.0.0.1:{port}",
                        target_url,
                        str(bb.pid),
                        str(r),
                        str(secs),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=secs + 30,
                    check=True,
                )
                results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--saturation", type=float, default=4.0)
    parser.add_argument(
        "--slack", type=float, default=0.005, help="the scheduler's dispatch_slack, seconds"
    )
    parser.add_argument(
        "--aiohttp", action="store_true", help="run plain http:// probes through aiohttp too"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the scheduler run")
    args = parser.parse_args()
    rate = args.targets / args.interval

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, loopback only")
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        with process([sys.executable, __file__, "_serve", str(port_file)]):
            wait_for(port_file.exists, 10, "the target server")
            port = int(port_file.read_text())
            base = f"http://127.0.0.1:{port}"
            print(f"target: {base}/... (separate process, Connection: close)")

            lean = not args.aiohttp
            sat = 0.0
            for client, use_lean in (("lean http1", True), ("aiohttp", False)):
                done, cpu = asyncio.run(
                    ours_saturated(f"{base}/healthz", args.saturation, use_lean)
                )
                print(
                    f"ours ({client}), saturated (64 in flight): {done} probes, {cpu:.2f} CPU s"
                    f" -> {done / cpu:.0f}/CPU s"
                )
                if use_lean == lean:
                    sat = done / cpu

            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            done, (user, system), offsets, failures = asyncio.run(
                ours_scheduled(base, args.targets, args.interval, args.duration, args.slack, lean)
            )
            if profiler:
                profiler.disable()
            cpu = user + system
            ours = done / cpu
            late = [max(0.0, o) for o in offsets]
            p50 = statistics.median(late) * 1000
            p99 = percentile(late, 0.99) * 1000
            worst = max(late) * 1000
            earliest = max(0.0, -min(offsets)) * 1000
            print(
                f"ours ({'lean http1' if lean else 'aiohttp'}), scheduler at"
                f" {done / args.duration:.0f}/s (asked {rate:.0f}/s):"
                f" {done} probes, {cpu:.2f} CPU s (user {user:.2f}, system {system:.2f})"
                f" -> {ours:.0f}/CPU s; failures {failures}"
            )
            print(
                f"  lateness p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.1f} ms;"
                f" earliest start {earliest:.2f} ms before its deadline"
                f" (dispatch_slack {args.slack * 1000:g} ms)"
            )
            if profiler:
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
                print(text.getvalue())

            ratio = "na"
            if shutil.which(BLACKBOX) or Path(BLACKBOX).exists():
                bb = blackbox_runs(f"{base}/healthz", rate, min(args.duration, 10.0))
                at_rate = bb["rate"]["ok"] / bb["rate"]["cpu"]
                saturated = bb["saturated"]["ok"] / bb["saturated"]["cpu"]
                for label, res, per in (
                    ("at", bb["rate"], at_rate),
                    ("saturated", bb["saturated"], saturated),
                ):
                    print(
                        f"blackbox_exporter {label} {res['ok'] / res['wall']:.0f}/s:"
                        f" {res['ok']:.0f} ok, {res['failed']:.0f} failed,"
                        f" {res['cpu']:.2f} CPU s -> {per:.0f}/CPU s"
                    )
                ratio = f"{ours / at_rate:.2f}"
                print(
                    f"ratio at {rate:.0f}/s: {ours / at_rate:.2f}x (target {TARGET_RATIO:g}x);"
                    f" saturated: {sat / saturated:.2f}x"
                )
            else:
                print(f"blackbox_exporter not found at {BLACKBOX}: no ratio")
    print(f"lateness p99 {p99:.2f} ms (target < {TARGET_LATENESS_MS:g} ms at {rate:.0f}/s)")
    print(f"probes_per_cpu_s={ours:.0f} lateness_p99_ms={p99:.2f} ratio_vs_blackbox={ratio}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "_drive":
        drive(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
    else:
        main()

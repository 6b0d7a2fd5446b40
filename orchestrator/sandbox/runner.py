"""``failoverd sandbox``: the real daemon against an emulated AWS world on loopback.

Starts moto (with the fix-ups), the AWS Health emulator, one HTTP endpoint per region, the
control endpoint for faults, an MQTT broker (mosquitto, or the embedded amqtt broker when
mosquitto is missing) with two ``failoverd agent`` processes, and ``failoverd run`` with
generated settings; prints where everything is and
then one line per service every 2 s until SIGINT/SIGTERM, which stops everything it started
and exits 0. ``--demo`` runs a scripted outage of us-east-1 instead and exits 0 only when
the world in moto really ended in us-west-2. ``failoverd sandbox fault ...`` injects a fault
into a running sandbox.

Exit codes: 0 ok; 1 the demo did not end in the standby region, or a part failed while
running; 2 the sandbox could not start, or a fault was refused or could not be sent.

``--instances N`` (N > 1) runs the high-availability setup instead of one daemon: a
3-member etcd cluster (``/usr/bin/etcd``, Debian's ``etcd-server``) on loopback and N
daemons on the etcd store, each with its own API; it prints every instance's API and who
leads, and the summaries and the demo follow the leader. Stop the leader (``kill <pid>``
from the printed pids) to watch another take over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml

from orchestrator.sandbox import region_switch_world
from orchestrator.sandbox.aurora_global import EMULATOR, aurora_region
from orchestrator.sandbox.broker import available as embedded_broker_available
from orchestrator.sandbox.control import FAULTS, ControlServer, FaultError, Faults, send_fault
from orchestrator.sandbox.etcd_cluster import EtcdCluster, EtcdClusterError, etcd_binary
from orchestrator.sandbox.fault_proxy import FaultProxy
from orchestrator.sandbox.health_api import HealthApiEmulator
from orchestrator.sandbox.region_endpoints import RegionEndpoints
from orchestrator.sandbox.region_switch_api import RegionSwitchEmulator
from orchestrator.sandbox.seed import (
    ALL_REGIONS,
    feed_ledger_writes,
    seed_world,
    write_sandbox_policies,
)
from orchestrator.sandbox.world import (
    DEFAULT_LAG,
    PRIMARY,
    REGIONS,
    SERVICE,
    STANDBY,
    MotoWorld,
    SandboxError,
    failover_problems,
    feed_lag,
    publish_lag,
)
from orchestrator.telemetry import configure_logging, get_logger

log = get_logger("failoverd.sandbox")

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
MOSQUITTO = "/usr/sbin/mosquitto"
AGENTS = ("agent-eu", "agent-ap")
START_DEADLINE = 30.0  # seconds for a subprocess to come up (2 cores, cold imports)
STOP_DEADLINE = 10.0  # seconds after SIGTERM before SIGKILL
SUMMARY_EVERY = 2.0
MAX_INSTANCES = 5
HA_LEASE_TTL = "5s"  # the sandbox's lease with several instances: takeovers worth watching
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=3)
ROOT = Path(__file__).parents[2]


def pointer_file() -> Path:
    """Where a running sandbox says where its control endpoint is (one per user)."""
    return Path(tempfile.gettempdir()) / f"failoverd-sandbox-{os.getuid()}.json"


# -- the command line ----------------------------------------------------------------------
def add_sandbox_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sandbox",
        help="run the daemon against an emulated AWS on loopback; inject faults; --demo",
        description="Start moto, the AWS Health emulator, one endpoint per region, mosquitto and"
        " two probe agents (when mosquitto is installed) and the daemon, all on 127.0.0.1;"
        " print a line per service every 2 s until Ctrl-C. `sandbox fault ...` injects a fault"
        " into the running sandbox.",
    )
    p.add_argument("--port", type=int, default=8080, help="the daemon's API port (0: any)")
    p.add_argument("--demo", action="store_true", help="run a scripted us-east-1 outage")
    p.add_argument("--deadline", type=float, default=90.0, help="seconds the whole demo may take")
    p.add_argument("--no-agents", action="store_true", help="no broker, no agents")
    p.add_argument(
        "--instances",
        type=int,
        default=1,
        help=f"daemons to run (1-{MAX_INSTANCES}); more than 1 also starts a 3-member etcd"
        " cluster on loopback for them to share (high availability)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs, state) at exit"
    )
    sub = p.add_subparsers(dest="sandbox_command", metavar="fault")
    f = sub.add_parser("fault", help="inject a fault into the running sandbox")
    f.add_argument("fault", choices=FAULTS)
    f.add_argument("arg", help="a region (us-east-1), a duration (lag 120s) or a service")
    f.add_argument("--control", metavar="URL", help="the control endpoint (default: the sandbox's)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.sandbox.runner ...``: the command without the main CLI."""
    parser = argparse.ArgumentParser(prog="failoverd")
    add_sandbox_parser(parser.add_subparsers(dest="command", required=True))
    return run_sandbox(parser.parse_args(["sandbox", *(sys.argv[1:] if argv is None else argv)]))


def run_sandbox(args: argparse.Namespace) -> int:
    if getattr(args, "sandbox_command", None) == "fault":
        return _fault(args)
    if not 0 <= args.port <= 65535:
        print(f"sandbox: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.deadline <= 0:
        print("sandbox: --deadline must be greater than zero", file=sys.stderr)
        return EXIT_UNUSABLE
    if not 1 <= args.instances <= MAX_INSTANCES:
        print(
            f"sandbox: --instances must be 1..{MAX_INSTANCES}, got {args.instances}",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    if args.instances > 1 and etcd_binary() is None:
        print(
            "sandbox: --instances needs etcd (apt-get install etcd-server): /usr/bin/etcd is"
            " not installed",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    configure_logging("warning")
    return asyncio.run(_main(args))


def _fault(args: argparse.Namespace) -> int:
    control = args.control
    if control is None:
        try:
            control = json.loads(pointer_file().read_text())["control"]
        except (OSError, ValueError, KeyError):
            print(
                f"sandbox: no running sandbox found ({pointer_file()}); give --control URL",
                file=sys.stderr,
            )
            return EXIT_UNUSABLE
    try:
        print(send_fault(control, args.fault, args.arg))
    except FaultError as exc:
        print(f"sandbox: fault refused: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as exc:
        print(f"sandbox: cannot reach the sandbox at {control}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    return EXIT_OK


# -- processes -----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _child_env() -> dict[str, str]:
    """No real AWS profile, no systemd socket, no FAILOVERD_* from the user's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "FAILOVERD_")) and k != "NOTIFY_SOCKET"
    }
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    env.update(AWS_DEFAULT_REGION=PRIMARY)
    return env


async def _spawn(name: str, argv: list[str], logfile: Path) -> asyncio.subprocess.Process:
    with logfile.open("ab") as out:
        # A session of its own: a terminal's Ctrl-C reaches the sandbox only, which then
        # stops its children in order.
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=_child_env(),
            cwd=ROOT,
            start_new_session=True,
        )
    log.info("sandbox_process_started", name=name, pid=proc.pid)
    return proc


async def _stop_process(name: str, proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_DEADLINE):
                await proc.wait()
        except TimeoutError:
            log.warning("sandbox_process_killed", name=name, pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    log.info("sandbox_process_stopped", name=name, pid=proc.pid, returncode=proc.returncode)


def _api_port(logfile: Path) -> int | None:
    """The daemon's API port, from its ``api_listening`` log event (JSON lines)."""
    try:
        lines = logfile.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "api_listening":
            for address in record.get("addresses", []):
                parts = address.strip("()").split(",")
                if parts[0].strip(" '\"") == "127.0.0.1":
                    return int(parts[1])
    return None


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or (MOSQUITTO if os.path.exists(MOSQUITTO) else None)


def _tail(logfile: Path, lines: int = 15) -> str:
    try:
        return "\n".join(logfile.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- the sandbox ---------------------------------------------------------------------------
@dataclass
class Sandbox:
    """Everything the sandbox runs. ``start`` brings it up (bounded); ``aclose`` stops what
    was started, newest first, and is safe after a partial start."""

    port: int
    agents: bool
    workdir: Path
    out: TextIO = sys.stdout
    instances: int = 1
    pids: dict[str, int] = field(default_factory=dict)
    api_url: str = ""  # the leader's API (the only daemon's with one instance)
    apis: dict[str, str] = field(default_factory=dict)  # node id -> API URL
    etcd: EtcdCluster | None = None
    control_url: str = ""
    zone_id: str = ""
    token_file: Path = Path()
    broker_note: str = ""
    # More policies for the same world (bench/soak.py): called with the policy folder, the
    # region endpoints' ports and the vantage points, after the examples are written.
    extra_policies: Callable[[Path, dict[str, int], list[str]], None] | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def start(self) -> None:
        stack = self._stack
        self.moto = MotoWorld()
        stack.push_async_callback(asyncio.to_thread, self.moto.stop)
        await asyncio.to_thread(self.moto.start)
        # The daemon reaches moto through the proxy, so `fault throttle` can get in between.
        self.proxy = FaultProxy(self.moto.endpoint_url)
        stack.push_async_callback(self.proxy.stop)
        await self.proxy.start()
        self.zones = (await asyncio.to_thread(seed_world, self.moto)).zones
        self.zone_id = self.zones[SERVICE]

        self.health = HealthApiEmulator()
        await self.health.start()
        stack.push_async_callback(self.health.stop)
        # ARC Region switch (the orders example's plan), emulated on its own port.
        self.region_switch = RegionSwitchEmulator()
        await self.region_switch.start()
        stack.push_async_callback(self.region_switch.stop)
        region_switch_world.seed_plan(self.region_switch)
        await asyncio.to_thread(region_switch_world.seed_moto, self.moto)
        regions = dict.fromkeys([*ALL_REGIONS, *region_switch_world.REGIONS])
        self.endpoints = RegionEndpoints(list(regions))
        stack.push_async_callback(self.endpoints.stop)
        await self.endpoints.start()

        def lag(seconds: float) -> None:
            publish_lag(self.moto, seconds)

        self.faults = Faults(
            self.endpoints,
            self.health,
            lag,
            lag_seconds=DEFAULT_LAG,
            proxy=self.proxy,
            on_region=aurora_region,
            world_state=lambda: {"aurora": EMULATOR.states()},
            region_switch=self.region_switch,
        )
        control = ControlServer(self.faults)
        stack.push_async_callback(control.stop)
        await control.start()
        self.control_url = control.url

        broker = await self._start_broker()
        vantages = ["local", *AGENTS] if broker else ["local"]
        policies = self.workdir / "policies"
        policies.mkdir()
        ports = {r: e.port for r, e in self.endpoints.endpoints.items()}
        write_sandbox_policies(policies, self.zones, ports, vantages)
        region_switch_world.write_policy(policies, ports, vantages)
        if self.extra_policies is not None:
            self.extra_policies(policies, ports, vantages)
        if broker:
            for agent in AGENTS:
                # Each agent signs what it sends with a key of its own (the daemon has them).
                argv = [sys.executable, "-m", "orchestrator", "agent", "--id", agent]
                argv += ["--broker", broker, "--policies", str(policies)]
                argv += ["--key-file", str(self._agent_key(agent))]
                await self._process(agent, argv)
        self.token_file = self.workdir / "token"
        self.token_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.token_file.chmod(0o600)
        if self.instances == 1:
            await self._start_daemon("sandbox", "daemon", self.port, policies, broker, None)
        else:
            await self._start_etcd()
            for i in range(1, self.instances + 1):
                port = self.port + i - 1 if self.port else 0
                await self._start_daemon(
                    f"sandbox-{i}", f"daemon-{i}", port, policies, broker, self.etcd
                )
            self.api_url = self.apis[await self.wait_leader()]
        self._write_state()

    def _agent_key(self, agent: str) -> Path:
        path = self.workdir / f"{agent}.key"
        if not path.exists():
            path.write_text(secrets.token_hex(32) + "\n")
            path.chmod(0o600)
        return path

    async def _start_etcd(self) -> None:
        binary = etcd_binary()
        if binary is None:
            raise SandboxError("etcd is not installed (apt-get install etcd-server)")
        cluster = EtcdCluster(self.workdir / "etcd", binary=binary)
        self._stack.push_async_callback(asyncio.to_thread, cluster.close)
        try:
            await asyncio.to_thread(cluster.start, START_DEADLINE)
        except EtcdClusterError as exc:
            raise SandboxError(str(exc)) from None
        for name in cluster.names:
            proc = cluster.member(name).proc
            if proc is not None:
                self.pids[name] = proc.pid
        self.etcd = cluster

    async def leader(self, http: aiohttp.ClientSession) -> str | None:
        """The node id that says it leads, asking every instance (None: none does)."""
        for name, url in self.apis.items():
            try:
                async with http.get(f"{url}/v1/status") as response:
                    body = await response.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            if isinstance(body, dict) and body.get("is_leader"):
                return name
        return None

    async def follow_leader(self, http: aiohttp.ClientSession) -> None:
        """Point ``api_url`` at the leader, saying so when it changed."""
        found = await self.leader(http)
        stamp = time.strftime("%H:%M:%S")
        if found is None:
            self._say(f"{stamp} leader: none (an election is under way, or etcd has no quorum)")
        elif self.apis[found] != self.api_url:
            self.api_url = self.apis[found]
            self._say(f"{stamp} leader: {found} {self.api_url}")

    async def wait_leader(self, within: float = START_DEADLINE) -> str:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            while time.monotonic() < deadline:
                found = await self.leader(http)
                if found is not None:
                    return found
                await asyncio.sleep(0.2)
        raise SandboxError(f"no instance took the lead within {within:.0f}s")

    async def aclose(self) -> None:
        pointer = pointer_file()
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(pointer.read_text())["control"] == self.control_url:
                pointer.unlink()
        await self._stack.aclose()

    async def _process(self, name: str, argv: list[str]) -> asyncio.subprocess.Process:
        proc = await _spawn(name, argv, self.workdir / f"{name}.log")
        self.pids[name] = proc.pid
        self._stack.push_async_callback(_stop_process, name, proc)
        return proc

    async def _start_broker(self) -> str | None:
        binary = _mosquitto()
        if not self.agents:
            self.broker_note = "agents off (--no-agents): vantage point local only, quorum 1"
            return None
        if binary is None:
            return await self._start_embedded_broker()
        port = _free_port()
        config = self.workdir / "mosquitto.conf"
        lines = [
            "persistence false",
            f"user {getpass.getuser()}",  # mosquitto drops root to a user that cannot read
            f"log_dest file {self.workdir / 'mosquitto.log'}",
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
        ]
        config.write_text("\n".join(lines) + "\n")
        proc = await self._process("mosquitto", [binary, "-c", str(config)])
        await _until(lambda: _port_open(port), "mosquitto to listen", START_DEADLINE, proc)
        self.broker_note = f"broker mqtt://127.0.0.1:{port}; agents {', '.join(AGENTS)}"
        return f"mqtt://127.0.0.1:{port}"

    async def _start_embedded_broker(self) -> str | None:
        if not embedded_broker_available():
            self.broker_note = (
                "agents off: neither mosquitto (apt-get install mosquitto) nor amqtt"
                " (pip install 'failoverd[sandbox]') is installed; vantage point local only,"
                " quorum 1"
            )
            return None
        port = _free_port()
        argv = [sys.executable, "-m", "orchestrator.sandbox.broker", "--port", str(port)]
        proc = await self._process("broker", argv)
        await _until(
            lambda: _port_open(port), "the embedded broker to listen", START_DEADLINE, proc
        )
        self.broker_note = f"broker mqtt://127.0.0.1:{port} (amqtt); agents {', '.join(AGENTS)}"
        return f"mqtt://127.0.0.1:{port}"

    async def _start_daemon(
        self,
        node_id: str,
        name: str,
        port: int,
        policies: Path,
        broker: str | None,
        etcd: EtcdCluster | None,
    ) -> None:
        state: dict[str, Any] = {"path": str(self.workdir / "state.db")}
        if etcd is not None:
            state = {"backend": "etcd", "etcd": {"endpoints": list(etcd.endpoints)}}
        settings: dict[str, Any] = {
            "node_id": node_id,
            "policies": [str(policies)],
            "state": state,
            "engine": {"tick": "500ms"},
            "leader": {"ttl": "3s" if etcd is None else HA_LEASE_TTL},
            "aws": {
                "endpoint_url": self.proxy.endpoint_url,
                "health_endpoint_url": self.health.endpoint_url,
                "service_endpoints": {"arc-region-switch": self.region_switch.endpoint_url},
                "read_timeout": "5s",
            },
            "http": {"bind": "127.0.0.1", "port": port, "token_file": str(self.token_file)},
            "log": {"format": "json"},
        }
        if broker:
            keys = [{"agent": a, "file": str(self._agent_key(a))} for a in AGENTS]
            settings["mqtt"] = {"broker": broker, "agent_keys": keys}
        config = self.workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        argv = [sys.executable, "-m", "orchestrator", "run", "--config", str(config)]
        proc = await self._process(name, argv)
        logfile = self.workdir / f"{name}.log"
        await _until(
            lambda: _api_port(logfile) is not None,
            f"the daemon's API to listen (log: {logfile})",
            START_DEADLINE,
            proc,
        )
        self.apis[node_id] = f"http://127.0.0.1:{_api_port(logfile)}"
        self.api_url = self.api_url or self.apis[node_id]

    def _write_state(self) -> None:
        state = {
            "control": self.control_url,
            "api": self.api_url,
            "instances": self.apis,
            "etcd": list(self.etcd.endpoints) if self.etcd else [],
            "token_file": str(self.token_file),
            "region_switch": self.region_switch.endpoint_url,
            "workdir": str(self.workdir),
            "pids": self.pids,
        }
        text = json.dumps(state, indent=2)
        (self.workdir / "sandbox.json").write_text(text)
        pointer_file().write_text(text)

    def announce(self) -> None:
        say = self._say
        say(f"sandbox: working directory {self.workdir}")
        if self.etcd is not None:
            say(f"sandbox: etcd         {','.join(self.etcd.endpoints)} (3 members)")
            for node, url in self.apis.items():
                role = "leader" if url == self.api_url else "follower"
                say(f"sandbox: instance     {node} {url} ({role})")
        say(f"sandbox: api          {self.api_url}/v1/status")
        say(f"sandbox: status page  {self.api_url}/")
        say(f"sandbox: metrics      {self.api_url}/metrics")
        say(f"sandbox: token file   {self.token_file}")
        say(f"sandbox: control      {self.control_url}")
        say(f"sandbox: {self.broker_note}")
        say("sandbox: pids " + " ".join(f"{k}={v}" for k, v in self.pids.items()))
        say(f"sandbox: try  failoverd sandbox fault region-down {PRIMARY}")

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


async def _until(
    check: Callable[[], bool], what: str, within: float, proc: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + within
    while not check():
        if proc.returncode is not None:
            raise SandboxError(f"exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


# -- running -------------------------------------------------------------------------------
async def _main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="failoverd-sandbox-"))
    sandbox = Sandbox(
        port=args.port, agents=not args.no_agents, workdir=workdir, instances=args.instances
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            async with asyncio.timeout(START_DEADLINE * 3):
                await _first(sandbox.start(), stop)
        except (SandboxError, EtcdClusterError, OSError, TimeoutError) as exc:
            print(f"sandbox: could not start: {exc}", file=sys.stderr)
            daemons = [f"daemon-{i}" for i in range(1, args.instances + 1)]
            for name in ("daemon", *daemons, *AGENTS, "mosquitto", "broker"):
                logfile = workdir / f"{name}.log"
                if logfile.exists():
                    print(f"--- {logfile} ---\n{_tail(logfile)}", file=sys.stderr)
            return EXIT_UNUSABLE
        if stop.is_set():
            return EXIT_OK
        sandbox.announce()
        async with asyncio.TaskGroup() as tasks:
            feed = tasks.create_task(feed_lag(sandbox.moto, lambda: sandbox.faults.lag_seconds))
            writes = tasks.create_task(feed_ledger_writes())
            try:
                if args.demo:
                    return int(await _first(run_demo(sandbox, args.deadline), stop, default=1))
                await _first(_summaries(sandbox), stop)
                return EXIT_OK
            finally:
                feed.cancel()
                writes.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sandbox.aclose()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        # stderr: the demo's result stays the last line of standard output.
        print("sandbox: stopped", file=sys.stderr, flush=True)


async def _first(work: Awaitable[Any], stop: asyncio.Event, default: Any = None) -> Any:
    """``work``'s result, or ``default`` once ``stop`` is set (``work`` is then cancelled)."""
    async with asyncio.TaskGroup() as tasks:
        job = tasks.create_task(_as_coroutine(work))
        stopper = tasks.create_task(stop.wait())
        await asyncio.wait((job, stopper), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not job.done():
            job.cancel()
    return default if job.cancelled() else job.result()


async def _as_coroutine(work: Awaitable[Any]) -> Any:
    return await work


async def _summaries(sandbox: Sandbox) -> None:
    """One line per service every :data:`SUMMARY_EVERY` seconds, until cancelled."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        while True:
            if len(sandbox.apis) > 1:
                await sandbox.follow_leader(http)
            for line in await summary_lines(http, sandbox.api_url):
                print(line, flush=True)
            await asyncio.sleep(SUMMARY_EVERY)


async def summary_lines(http: aiohttp.ClientSession, api_url: str) -> list[str]:
    """``<service> active=<region> phase=<phase> <region>=<verdict>... run=<status>``, or one
    line saying why the API could not be read."""
    stamp = time.strftime("%H:%M:%S")
    try:
        async with http.get(f"{api_url}/v1/status") as response:
            status = await response.json()
        lines = []
        for brief in status["services"]:
            async with http.get(f"{api_url}/v1/services/{brief['name']}") as response:
                detail = await response.json()
            verdicts = " ".join(f"{v['region']}={v['verdict']}" for v in detail["verdicts"])
            lag = " ".join(f"lag[{x['region']}]={x['seconds']}s" for x in detail["lag"])
            run = f"{brief['run_status']}" if brief["run_id"] else "-"
            lines.append(
                f"{stamp} {brief['name']} active={brief['active_region']} phase={brief['phase']}"
                f" {verdicts} {lag} run={run}"
            )
        return lines
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
        return [f"{stamp} api unreachable: {exc!r}"]


# -- the demo ------------------------------------------------------------------------------
class DemoFailed(Exception):
    """The demo did not end with the service in the standby region; the message says why."""


async def _poll(
    http: aiohttp.ClientSession, url: str, done: Callable[[dict[str, Any]], bool], deadline: float
) -> dict[str, Any]:
    """GET ``url`` every 0.2 s until ``done(body)``; DemoFailed at ``deadline`` (monotonic)."""
    last: Any = None
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as response:
                last = await response.json()
                # A daemon still starting answers with an error body (no service view yet).
                ok = response.status == 200
            if ok and isinstance(last, dict) and done(last):
                return last
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise DemoFailed(f"deadline passed polling {url}; last answer: {str(last)[:300]}")


def _steady(body: dict[str, Any]) -> bool:
    verdicts = {v["region"]: v["verdict"] for v in body["verdicts"]}
    lag = {x["region"]: x["within_rpo"] for x in body["lag"]}
    return (
        body["active_region"] == PRIMARY
        and verdicts == {r: "healthy" for r in REGIONS}
        and lag.get(STANDBY) is True
    )


def _moved(body: dict[str, Any]) -> bool:
    run = body.get("run") or {}
    if run.get("status") == "failed":
        raise DemoFailed(f"the failover run failed: {run.get('error')}")
    return bool(body["active_region"] == STANDBY and run.get("status") == "succeeded")


async def run_demo(sandbox: Sandbox, within: float) -> int:
    """Steady state, region-down us-east-1, the failover, the world checked in moto."""
    deadline = time.monotonic() + within
    service_url = f"{sandbox.api_url}/v1/services/{SERVICE}"
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            print(f"demo: waiting for {SERVICE} steady in {PRIMARY}, both regions healthy")
            await _poll(http, service_url, _steady, deadline)
            fault_at = time.time()
            print(f"demo: {await sandbox.faults.apply('region-down', PRIMARY)}", flush=True)
            after = await _poll(http, service_url, _moved, deadline)
            run_id = after["run"]["run_id"]
            async with http.get(f"{sandbox.api_url}/v1/runs/{run_id}") as response:
                run = await response.json()
        problems = await asyncio.to_thread(failover_problems, sandbox.moto, sandbox.zone_id)
        if problems:
            raise DemoFailed("the world in moto is wrong: " + "; ".join(problems))
        return _timeline(fault_at, run)
    except DemoFailed as exc:
        print(f"demo: FAILED: {exc}", flush=True)
        return EXIT_FAILED


def _timeline(fault_at: float, run: dict[str, Any]) -> int:
    def at(t: float) -> str:
        return f"{t - fault_at:+7.2f}s"

    detected = run["detected_at"] if run["detected_at"] is not None else run["decided_at"]
    print("demo: timeline (seconds after the fault)")
    print(f"  {at(fault_at)}  fault: region-down {PRIMARY}")
    print(f"  {at(detected)}  detection: {PRIMARY} seen down")
    print(f"  {at(run['decided_at'])}  decision: failover {run['source']} -> {run['target']}")
    moved_at = run["finished_at"] or run["decided_at"]
    for step in sorted(run["steps"], key=lambda s: s["started_at"] or 0.0):
        started = step["started_at"] or run["decided_at"]
        duration = step["duration"] if step["duration"] is not None else 0.0
        print(
            f"  {at(started)}  step {step['name']} ({step['action']}): {step['status']}"
            f" in {duration:.2f}s"
        )
        if step["action"] == "route53.set_record" and step["finished_at"]:
            moved_at = step["finished_at"]
    print(f"  {at(moved_at)}  traffic moved: Route 53 record -> {run['target']}")
    print(f"  {at(run['finished_at'] or moved_at)}  run {run['run_id']} {run['status']}")
    detect_s = detected - fault_at
    failover_s = moved_at - run["decided_at"]
    print(
        f"demo: failover to {run['target']} complete, detect_s={detect_s:.2f}"
        f" failover_s={failover_s:.2f} rto_budget_s={run['rto']:.0f}",
        flush=True,
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

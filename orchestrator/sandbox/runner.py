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
import importlib
import json
import os
import secrets
import shlex
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
from orchestrator.sandbox import seed_storefront as storefront
from orchestrator.sandbox.arc_cluster import ArcClusterEmulator
from orchestrator.sandbox.aurora_global import EMULATOR, aurora_region
from orchestrator.sandbox.broker import available as embedded_broker_available
from orchestrator.sandbox.control import FAULTS, ControlServer, FaultError, Faults, send_fault
from orchestrator.sandbox.dns_server import DnsServer, Route53Reader
from orchestrator.sandbox.etcd_cluster import EtcdCluster, EtcdClusterError, etcd_binary
from orchestrator.sandbox.fault_proxy import FaultProxy
from orchestrator.sandbox.health_api import HealthApiEmulator
from orchestrator.sandbox.region_endpoints import RegionEndpoints
from orchestrator.sandbox.region_switch_api import RegionSwitchEmulator
from orchestrator.sandbox.route53_health import SandboxHealth
from orchestrator.sandbox.seed import (
    ALL_REGIONS,
    _fast_detection,
    feed_ledger_writes,
    seed_world,
    write_sandbox_policies,
)
from orchestrator.sandbox.world import (
    DEFAULT_LAG,
    PRIMARY,
    RECORD,
    REGIONS,
    SERVICE,
    STANDBY,
    MotoWorld,
    SandboxError,
    endpoint_name,
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
    p.add_argument(
        "--control-plane-down",
        action="store_true",
        help="with --demo: us-east-1's control planes go down with it (Route 53's API, IAM,"
        " every us-east-1 API, its ARC endpoint); the storefront example fails over on the"
        " data plane and DNS proves it",
    )
    p.add_argument(
        "--arc-endpoints-down",
        type=int,
        default=0,
        metavar="N",
        help="with --demo --control-plane-down: N of the ARC cluster's 5 endpoints blackholed"
        " in all (us-east-1's among them), 1-4",
    )
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
    sub = p.add_subparsers(dest="sandbox_command", metavar="fault|env")
    f = sub.add_parser("fault", help="inject a fault into the running sandbox")
    f.add_argument("fault", choices=FAULTS)
    f.add_argument(
        "arg",
        help="a region (us-east-1), a duration (lag 120s), a service (throttle route53),"
        " regions (arc-endpoint-down us-east-1,us-west-2) or off (throttle, control-plane-down,"
        " arc-endpoint-down)",
    )
    f.add_argument("--control", metavar="URL", help="the control endpoint (default: the sandbox's)")
    sub.add_parser(
        "env",
        help="print the environment that points the CLI at the running sandbox (for eval)",
        description='Print shell lines for `eval "$(failoverd sandbox env)"`: AWS_ENDPOINT_URL'
        " and fake credentials for the sandbox's emulated AWS (readiness, drill), FAILOVERD_API"
        " and FAILOVERD_TOKEN_FILE for its daemon (status, audit, commands), and"
        " FAILOVERD_POLICIES for its policy copies (readiness, iam-policy, drill).",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m orchestrator.sandbox.runner ...``: the command without the main CLI."""
    parser = argparse.ArgumentParser(prog="failoverd")
    add_sandbox_parser(parser.add_subparsers(dest="command", required=True))
    return run_sandbox(parser.parse_args(["sandbox", *(sys.argv[1:] if argv is None else argv)]))


def run_sandbox(args: argparse.Namespace) -> int:
    if getattr(args, "sandbox_command", None) == "fault":
        return _fault(args)
    if getattr(args, "sandbox_command", None) == "env":
        return _env()
    if not 0 <= args.port <= 65535:
        print(f"sandbox: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.deadline <= 0:
        print("sandbox: --deadline must be greater than zero", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.control_plane_down and not args.demo:
        print("sandbox: --control-plane-down goes with --demo (or use `sandbox fault"
              " control-plane-down us-east-1`)", file=sys.stderr)  # fmt: skip
        return EXIT_UNUSABLE
    if args.arc_endpoints_down and not (
        args.control_plane_down and 1 <= args.arc_endpoints_down <= 4
    ):
        print("sandbox: --arc-endpoints-down N (1-4) goes with --demo --control-plane-down",
              file=sys.stderr)  # fmt: skip
        return EXIT_UNUSABLE
    if not 1 <= args.instances <= MAX_INSTANCES:
        print(
            f"sandbox: --instances must be 1..{MAX_INSTANCES}, got {args.instances}",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    missing = sandbox_extra_missing()
    if missing is not None:
        print(
            f"sandbox: the sandbox needs the 'sandbox' extra ({missing} is not installed):"
            " pip install 'failoverd[sandbox]'",
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


def sandbox_extra_missing() -> str | None:
    """What of the ``sandbox`` extra cannot be imported (moto in server mode: moto and its
    web stack), or None when the sandbox can start."""
    try:
        importlib.import_module("moto.server")
    except ImportError as exc:
        return exc.name or "moto[server]"
    return None


def env_lines(state: dict[str, Any]) -> list[str]:
    """Shell lines that point the CLI at the sandbox described by ``state`` (its run-file):
    the emulated AWS (the standard AWS_ENDPOINT_URL botocore honours, fake credentials) and
    the daemon's API, token and policies (the variables the CLI reads)."""
    q = shlex.quote
    lines = [
        f"export AWS_ENDPOINT_URL={q(state['aws_endpoint'])}",
        f"export AWS_ENDPOINT_URL_HEALTH={q(state['health_endpoint'])}",
    ]
    if state.get("region_switch"):
        # The Region switch emulator answers on its own endpoint (botocore's variable for
        # the "ARC Region switch" service).
        lines.append(f"export AWS_ENDPOINT_URL_ARC_REGION_SWITCH={q(state['region_switch'])}")
    lines += [
        "export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing",
        f"export AWS_DEFAULT_REGION={PRIMARY}",
        "unset AWS_PROFILE AWS_SESSION_TOKEN",
        f"export FAILOVERD_API={q(state['api'])}",
        f"export FAILOVERD_TOKEN_FILE={q(state['token_file'])}",
        f"export FAILOVERD_POLICIES={q(state['policies'])}",
    ]
    return lines


def _env() -> int:
    try:
        state = json.loads(pointer_file().read_text())
        lines = env_lines(state)
    except (OSError, ValueError, KeyError, TypeError):
        print(
            f"sandbox: no running sandbox found ({pointer_file()}); start one with"
            " `failoverd sandbox`",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    print(f'# failoverd sandbox {state.get("workdir", "")}: eval "$(failoverd sandbox env)"')
    print("\n".join(lines))
    return EXIT_OK


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


def sandbox_secrets(policies: Path, folder: Path) -> list[Path]:
    """Give the sandbox's policy copies secrets of their own: every step's ``secret_file``
    (the example's /etc/failoverd/secrets/...) points into ``folder``, where a fresh secret
    is written (0600), so that readiness and the steps find it. Returns the files made."""
    folder.mkdir(mode=0o700, exist_ok=True)
    made: list[Path] = []
    for path in sorted(policies.glob("*.yaml")):
        policy = yaml.safe_load(path.read_text(encoding="utf-8"))
        changed = False
        for steps in (policy.get("runbooks") or {}).values():
            for step in steps or ():
                params = step.get("params") or {}
                if isinstance(params.get("secret_file"), str):
                    secret = folder / Path(params["secret_file"]).name
                    if not secret.exists():
                        secret.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
                        secret.chmod(0o600)
                        made.append(secret)
                    params["secret_file"] = str(secret)
                    changed = True
        if changed:
            path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return made


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
    dns_address: str = ""
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
        # The ARC cluster (five endpoints) and the storefront, whose traffic it steers.
        self.arc = ArcClusterEmulator()
        await self.arc.start()
        stack.push_async_callback(self.arc.stop)
        self.storefront = await asyncio.to_thread(storefront.seed_storefront, self.moto, self.arc)

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
        # DNS as clients see it: the hosted zones answered by health, as Route 53 would.
        from orchestrator.sandbox.moto_route53_fixups import (  # moto: the sandbox extra
            health_status_from_backend,
            set_health_status_provider,
        )

        health = SandboxHealth(self.arc, self.endpoints.endpoints)
        set_health_status_provider(health_status_from_backend(health.healthy))
        stack.callback(set_health_status_provider, None)
        reader = Route53Reader(lambda: self.moto.client("route53", PRIMARY))
        self.dns = DnsServer(reader, health)
        await self.dns.start()
        stack.push_async_callback(self.dns.stop)
        self.dns_address = f"{self.dns.host}:{self.dns.port}"

        def lag(seconds: float) -> None:
            publish_lag(self.moto, seconds)

        self.faults = Faults(
            self.endpoints,
            self.health,
            lag,
            lag_seconds=DEFAULT_LAG,
            proxy=self.proxy,
            arc=self.arc,
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
        storefront.write_storefront_policy(
            policies,
            storefront.storefront_policy(
                self.storefront, self.arc.endpoints, ports, vantages, _fast_detection(vantages)
            ),
        )
        region_switch_world.write_policy(policies, ports, vantages)
        if self.extra_policies is not None:
            self.extra_policies(policies, ports, vantages)
        sandbox_secrets(policies, self.workdir / "secrets")
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
            # One subfolder per instance; `failoverd scenario export --config` finds it.
            "flight_recorder": {"path": str(self.workdir / "flight-recorder")},
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
            "dns": self.dns_address,
            "arc": self.arc.endpoints,
            "region_switch": self.region_switch.endpoint_url,
            "workdir": str(self.workdir),
            "pids": self.pids,
            "aws_endpoint": self.proxy.endpoint_url,
            "health_endpoint": self.health.endpoint_url,
            "policies": str(self.workdir / "policies"),
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
        host, port = self.dns_address.split(":")
        say(f"sandbox: dns          {self.dns_address} (dig @{host} -p {port} {storefront.NAME})")
        say("sandbox: arc cluster  " + " ".join(f"{r}={u}" for r, u in self.arc.endpoints.items()))
        say(f"sandbox: {self.broker_note}")
        say("sandbox: pids " + " ".join(f"{k}={v}" for k, v in self.pids.items()))
        say(
            "sandbox: the CLI against this sandbox (readiness, iam-policy, drill, status,"
            ' audit, commands): eval "$(failoverd sandbox env)", which sets'
        )
        state = json.loads((self.workdir / "sandbox.json").read_text())
        for line in env_lines(state):
            say(f"  {line}")
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
            feed = tasks.create_task(
                feed_lag(
                    sandbox.moto,
                    lambda: sandbox.faults.lag_seconds,
                    also=(storefront.publish_storefront_lag,),
                )
            )
            writes = tasks.create_task(feed_ledger_writes())
            try:
                if args.demo:
                    plan = (
                        storefront_plan(sandbox, args.arc_endpoints_down)
                        if args.control_plane_down
                        else webapp_plan(sandbox)
                    )
                    demo = run_demo(sandbox, args.deadline, plan)
                    return int(await _first(demo, stop, default=1))
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
    """``work``'s result, or ``default`` once ``stop`` is set (``work`` is then cancelled).
    An error of ``work`` is raised as itself, not inside an ExceptionGroup, so that callers'
    ``except`` clauses (a clear message instead of a traceback) see it."""
    try:
        async with asyncio.TaskGroup() as tasks:
            job = tasks.create_task(_as_coroutine(work))
            stopper = tasks.create_task(stop.wait())
            await asyncio.wait((job, stopper), return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not job.done():
                job.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
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


@dataclass(frozen=True)
class DemoPlan:
    """One scripted outage: the service watched, its name as clients ask DNS for it and the
    answer once traffic has moved, the faults, and how the world is checked afterwards."""

    service: str
    dns_name: str
    standby_answer: str  # a CNAME target, absolute
    faults: tuple[tuple[str, str], ...]
    flip_actions: frozenset[str]  # the step that moves traffic
    check_world: Callable[[], list[str]]  # blocking; what is wrong after the failover
    path: str | None = None  # appended to the last line as `path=...`
    # When traffic was switched as the switch itself saw it (the standby's routing control
    # turning On in the ARC cluster), or None: the flip step's end.
    switched_at: Callable[[], float | None] = lambda: None


def webapp_plan(sandbox: Sandbox) -> DemoPlan:
    """us-east-1 down; the webapp's runbook edits its Route 53 record."""
    return DemoPlan(
        service=SERVICE,
        dns_name=RECORD,
        standby_answer=endpoint_name(STANDBY) + ".",
        faults=(("region-down", PRIMARY),),
        flip_actions=frozenset({"route53.set_record"}),
        check_world=lambda: failover_problems(sandbox.moto, sandbox.zone_id),
    )


def storefront_plan(sandbox: Sandbox, arc_endpoints_down: int = 0) -> DemoPlan:
    """us-east-1 down with its control planes (and, optionally, more ARC endpoints: N of
    the 5 in all); the storefront fails over by routing controls."""
    faults: list[tuple[str, str]] = [("region-down", PRIMARY), ("control-plane-down", PRIMARY)]
    # us-east-1's endpoint goes with its control planes; the standby region's is the last
    # one left standing.
    others = [r for r in sandbox.arc.regions if r not in (PRIMARY, STANDBY)]
    extra = others[: max(0, arc_endpoints_down - 1)]
    if extra:
        faults.append(("arc-endpoint-down", ",".join(extra)))
    return DemoPlan(
        service=storefront.SERVICE,
        dns_name=storefront.NAME,
        standby_answer=storefront.endpoint_name(STANDBY) + ".",
        faults=tuple(faults),
        flip_actions=frozenset({"arc.set_routing_controls"}),
        check_world=lambda: storefront.failover_problems(
            sandbox.moto, sandbox.arc, sandbox.storefront
        ),
        path="data-plane",
        switched_at=lambda: sandbox.arc.changed_at(sandbox.storefront.routing_controls[STANDBY]),
    )


async def dns_answer(sandbox: Sandbox, name: str) -> str | None:
    """The CNAME the sandbox's DNS server answers for ``name`` (an A query, as a client
    asks), or None (no answer, or no server reply within a second)."""
    import dns.asyncquery
    import dns.exception
    import dns.message
    import dns.rdatatype

    query = dns.message.make_query(name, "A")
    try:
        reply = await dns.asyncquery.udp(
            query, sandbox.dns.host, port=sandbox.dns.port, timeout=1.0
        )
    except (dns.exception.DNSException, OSError):
        return None
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.CNAME:
            return str(rrset[0].target.to_text())
    return None


async def _dns_moved(sandbox: Sandbox, plan: DemoPlan, deadline: float) -> float:
    """The wall-clock time DNS first answered the standby (polled every 50 ms)."""
    while time.monotonic() < deadline:
        if await dns_answer(sandbox, plan.dns_name) == plan.standby_answer:
            return time.time()
        await asyncio.sleep(0.05)
    raise DemoFailed(f"DNS never answered {plan.standby_answer} for {plan.dns_name}")


async def run_demo(sandbox: Sandbox, within: float, plan: DemoPlan | None = None) -> int:
    """Steady state, the faults, the failover, traffic moved as DNS answers it, the world
    checked in the emulators."""
    plan = plan or webapp_plan(sandbox)
    deadline = time.monotonic() + within
    service_url = f"{sandbox.api_url}/v1/services/{plan.service}"
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            print(f"demo: waiting for {plan.service} steady in {PRIMARY}, both regions healthy")
            await _poll(http, service_url, _steady, deadline)
            before = await dns_answer(sandbox, plan.dns_name)
            print(f"demo: DNS {plan.dns_name} -> {before}")
            watcher = asyncio.ensure_future(_dns_moved(sandbox, plan, deadline))
            try:
                fault_at = time.time()
                for fault, arg in plan.faults:
                    print(f"demo: {await sandbox.faults.apply(fault, arg)}", flush=True)
                after = await _poll(http, service_url, _moved, deadline)
                moved_at = await watcher
            finally:
                watcher.cancel()
            run_id = after["run"]["run_id"]
            async with http.get(f"{sandbox.api_url}/v1/runs/{run_id}") as response:
                run = await response.json()
            others = await _others(http, sandbox) if plan.path else []
        problems = await asyncio.to_thread(plan.check_world)
        if problems:
            raise DemoFailed("the world is wrong: " + "; ".join(problems))
        return _timeline(fault_at, run, moved_at, plan, others)
    except DemoFailed as exc:
        print(f"demo: FAILED: {exc}", flush=True)
        return EXIT_FAILED


async def _others(http: aiohttp.ClientSession, sandbox: Sandbox) -> list[str]:
    """Where the webapp stands: it shares us-east-1 with the storefront, and its flip edits a
    Route 53 record, which Route 53's API, down with us-east-1, does not answer."""
    async with http.get(f"{sandbox.api_url}/v1/services/{SERVICE}") as response:
        body = await response.json()
    if not isinstance(body, dict) or "active_region" not in body:
        return []
    run = body.get("run") or {}
    steps = " ".join(f"{s['name']}={s['status']}" for s in run.get("steps", []))
    return [
        f"{SERVICE} (its flip edits a Route 53 record): active={body['active_region']}"
        f" phase={body['phase']} run={run.get('status', '-')} {steps}".rstrip()
    ]


def _timeline(
    fault_at: float,
    run: dict[str, Any],
    moved_at: float,
    plan: DemoPlan,
    others: list[str] | None = None,
) -> int:
    def at(t: float) -> str:
        return f"{t - fault_at:+7.2f}s"

    detected = run["detected_at"] if run["detected_at"] is not None else run["decided_at"]
    events: list[tuple[float, str]] = [(fault_at, f"fault: {f} {a}") for f, a in plan.faults]
    events.append((detected, f"detection: {PRIMARY} seen down"))
    events.append((run["decided_at"], f"decision: failover {run['source']} -> {run['target']}"))
    flipped_at = flip_started = run["decided_at"]
    for step in run["steps"]:
        started = step["started_at"] or run["decided_at"]
        duration = step["duration"] if step["duration"] is not None else 0.0
        events.append(
            (
                started,
                f"step {step['name']} ({step['action']}): {step['status']} in {duration:.2f}s",
            )
        )
        if step["action"] in plan.flip_actions and step["finished_at"]:
            flipped_at, flip_started = step["finished_at"], started
    switched = plan.switched_at()
    if switched is not None:
        flipped_at = switched
        events.append((switched, f"routing controls set: {run['target']} On, {PRIMARY} Off"))
    events.append((moved_at, f"traffic moved: DNS {plan.dns_name} -> {plan.standby_answer}"))
    events.append((run["finished_at"] or moved_at, f"run {run['run_id']} {run['status']}"))
    print("demo: timeline (seconds after the fault)")
    # In time order (a stable sort: what happened at the same moment keeps its order).
    for t, what in sorted(events, key=lambda e: e[0]):
        print(f"  {at(t)}  {what}")
    for line in others or []:
        print(f"demo: meanwhile {line}")
    detect_s = detected - fault_at
    flip_s = flipped_at - run["decided_at"]
    dns_s = moved_at - run["decided_at"]
    # flip_s: decision -> traffic switched (the steps before the flip included); of which
    # flip_step_s: the flip step's own start -> switched.
    print(
        f"demo: numbers detect_s={detect_s:.2f} flip_s={flip_s:.2f} dns_s={dns_s:.2f}"
        f" flip_step_s={max(0.0, flipped_at - flip_started):.2f}"
    )
    path = f" path={plan.path}" if plan.path else ""
    print(
        f"demo: failover to {run['target']} complete, detect_s={detect_s:.2f}"
        f" failover_s={dns_s:.2f} rto_budget_s={run['rto']:.0f}{path}",
        flush=True,
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

"""``failoverd run``: the daemon's wiring and supervision.

One :class:`asyncio.TaskGroup` owns everything: the controller (lease and engine loops, the
runs), the signal sources (each under :func:`supervise`, restarted together on reload), the
policy-file watcher and the HTTP API when it is available. SIGHUP or a changed policy file
reloads; SIGTERM/SIGINT drain (bounded) and exit 0; systemd hears READY/WATCHDOG/STATUS/
RELOADING/STOPPING through :class:`Notifier`.

Periodic jobs run on one apscheduler ``AsyncIOScheduler`` owned by :class:`DaemonJobs` (a
task of the same TaskGroup): readiness every 30 minutes (first shortly after start; kept on
the controller, ``Controller.readiness_report()``, and exported as metrics) and the
policies' scheduled drills, replaced on every reload. With a broker configured, an
:class:`EventPublisher` task streams decisions, state and run progress (fed by
:class:`EventBridge` from the controller's hooks) and takes operator commands when enabled.

AWS Health polling is deliberately *not* an apscheduler job: :class:`AwsHealthSource` keeps
state across polls (its backoff, the endpoint fallback to the other Health region, the open
events it has reported) and is a signal source like the others, so it must be cancelled and
rebuilt with them on reload; its own deadline loop on the injected clock does that and is
testable in virtual time, which an apscheduler job (wall clock) would not be.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from orchestrator.api.app import bound_port, make_app, replace_tokens, serve
from orchestrator.clock import SYSTEM_CLOCK, Clock, SteadyClock
from orchestrator.daemon.controller import Controller
from orchestrator.daemon.events import EventPublisher
from orchestrator.daemon.flight_recorder import FlightRecorder
from orchestrator.daemon.metrics_export import MetricsExporter, watch_loop_lag
from orchestrator.daemon.sdnotify import Notifier
from orchestrator.daemon.support import (
    DaemonJobs,
    EventBridge,
    ReadinessFn,
    policy_mtimes,
    reload_policies,
    supervise,
    try_load,
    tune_process,
)
from orchestrator.netguard import configure_webhooks
from orchestrator.policy.loader import PolicySet
from orchestrator.policy.models import Policy
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.readiness import ReadinessReport, readiness
from orchestrator.settings import (
    AgentKeySettings,
    AwsSettings,
    FlightRecorderSettings,
    HttpSettings,
    SettingsError,
    StateSettings,
)
from orchestrator.signals.agent_auth import NO_KEYS, Keyring, ReplayGuard
from orchestrator.signals.aws_clients import AwsClients
from orchestrator.signals.aws_health import health_sources
from orchestrator.signals.cloudwatch import CloudWatchAlarmSource
from orchestrator.signals.lag import ReplicationLagSource
from orchestrator.signals.mqtt_agents import BrokerConfig, BrokerConfigError, MqttAgentSource
from orchestrator.signals.probes import ProbeContext
from orchestrator.signals.scheduler import ProbeScheduler
from orchestrator.store.base import StoreError
from orchestrator.store.open import describe, open_store
from orchestrator.telemetry import WALL_CLOCK_OFFSET, configure_logging, get_logger

log = get_logger("failoverd.daemon")

DEFAULT_CONFIG = "/etc/failoverd/failoverd.yaml"
SHUTDOWN_GRACE = 6.0  # of the 10 s systemd and the issue allow; the rest is closing
STORE_RETRY_BASE, STORE_RETRY_CAP = 0.25, 5.0  # loading state while the store is unreachable


class ApiNotStarted(Exception):
    """The HTTP API could not listen (the address is taken, not local, not allowed)."""


@dataclass(frozen=True)
class DaemonSettings:
    """What the daemon needs. A stand-in until orchestrator/settings.py lands: only
    :func:`load_settings` builds it, so switching to the real Settings is one function."""

    node_id: str
    policies: tuple[str, ...]
    state_path: str = "/var/lib/failoverd/state.db"
    store_timeout: float = 2.0
    lease_ttl: float = 15.0
    tick: float = 1.0
    aws: AwsSettings = field(default_factory=AwsSettings)  # every AWS client is built from it
    arc_cluster_endpoints: tuple[tuple[str, str], ...] = ()  # the settings' arc section
    probes_max_concurrency: int = 256
    mqtt_url: str | None = None
    mqtt_broker: BrokerConfig | None = None  # TLS/credentials; None: built from mqtt_url
    mqtt_commands_enabled: bool = False
    mqtt_agent_keys: tuple[AgentKeySettings, ...] = ()
    readiness_interval: float = 30 * 60.0
    readiness_first_delay: float = 10.0
    http_bind: str = "127.0.0.1"
    http_port: int | None = None  # None: no HTTP API
    http_token_files: tuple[str, ...] = ()  # named tokens (api.auth); none: commands off
    http_advertise_url: str | None = None  # the API address announced with the lease
    http_allow_remote: bool = False
    http_allowed_hosts: tuple[str, ...] = ()
    probes_trust_ca_file: str | None = None
    webhook_allow_link_local: bool = False
    log_level: str = "info"
    log_json: bool | None = None  # None: JSON unless stderr is a terminal
    policy_poll_interval: float = 3.0
    state: StateSettings | None = None  # the store; None: SQLite at state_path
    flight_recorder: FlightRecorderSettings = field(default_factory=FlightRecorderSettings)
    extra: dict[str, Any] = field(default_factory=dict)

    def state_settings(self) -> StateSettings:
        if self.state is not None:
            return self.state
        return StateSettings(path=Path(self.state_path), timeout=self.store_timeout)

    def http_settings(self) -> HttpSettings:
        return HttpSettings(
            bind=self.http_bind,
            port=self.http_port or 0,
            allow_remote=self.http_allow_remote,
            token_file=[Path(p) for p in self.http_token_files] or None,
            advertise_url=self.http_advertise_url,
        )

    def tokens(self) -> dict[str, str] | None:
        """The API's named tokens, read from the token files now (SettingsError naming the
        file when one cannot be used: missing, empty, malformed)."""
        return self.http_settings().tokens()


def load_settings(path: str | None, env: Mapping[str, str] | None = None) -> DaemonSettings:
    """The daemon's view of :class:`orchestrator.settings.Settings` (file + FAILOVERD_*
    environment; raises SourceErrors naming file:line or the variable)."""
    from orchestrator.settings import load_settings as load

    s = load(path, os.environ if env is None else env)
    return DaemonSettings(
        node_id=s.node_id,
        policies=tuple(str(p) for p in s.policies),
        state_path=str(s.state.path),
        store_timeout=s.state.timeout,
        state=s.state,
        flight_recorder=s.flight_recorder,
        lease_ttl=s.leader.ttl,
        tick=s.engine.tick,
        aws=s.aws,
        arc_cluster_endpoints=tuple(s.arc.cluster_endpoints.items()),
        probes_max_concurrency=s.probes.max_concurrency,
        mqtt_url=s.mqtt.broker,
        mqtt_broker=s.mqtt.broker_config(),
        mqtt_commands_enabled=s.mqtt.commands_enabled,
        mqtt_agent_keys=tuple(s.mqtt.agent_keys),
        http_bind=s.http.bind,
        http_port=s.http.port,
        http_token_files=tuple(str(p) for p in s.http.token_file or ()),
        http_advertise_url=s.http.advertise_url,
        http_allow_remote=s.http.allow_remote,
        http_allowed_hosts=tuple(s.http.allowed_hosts),
        probes_trust_ca_file=str(s.probes.trust_ca_file) if s.probes.trust_ca_file else None,
        webhook_allow_link_local=s.webhook.allow_link_local,
        log_level=s.log.level,
        log_json=s.log.json_output,
    )


class Daemon:
    def __init__(
        self,
        settings: DaemonSettings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        notifier: Notifier | None = None,
        readiness_fn: ReadinessFn | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.notifier = notifier or Notifier.from_env()
        self.aws = AwsClients.from_settings(
            settings.aws, clock=clock, arc_cluster_endpoints=dict(settings.arc_cluster_endpoints)
        )
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._ready_sent = False
        self._sources: asyncio.Task[None] | None = None
        self._readiness_fn = readiness_fn or self._readiness
        self.jobs: DaemonJobs | None = None
        self._keyring: Keyring = NO_KEYS
        self._replay = ReplayGuard()  # one for every agent source built, across reloads
        self._api: web.Application | None = None
        self.recorder: FlightRecorder | None = None

    async def _readiness(self, policies: Sequence[Policy]) -> ReadinessReport:
        return await readiness(policies, self.aws, self.clock)

    def preflight(self) -> str | None:
        """Read every secret and TLS file the daemon will use, so that an unusable one
        (missing, empty, readable by others) is a clear error at start, not the crash of a
        task once running. The files are read again where used (a rotated one is picked
        up)."""
        s = self.settings
        try:
            if s.http_port is not None:
                s.tokens()  # every token file: readable by the daemon only, well formed
            broker = self.broker()
            if broker is not None:
                broker.check()
            self._keyring = self._read_agent_keys()
        except (SettingsError, BrokerConfigError) as exc:
            return str(exc)
        if s.http_port is not None and s.http_allow_remote and not s.http_token_files:
            log.warning(
                "api_remote_without_token",
                bind=s.http_bind,
                why="reads are open to the network and mutating calls are disabled",
            )
        return None

    def broker(self) -> BrokerConfig | None:
        s = self.settings
        if s.mqtt_broker is not None:
            return s.mqtt_broker
        return BrokerConfig.from_url(s.mqtt_url) if s.mqtt_url else None

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self) -> int:
        s = self.settings
        problem = self.preflight()
        if problem is not None:
            log.error("daemon_not_started", why=problem)
            return 2
        tokens = s.tokens()  # checked by the preflight; read again here, for the API
        policies = await try_load(s.policies)
        if policies is None:
            log.error("daemon_not_started", why="the policies have errors")
            return 2
        state = s.state_settings()
        try:
            store = await open_store(state, clock=self.clock)
        except (StoreError, SettingsError) as exc:
            log.error("daemon_not_started", why=str(exc))
            return 2
        log.info("state_store_opened", **describe(state))
        controller = Controller(
            policies,
            store,
            self.aws,
            node_id=s.node_id,
            clock=self.clock,
            lease_ttl=s.lease_ttl,
            tick=s.tick,
        )
        self.recorder = self._flight_recorder(controller, state)
        try:
            controller.on_tick.append(lambda: self._ticked(controller))
            MetricsExporter(controller, self.clock, backend=state.backend).install()
            await self._supervise(controller, tokens)
        except ApiNotStarted as exc:
            log.error("daemon_not_started", why=str(exc))
            return 2
        finally:
            await controller.close()
            await store.close()
        log.info("daemon_stopped")
        return 0

    def _flight_recorder(
        self, controller: Controller, state: StateSettings
    ) -> FlightRecorder | None:
        """The flight recorder, hooked to the controller (None when off or its folder cannot
        be made: the daemon runs without it and says so)."""
        s = self.settings.flight_recorder
        if not s.enabled:
            return None
        folder = s.folder(state, self.settings.node_id)
        recorder = FlightRecorder(
            folder,
            lead=s.lead,
            after=s.after,
            max_bytes=s.max_bytes,
            segment=s.segment,
            node_id=self.settings.node_id,
            tick=self.settings.tick,
            clock=self.clock,
        )
        try:
            recorder.load()
        except OSError as exc:
            log.warning("flight_recorder_unavailable", folder=str(folder), error=str(exc))
            return None
        recorder.attach(controller)
        controller.recorder = recorder
        controller.on_decision.append(recorder.decision)
        log.info("flight_recorder_started", folder=str(folder))
        return recorder

    def _ticked(self, controller: Controller) -> None:
        if not controller.evaluated:
            return
        if not self._ready_sent:
            self._ready_sent = True
            log.info("daemon_ready", services=len(controller.services()))
            self.notifier.ready(controller.summary())
        self.notifier.watchdog()
        self.notifier.status(controller.summary())

    async def _supervise(self, controller: Controller, tokens: dict[str, str] | None) -> None:
        loop = asyncio.get_running_loop()
        for sig, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            loop.add_signal_handler(sig, handler)
        try:
            async with asyncio.TaskGroup() as tg:
                # The API first: its address is announced with the lease the core takes.
                api = await self._start_api(controller, tokens, tg)
                core = tg.create_task(self._core(controller))
                loop_lag = tg.create_task(watch_loop_lag(self.clock))
                events = self._start_events(controller, tg)
                self.jobs = DaemonJobs(
                    controller,
                    self._readiness_fn,
                    self.clock,
                    readiness_interval=self.settings.readiness_interval,
                    first_delay=self.settings.readiness_first_delay,
                )
                jobs = tg.create_task(self.jobs.run())
                watcher = tg.create_task(self._watch(controller, tg))
                recording = None
                if self.recorder is not None:
                    recording = tg.create_task(self.recorder.run(controller))
                self._sources = tg.create_task(self._run_sources(controller.policy_set, controller))
                log.info("daemon_started", node_id=self.settings.node_id)
                await self._stop.wait()
                self.notifier.stopping()
                log.info("daemon_stopping")
                watcher.cancel()
                jobs.cancel()  # no drill or readiness check starts while draining
                await controller.drain(SHUTDOWN_GRACE)
                for task in (self._sources, core, api, events, loop_lag, recording):
                    if task is not None:
                        task.cancel()
        finally:
            if self.recorder is not None:
                self.recorder.close(controller)  # what was queued since its last write
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _core(self, controller: Controller) -> None:
        """Load the services' state, then run the controller. The store may be unreachable
        at start (an etcd outage, a member being replaced): the daemon waits for it, its
        API up and /readyz saying why it is not ready, rather than exiting into a restart
        loop that would throw the health windows away each time."""
        failures = 0
        while True:
            try:
                await controller.load()
                break
            except StoreError as exc:
                failures += 1
                delay = min(STORE_RETRY_CAP, STORE_RETRY_BASE * 2 ** min(failures, 8))
                delay = random.uniform(delay / 2, delay)
                log.warning(
                    "state_store_unreachable",
                    error=str(exc) or type(exc).__name__,
                    attempt=failures,
                    retry_in=round(delay, 2),
                )
                await self.clock.sleep(delay)
        if failures:
            log.info("state_store_reachable", attempts=failures + 1)
        await controller.run()

    def _start_events(
        self, controller: Controller, tg: asyncio.TaskGroup
    ) -> asyncio.Task[None] | None:
        broker = self.broker()
        if broker is None:
            return None
        commands = controller.command if self.settings.mqtt_commands_enabled else None
        publisher = EventPublisher(broker, commands=commands, clock=self.clock)
        EventBridge(controller, publisher).attach()
        log.info("event_stream_enabled", broker=broker.url, commands=commands is not None)
        return tg.create_task(publisher.run())

    async def _start_api(
        self, controller: Controller, tokens: dict[str, str] | None, tg: asyncio.TaskGroup
    ) -> asyncio.Task[None] | None:
        """Listen (ApiNotStarted when the address cannot be bound), tell the controller the
        address to announce, and return the task that owns the listener."""
        s = self.settings
        if s.http_port is None:
            return None
        app = make_app(
            controller, tokens=tokens, bind=s.http_bind, allowed_hosts=s.http_allowed_hosts
        )
        try:
            runner = await serve(app, s.http_bind, s.http_port, allow_remote=s.http_allow_remote)
        except (OSError, ValueError) as exc:
            raise ApiNotStarted(f"the HTTP API on {s.http_bind}:{s.http_port}: {exc}") from None
        self._api = app
        controller.api_address = s.http_settings().api_url(bound_port(runner))
        log.info("api_tokens_loaded", labels=sorted(tokens or {}), commands_enabled=bool(tokens))

        async def api() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()

        return tg.create_task(api())

    def reload_tokens(self) -> bool:
        """Read the token files again (SIGHUP): revoked tokens stop working at once. A file
        that cannot be used keeps the tokens in force (and says why)."""
        if self._api is None:
            return False
        try:
            tokens = self.settings.tokens()
        except SettingsError as exc:
            log.error("api_tokens_not_reloaded", why=str(exc), kept="the tokens in force")
            return False
        replace_tokens(self._api, tokens)
        log.info("api_tokens_reloaded", labels=sorted(tokens or {}))
        return True

    async def _watch(self, controller: Controller, tg: asyncio.TaskGroup) -> None:
        """Reload on SIGHUP or on a policy file's change (polled: no inotify needed)."""
        paths = self.settings.policies
        seen = policy_mtimes(paths)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.policy_poll_interval):
                    await self._reload.wait()
            why = "sighup" if self._reload.is_set() else ""
            self._reload.clear()
            now = policy_mtimes(paths)
            if not why and now != seen:
                why = "file_changed"
            seen = now
            if not why:
                continue
            self.notifier.reloading()
            if why == "sighup":
                self.reload_tokens()
            if await reload_policies(controller, paths, why):
                if self.jobs is not None:
                    self.jobs.replace_drills(controller.policy_set)
                if self._sources is not None:
                    self._sources.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._sources
                self._sources = tg.create_task(self._run_sources(controller.policy_set, controller))
            self.notifier.ready(controller.summary())

    def _read_agent_keys(self) -> Keyring:
        return Keyring([k.load() for k in self.settings.mqtt_agent_keys])

    def _reread_agent_keys(self) -> None:
        """On reload: rotated key files are picked up; a file that cannot be read now keeps
        the keys in use (and says why)."""
        try:
            self._keyring = self._read_agent_keys()
        except SettingsError as exc:
            log.error("agent_keys_not_reloaded", why=str(exc))
            return
        if self._keyring.enforcing:
            log.info(
                "agent_keys_loaded", keys=len(self._keyring), agents=sorted(self._keyring.agents)
            )

    async def _run_sources(self, policies: PolicySet, controller: Controller) -> None:
        """Every signal source for ``policies``, each supervised, until cancelled."""
        s = self.settings
        items = list(policies)
        trust = s.probes_trust_ca_file
        async with (
            ProbeContext(trust_ca_file=trust, clock=self.clock) as ctx,
            asyncio.TaskGroup() as tg,
        ):
            runs: list[tuple[str, Callable[[], Awaitable[None]]]] = []
            probes = ProbeScheduler(
                items,
                "local",
                ctx.make_prober,
                clock=self.clock,
                max_concurrency=s.probes_max_concurrency,
            )
            runs.append((probes.name, lambda: probes.run(controller)))
            for health in health_sources(items, self.aws, s.aws, clock=self.clock):
                runs.append((health.name, functools.partial(health.run, controller)))
            alarms = CloudWatchAlarmSource(items, self.aws, self.clock)
            if alarms.watches:
                runs.append((alarms.name, lambda: alarms.run(controller)))
            lag = ReplicationLagSource(items, self.aws, self.clock)
            if lag.watches:
                runs.append((lag.name, lambda: lag.run(controller)))
            broker = self.broker()
            if broker is not None:
                self._reread_agent_keys()  # at start the same keys; on reload rotated ones
                agents = MqttAgentSource(
                    broker, items, clock=self.clock, keyring=self._keyring, replay=self._replay
                )
                runs.append((agents.name, lambda: agents.run(controller)))
            for name, run in runs:
                tg.create_task(supervise(name, run, self.clock))
            log.info("signal_sources_started", sources=[name for name, _ in runs])


# -- CLI ---------------------------------------------------------------------------------
def add_run_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run", help="run the failover daemon (foreground; systemd Type=notify)"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="settings file (default: $FAILOVERD_CONFIG, else /etc/failoverd/failoverd.yaml;"
        " a missing default file means defaults)",
    )
    return parser


def run_daemon(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get("FAILOVERD_CONFIG") or None
    try:
        settings = load_settings(path)
    except SourceErrors as exc:
        for error in exc.errors:
            print(f"failoverd run: {error}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"failoverd run: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json=settings.log_json)
    configure_webhooks(allow_link_local=settings.webhook_allow_link_local)
    tune_process()  # the process's own: not in Daemon.run, which tests run in theirs
    try:
        return asyncio.run(Daemon(settings, clock=SteadyClock(on_step=wall_clock_stepped)).run())
    except Exception:
        # A bug, not bad input: one event (its traceback inside, redacted), not a dump of
        # lines that breaks the JSON log; exit 1 so that systemd restarts it.
        log.exception("daemon_crashed")
        return 1


def wall_clock_stepped(offset: float) -> None:
    """The host's clock moved away from the daemon's steady one: say so, keep going."""
    WALL_CLOCK_OFFSET.set(offset)
    log.warning("wall_clock_stepped", offset_seconds=round(offset, 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="failoverd")
    add_run_parser(parser.add_subparsers(dest="command", required=True))
    return run_daemon(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""``failoverd agent``: a remote probe agent, one more vantage point for the quorum.

It loads the same policies as the daemon, runs the probes whose vantage list names this
agent, and publishes what it sees to the MQTT broker (wire format:
:mod:`orchestrator.signals.agent_wire`), batched: every ``--flush-interval`` or every
``--max-batch`` observations, whichever comes first.

Presence: on connect it publishes a retained ``online`` status; its MQTT last will is a
retained ``offline``, so the broker announces an agent that died. SIGINT/SIGTERM flush
what is buffered, publish ``offline``, disconnect and exit 0.

With ``--key-file`` (and ``--key-id``, default: the agent id) every message is signed
(HMAC-SHA256, :mod:`orchestrator.signals.agent_auth`): the daemon, given the same key,
refuses anything this agent did not send. The key file is read like every secret file
(first line; refused when group- or world-readable).

Time: the agent stamps observations with a :class:`~orchestrator.clock.SteadyClock`, so a
step of its host's clock does not make its reports look stale or from the future.

Delivery is at most once per batch: a batch whose publish failed is not sent again, since
a duplicate would count a failure twice in the daemon's health book (a false ``down`` is
worse than a missing sample, which only makes the view go stale, i.e. unknown). Batches
not yet attempted wait in a bounded buffer while the broker is away, and observations that
have grown older than their policy's staleness are dropped instead of sent.

Exit codes: 0 stopped by a signal; 1 failed while running; 2 unusable configuration (bad
agent id, broker URL, TLS or password file, invalid policies, no probe for this agent).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiomqtt

from orchestrator import mqtt_calls
from orchestrator.clock import SYSTEM_CLOCK, Clock, SteadyClock
from orchestrator.engine.observation import Observation
from orchestrator.policy.durations import DurationError, parse_duration
from orchestrator.policy.loader import PolicySet, load_policy_set
from orchestrator.policy.models import Policy
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.signals.agent_auth import AgentKey, AgentKeyError
from orchestrator.signals.agent_wire import (
    DEFAULT_LIMITS,
    AgentState,
    Catalog,
    Sender,
    WireLimits,
    check_agent_id,
    observations_topic,
    status_topic,
)
from orchestrator.signals.base import ObservationSink
from orchestrator.signals.mqtt_agents import Backoff, BrokerConfig, BrokerConfigError
from orchestrator.telemetry import MQTT_CONNECTED, configure_logging, get_logger

log = get_logger("failoverd.agent")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2


class ObservationProducer(Protocol):
    """What feeds the agent: anything that, like a SignalSource, puts observations into
    the sink until cancelled. ``at`` must be Unix seconds (``Clock.now()``)."""

    async def run(self, sink: ObservationSink) -> None: ...


ProducerFactory = Callable[[PolicySet, str, Clock], ObservationProducer]


class ProbeProducer:
    """The default producer: the probe scheduler with this agent as its vantage point, its
    probers sharing one ProbeContext that is open while :meth:`run` runs."""

    def __init__(self, policies: Iterable[Policy], agent_id: str, clock: Clock) -> None:
        # Imported here: the probe stack (aiohttp, dnspython) is only needed by a real agent.
        from orchestrator.signals.probes import ProbeContext
        from orchestrator.signals.scheduler import ProbeScheduler

        self._context = ProbeContext(clock=clock)
        # Builds every prober now, so a target that cannot be probed fails at start-up.
        self._scheduler = ProbeScheduler(policies, agent_id, self._context.make_prober, clock=clock)

    async def run(self, sink: ObservationSink) -> None:
        async with self._context:
            await self._scheduler.run(sink)


def probe_producer(policies: PolicySet, agent_id: str, clock: Clock) -> ObservationProducer:
    return ProbeProducer(policies, agent_id, clock)


# ---------------------------------------------------------------------------------------
# The buffer between producer and publisher


class Outbox:
    """A bounded FIFO of observations waiting to be published (the producer's sink).

    ``put`` never blocks and never raises; when full, the oldest observation goes (it is
    the first to turn stale anyway) and is counted in ``overflowed``; one without a finite
    time is counted in ``invalid``. ``ready`` is set once a full batch is waiting.
    """

    def __init__(self, limit: int, batch: int) -> None:
        self._items: deque[Observation] = deque()
        self._limit = limit
        self._batch = batch
        self.ready = asyncio.Event()
        self.overflowed = 0
        self.invalid = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, obs: Observation) -> None:
        if not math.isfinite(obs.at):
            self.invalid += 1  # no time to hold it against: the daemon would refuse it
            return
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.overflowed += 1
        self._items.append(obs)
        if len(self._items) >= self._batch:
            self.ready.set()

    def take(self, n: int) -> list[Observation]:
        items = self._items
        return [items.popleft() for _ in range(min(n, len(items)))]

    def requeue(self, observations: Sequence[Observation]) -> None:
        """Put back, in front, what could not be sent; the oldest go if that overfills."""
        room = self._limit - len(self._items)
        keep = list(observations)[-room:] if room > 0 else []
        self.overflowed += len(observations) - len(keep)
        self._items.extendleft(reversed(keep))


# ---------------------------------------------------------------------------------------
# The agent


@dataclass(frozen=True, slots=True)
class AgentSettings:
    agent_id: str
    broker: BrokerConfig
    flush_interval: float = 1.0
    max_batch: int = 100
    buffer_limit: int = 10_000
    shutdown_timeout: float = 3.0  # bound of the final flush + offline status
    key: AgentKey | None = None  # sign every message with it

    def __post_init__(self) -> None:
        problem = check_agent_id(self.agent_id)
        if problem:
            raise ValueError(problem)
        if self.key is not None and self.key.agent != self.agent_id:
            raise ValueError(f"key {self.key.key_id!r} is not agent {self.agent_id!r}'s")
        if not (math.isfinite(self.flush_interval) and 0 < self.flush_interval <= 60):
            raise ValueError(
                f"flush interval must be in (0, 60] seconds, got {self.flush_interval}"
            )
        if not 1 <= self.max_batch <= DEFAULT_LIMITS.max_batch:
            raise ValueError(
                f"max batch must be in 1..{DEFAULT_LIMITS.max_batch}, got {self.max_batch}"
            )
        if self.buffer_limit < self.max_batch:
            raise ValueError("the buffer limit must hold at least one batch")
        if not (math.isfinite(self.shutdown_timeout) and self.shutdown_timeout > 0):
            raise ValueError(f"shutdown timeout must be positive, got {self.shutdown_timeout}")


class Agent:
    """Runs the producer and publishes its observations; :meth:`run` returns only by
    cancellation (after a bounded goodbye: final flush and ``offline`` status) or when
    the producer fails (its exception, in an ExceptionGroup)."""

    def __init__(
        self,
        settings: AgentSettings,
        policies: Iterable[Policy],
        producer: ObservationProducer,
        *,
        clock: Clock = SYSTEM_CLOCK,
        backoff: Backoff | None = None,
        limits: WireLimits = DEFAULT_LIMITS,
    ) -> None:
        settings.broker.check()
        self.settings = settings
        self._catalog = Catalog.from_policies(policies)
        self._producer = producer
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._limits = limits
        self._outbox = Outbox(settings.buffer_limit, settings.max_batch)
        self._sender = Sender(settings.agent_id, settings.key)
        self._obs_topic = observations_topic(settings.agent_id)
        self._status_topic = status_topic(settings.agent_id)
        self.connected = False
        self.published = 0  # observations handed to the broker
        self.expired = 0  # dropped as stale before sending
        self.lost = 0  # in a batch whose publish failed

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._producer.run(self._outbox), name="agent-producer")
            tasks.create_task(self._publish_forever(), name="agent-publisher")

    async def _publish_forever(self) -> None:
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                log.warning(
                    "agent_disconnected",
                    agent=self.settings.agent_id,
                    broker=self.settings.broker.url,
                    error=str(exc),
                    was_connected=self.connected,
                )
            except BrokerConfigError as exc:
                log.error("mqtt_config_error", agent=self.settings.agent_id, error=str(exc))
            except Exception:
                # A bug in publishing must not silence the agent for good: log, reconnect.
                log.exception("agent_publisher_error", agent=self.settings.agent_id)
            finally:
                self._set_connected(False)
            delay = self._backoff.next_delay()
            log.info(
                "mqtt_reconnect_scheduled", agent=self.settings.agent_id, delay=round(delay, 3)
            )
            await self._clock.sleep(delay)

    async def _session(self) -> None:
        agent = self.settings.agent_id
        online, offline = self._sender.online_and_will(self._clock.now())
        will = aiomqtt.Will(self._status_topic, offline, qos=1, retain=True)
        # A fixed client id: a restarted agent takes over its old session at once, instead
        # of a half-dead twin lingering until its keepalive runs out.
        client = self.settings.broker.client(identifier=f"failoverd-agent-{agent}", will=will)
        async with client:
            await mqtt_calls.publish(
                client,
                self._status_topic,
                online,
                qos=1,
                retain=True,
                within=self.settings.broker.timeout,
            )
            self._set_connected(True)
            self._backoff.reset()
            log.info("agent_connected", agent=agent, broker=self.settings.broker.url)
            try:
                while True:
                    await self._wait_for_batch()
                    await self._flush(client)
            except asyncio.CancelledError:
                await self._goodbye(client)
                raise

    async def _wait_for_batch(self) -> None:
        # Pacing only, on the event loop's time; timestamps and backoff use the clock.
        outbox = self._outbox
        if len(outbox) < self.settings.max_batch:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.flush_interval):
                    await outbox.ready.wait()
        outbox.ready.clear()

    async def _flush(self, client: aiomqtt.Client) -> None:
        outbox = self._outbox
        if outbox.overflowed or outbox.invalid:
            log.warning(
                "agent_observations_discarded",
                agent=self.settings.agent_id,
                overflowed=outbox.overflowed,
                invalid=outbox.invalid,
            )
            outbox.overflowed = outbox.invalid = 0
        while len(outbox):
            items = outbox.take(self.settings.max_batch)
            now = self._clock.now()
            fresh = [o for o in items if not self._expired(o, now)]
            if len(fresh) < len(items):
                self.expired += len(items) - len(fresh)
                log.info(
                    "agent_observations_expired",
                    agent=self.settings.agent_id,
                    count=len(items) - len(fresh),
                )
            chunks = list(self._sender.batches(fresh, now, self._limits))
            for i, (payload, carried) in enumerate(chunks):
                try:
                    await mqtt_calls.publish(
                        client,
                        self._obs_topic,
                        payload,
                        qos=1,
                        within=self.settings.broker.timeout,
                    )
                except BaseException:
                    outbox.requeue([o for _, later in chunks[i + 1 :] for o in later])
                    self.lost += len(carried)
                    log.warning(
                        "agent_batch_lost", agent=self.settings.agent_id, count=len(carried)
                    )
                    raise
                self.published += len(carried)

    def _expired(self, obs: Observation, now: float) -> bool:
        staleness = self._catalog.staleness(obs.service)
        return staleness is not None and now - obs.at > staleness

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """Flush and say ``offline`` before the clean disconnect (which discards the will)."""
        agent = self.settings.agent_id
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout):
                await self._flush(client)
                await mqtt_calls.publish(
                    client,
                    self._status_topic,
                    self._sender.status(AgentState.OFFLINE, self._clock.now()),
                    qos=1,
                    retain=True,
                    within=self.settings.broker.timeout,
                )
            log.info("agent_offline_published", agent=agent)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("agent_goodbye_failed", agent=agent, error=str(exc) or type(exc).__name__)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        MQTT_CONNECTED.set(1 if connected else 0)


# ---------------------------------------------------------------------------------------
# Command line


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", dest="agent_id", required=True, help="this agent's id (vantage point)")
    p.add_argument(
        "--broker", required=True, metavar="URL", help="mqtt://host[:port] or mqtts://host[:port]"
    )
    p.add_argument(
        "--policies",
        action="append",
        metavar="PATH",
        help="policy file or folder; repeatable (default: policies)",
    )
    p.add_argument("--tls-ca", metavar="FILE", help="CA bundle to verify the broker (mqtts)")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", metavar="FILE", help="client certificate's private key")
    p.add_argument(
        "--tls-insecure",
        action="store_true",
        help="do not check the broker's hostname against its certificate",
    )
    p.add_argument("--username", help="broker username")
    p.add_argument(
        "--password-file", metavar="FILE", help="file holding the broker password (first line)"
    )
    p.add_argument(
        "--key-file",
        metavar="FILE",
        help="file holding this agent's signing key (first line; at least 32 characters,"
        " e.g. from `openssl rand -hex 32`); the daemon needs the same key",
    )
    p.add_argument(
        "--key-id", metavar="ID", help="the key's id, sent with each message (default: --id)"
    )
    p.add_argument(
        "--flush-interval", default="1s", metavar="DURATION", help="publish at least this often"
    )
    p.add_argument(
        "--max-batch", type=int, default=100, metavar="N", help="publish once N are waiting"
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning, error")


def add_agent_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``agent`` subcommand; dispatch it with ``run_agent(args)``."""
    p = subparsers.add_parser(
        "agent",
        help="run a remote probe agent that publishes observations over MQTT",
        description="Run the probes that name this agent as a vantage point and publish the"
        " observations to an MQTT broker. Exit codes: 0 stopped by a signal; 1 failed while"
        " running; 2 unusable configuration.",
    )
    _add_arguments(p)
    return p


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _settings(args: argparse.Namespace) -> AgentSettings:
    try:
        flush = parse_duration(args.flush_interval)
    except DurationError as exc:
        raise ValueError(f"--flush-interval: {exc}") from None
    broker = BrokerConfig.from_url(
        args.broker,
        ca_file=_path(args.tls_ca),
        cert_file=_path(args.tls_cert),
        key_file=_path(args.tls_key),
        tls_insecure=args.tls_insecure,
        username=args.username,
        password_file=_path(args.password_file),
    )
    broker.check()
    return AgentSettings(
        args.agent_id,
        broker,
        flush_interval=flush,
        max_batch=args.max_batch,
        key=_key(args),
    )


def _key(args: argparse.Namespace) -> AgentKey | None:
    if args.key_file is None:
        if args.key_id is not None:
            raise ValueError("--key-id needs --key-file")
        return None
    # Imported here: settings pull in pydantic-settings, which only this path needs.
    from orchestrator.settings import read_secret_file

    secret = read_secret_file(Path(args.key_file), "--key-file")
    try:
        return AgentKey.from_text(args.agent_id, args.key_id or args.agent_id, secret)
    except AgentKeyError as exc:
        raise ValueError(f"--key-file: {exc}") from None


def _err(text: str) -> None:
    print(f"failoverd agent: {text}", file=sys.stderr)


def run_agent(
    args: argparse.Namespace,
    *,
    producer_factory: ProducerFactory | None = None,
    clock: Clock | None = None,
) -> int:
    """Run the agent until SIGINT/SIGTERM; return the exit code."""
    clock = clock or SteadyClock()
    configure_logging(args.log_level)
    problem = check_agent_id(args.agent_id)
    if problem:
        _err(f"--id: {problem}")
        return EXIT_UNUSABLE
    try:
        settings = _settings(args)
    except ValueError as exc:  # BrokerConfigError is one
        _err(str(exc))
        return EXIT_UNUSABLE
    paths: list[str] = args.policies or ["policies"]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        _err(f"--policies: no such file or folder: {', '.join(missing)}")
        return EXIT_UNUSABLE
    try:
        policies = load_policy_set(paths)
    except SourceErrors as exc:
        for error in exc.errors:
            _err(str(error))
        return EXIT_UNUSABLE
    signals = Catalog.from_policies(policies).signals_of(settings.agent_id)
    if not signals:
        _err(
            f"agent {settings.agent_id!r} is not a vantage point of any probe signal in"
            f" {', '.join(paths)}: add it to a policy's vantage_points"
        )
        return EXIT_UNUSABLE
    try:
        producer = (producer_factory or probe_producer)(policies, settings.agent_id, clock)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_UNUSABLE
    agent = Agent(settings, policies, producer, clock=clock)
    log.info(
        "agent_starting",
        agent=settings.agent_id,
        broker=settings.broker.url,
        policy_version=policies.version,
        signals=[f"{service}/{name}" for service, name in signals],
    )
    return asyncio.run(_serve(agent))


async def _serve(agent: Agent) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    code = EXIT_OK
    try:
        async with asyncio.TaskGroup() as tasks:
            runner = tasks.create_task(agent.run(), name="agent")
            stopper = tasks.create_task(stop.wait(), name="agent-stop")
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            runner.cancel()
            stopper.cancel()
    except* Exception as group:
        for exc in group.exceptions:
            log.error("agent_failed", agent=agent.settings.agent_id, error=repr(exc))
        code = EXIT_FAILED
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    log.info("agent_stopped", agent=agent.settings.agent_id, published=agent.published)
    return code


def main(
    argv: Sequence[str] | None = None, *, producer_factory: ProducerFactory | None = None
) -> int:
    """``python -m orchestrator.agent``: the same as ``failoverd agent``."""
    parser = argparse.ArgumentParser(
        prog="failoverd agent", description="Run a remote probe agent (MQTT)."
    )
    _add_arguments(parser)
    return run_agent(parser.parse_args(argv), producer_factory=producer_factory)


if __name__ == "__main__":
    raise SystemExit(main())

"""The MQTT event stream: what the daemon decides and does, for dashboards and chat bots, and
operator commands over MQTT when enabled.

Topics (JSON bodies, every one with ``"v": 1``, ``type``, ``service`` and ``at``):

* ``failoverd/v1/events/<service>/<type>`` — ``decision`` (only when the decision's phase,
  action, target or reasons change), ``phase`` (when the phase changes), ``run_started``,
  ``step_started``, ``step_finished``, ``run_finished`` (with the RTO numbers);
* ``failoverd/v1/state/<service>`` — retained: active region, phase, reasons, paused, run;
* ``failoverd/v1/commands/<service>`` — operator commands, read only when enabled;
* ``failoverd/v1/command-results/<service>`` — what became of each command.

Callers never wait and never see an error: ``publish_*`` put events in a bounded queue (when
it is full the oldest event is dropped and counted) and :meth:`EventPublisher.run`, a task
the daemon owns, drains it, reconnecting with jittered backoff when the broker goes away.
State documents are not queued but kept latest-per-service and (re)published on every
connection, so a broker restart (which loses retained messages) is repaired at once and a
full queue never loses the current state.

Commands are refused unless they are a fresh (non-retained) message of at most
``MAX_COMMAND_BYTES`` that validates strictly against :class:`CommandMessage`; a retained
command would otherwise be replayed to the daemon on every reconnection. Who may publish
commands is the broker's business (ACLs), as for agents.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import mqtt_calls
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.daemon.control import CommandResult, NotLeaderError, ServiceSnapshot
from orchestrator.engine.state import Command, CommandSource, Decision, OperatorCommand, RunStatus
from orchestrator.policy.models import NAME_PATTERN, REGION_PATTERN
from orchestrator.runbook.journal import StepStatus
from orchestrator.runbook.rto import RunProgress, StepProgress
from orchestrator.signals.mqtt_agents import Backoff, BrokerConfig, BrokerConfigError
from orchestrator.telemetry import (
    EVENTS_CONNECTED,
    EVENTS_DROPPED,
    EVENTS_PUBLISHED,
    EVENTS_QUEUED,
    MQTT_COMMANDS,
    get_logger,
)

log = get_logger("failoverd.events")

WIRE_VERSION = 1
EVENTS_PREFIX = "failoverd/v1/events"
STATE_PREFIX = "failoverd/v1/state"
COMMANDS_PREFIX = "failoverd/v1/commands"
RESULTS_PREFIX = "failoverd/v1/command-results"
MAX_COMMAND_BYTES = 4096
_SERVICE = re.compile(NAME_PATTERN)


class EventType(StrEnum):
    DECISION = "decision"
    PHASE = "phase"
    RUN_STARTED = "run_started"
    STEP_STARTED = "step_started"
    STEP_FINISHED = "step_finished"
    RUN_FINISHED = "run_finished"


CommandHandler = Callable[[str, OperatorCommand], Awaitable[CommandResult]]
"""``Control.command``: journals and applies one command, returns within a few seconds."""


class CommandMessage(BaseModel):
    """An operator command as it arrives on ``failoverd/v1/commands/<service>``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1]
    command: Command
    to: str | None = Field(default=None, pattern=REGION_PATTERN)
    force: bool = False
    by: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=1000)
    id: str | None = Field(default=None, max_length=128)  # echoed in the result

    def operator_command(self) -> OperatorCommand:
        # `by` is the sender's word: the broker's ACLs decide who may publish here at all.
        return OperatorCommand(
            self.command, self.to, self.force, self.by, self.reason, source=CommandSource.MQTT
        )


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    kind: str  # the metric label
    retain: bool = False


def event_topic(service: str, kind: EventType) -> str:
    return f"{EVENTS_PREFIX}/{service}/{kind}"


def state_topic(service: str) -> str:
    return f"{STATE_PREFIX}/{service}"


def command_topic(service: str) -> str:
    return f"{COMMANDS_PREFIX}/{service}"


def result_topic(service: str) -> str:
    return f"{RESULTS_PREFIX}/{service}"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def decision_body(decision: Decision) -> dict[str, Any]:
    return {
        "phase": str(decision.phase),
        "action": str(decision.action),
        "active_region": decision.active_region,
        "target": decision.target,
        "reasons": [str(r) for r in decision.reasons],
        "initiated_by": str(decision.initiated_by),
        "policy_version": decision.policy_version,
        "detected_at": _finite(decision.detected_at),
        "rto_remaining": _finite(decision.rto_remaining),
        "notes": list(decision.notes),
    }


def state_body(snapshot: ServiceSnapshot) -> dict[str, Any]:
    run = snapshot.run
    return {
        "active_region": snapshot.active_region,
        "regions": list(snapshot.regions),
        "phase": snapshot.phase,
        "reasons": list(snapshot.reasons),
        "paused": snapshot.paused,
        "mode": snapshot.mode,
        "policy_version": snapshot.policy_version,
        "verdicts": {region: str(v.verdict) for region, v in snapshot.verdicts.items()},
        "run_id": run.run_id if run is not None else None,
        "run_status": str(run.status) if run is not None else None,
    }


def _run_fields(progress: RunProgress) -> dict[str, Any]:
    return {
        "run_id": progress.run_id,
        "kind": progress.kind,
        "source": progress.source,
        "target": progress.target,
        "policy_version": progress.policy_version,
    }


def _rto_fields(progress: RunProgress) -> dict[str, Any]:
    return {
        "rto": progress.rto,
        "elapsed": _finite(progress.elapsed),
        "rto_remaining": _finite(progress.rto_remaining),
        "rto_exceeded": progress.rto_exceeded,
    }


_STEP_ENDED = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED})


def _step_ended(step: StepProgress) -> bool:
    return step.status in _STEP_ENDED


class EventPublisher:
    """Publishes the event stream; optionally takes operator commands.

    ``publish_*`` are synchronous, O(1), never raise and never wait for the broker (safe
    from the engine tick). ``run`` loops until cancelled and never raises anything else:
    broker errors, bad configuration files and bugs are logged and followed by a reconnect
    after :class:`Backoff`. Delivery is at-least-once (QoS 1) while connected; events queued
    while the broker is away are sent after reconnecting, up to ``queue_size`` (oldest
    dropped first, counted in ``failoverd_events_dropped_total{reason="queue_full"}``).

    ``commands``: None disables the command topic (nothing is subscribed); otherwise each
    valid command is passed to it (bounded by ``command_timeout``) and the result published.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        commands: CommandHandler | None = None,
        clock: Clock = SYSTEM_CLOCK,
        queue_size: int = 1000,
        backoff: Backoff | None = None,
        client_id: str | None = None,
        command_timeout: float = 30.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if not (math.isfinite(command_timeout) and command_timeout > 0):
            raise ValueError(f"command_timeout must be a positive number, got {command_timeout}")
        broker.check()
        self._broker = broker
        self._commands = commands
        self._clock = clock
        self._queue: deque[_Message] = deque()
        self._queue_size = queue_size
        self._wakeup = asyncio.Event()
        self._backoff = backoff or Backoff()
        self._client_id = client_id
        self._command_timeout = command_timeout
        self._in_flight: _Message | None = None  # taken from the queue, not yet acknowledged
        self._states: dict[str, _Message] = {}  # latest retained document per service
        self._states_dirty: set[str] = set()
        self._last_decision: dict[str, tuple[object, ...]] = {}
        self._last_phase: dict[str, str] = {}
        self._runs: dict[str, RunProgress] = {}  # runs being followed, by id
        self._connected = False
        self.dropped = 0

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- for the daemon: never blocks, never raises -------------------------------------

    def publish_decision(self, decision: Decision) -> bool:
        """Publish ``decision`` if it differs from the service's last one (phase, action,
        target, reasons), and a ``phase`` event if the phase changed. True if published."""
        try:
            service = decision.service
            key = decision.key()
            if self._last_decision.get(service) == key:
                return False
            self._last_decision[service] = key
            self._event(service, EventType.DECISION, decision.at, decision_body(decision))
            phase = str(decision.phase)
            previous = self._last_phase.get(service)
            if previous != phase:
                self._last_phase[service] = phase
                self._event(
                    service,
                    EventType.PHASE,
                    decision.at,
                    {"phase": phase, "previous": previous, "reasons": [str(r) for r in key[3]]},
                )
            return True
        except Exception:
            log.exception("event_publish_error", kind="decision")
            return False

    def publish_state(self, snapshot: ServiceSnapshot) -> None:
        """Replace the service's retained state document (sent only when it changed)."""
        try:
            service = snapshot.service
            body = state_body(snapshot)
            message = self._message(state_topic(service), "state", snapshot.at, service, body)
            if message is None:
                return
            old = self._states.get(service)
            if old is not None and _without_at(old.payload) == _without_at(message.payload):
                return
            self._states[service] = _Message(message.topic, message.payload, "state", True)
            self._states_dirty.add(service)
            self._wakeup.set()
        except Exception:
            log.exception("event_publish_error", kind="state")

    def forget_service(self, service: str) -> None:
        """A service left the policy set: stop republishing its state and clear the
        retained document (an empty retained message deletes it on the broker)."""
        self._last_decision.pop(service, None)
        self._last_phase.pop(service, None)
        if self._states.pop(service, None) is not None and _SERVICE.match(service):
            self._states[service] = _Message(state_topic(service), b"", "state", True)
            self._states_dirty.add(service)
            self._wakeup.set()

    def publish_run(self, progress: RunProgress) -> None:
        """Publish what changed in a run since the last call for it: ``run_started`` the
        first time, ``step_started``/``step_finished`` per step, ``run_finished`` (with the
        RTO achieved) once it ended. Feed it :meth:`Executor.progress` snapshots."""
        try:
            self._publish_run(progress)
        except Exception:
            log.exception("event_publish_error", kind="run", run_id=progress.run_id)

    def _publish_run(self, progress: RunProgress) -> None:
        service = progress.service
        at = self._clock.now()
        before = self._runs.get(progress.run_id)
        run = _run_fields(progress)
        if before is None:
            self._event(
                service,
                EventType.RUN_STARTED,
                at,
                {
                    **run,
                    "started_at": progress.started_at,
                    "steps": [s.name for s in progress.steps],
                    **_rto_fields(progress),
                },
            )
        old_steps = {s.name: s for s in before.steps} if before is not None else {}
        for step in progress.steps:
            old = old_steps.get(step.name)
            if step.started_at is not None and (old is None or old.started_at is None):
                self._event(
                    service,
                    EventType.STEP_STARTED,
                    at,
                    {**run, "step": step.name, "action": step.action, "at_start": step.started_at},
                )
            if _step_ended(step) and (old is None or not _step_ended(old)):
                self._event(
                    service,
                    EventType.STEP_FINISHED,
                    at,
                    {
                        **run,
                        "step": step.name,
                        "action": step.action,
                        "status": str(step.status),
                        "duration": _finite(step.duration),
                        "attempts": len(step.attempts),
                        "error": step.error,
                    },
                )
        if progress.status is not RunStatus.RUNNING:
            self._runs.pop(progress.run_id, None)
            if before is not None or progress.finished_at is not None:
                self._event(
                    service,
                    EventType.RUN_FINISHED,
                    at,
                    {
                        **run,
                        "status": str(progress.status),
                        "error": progress.error,
                        "finished_at": progress.finished_at,
                        "steps": {
                            s.name: {"status": str(s.status), "duration": _finite(s.duration)}
                            for s in progress.steps
                        },
                        **_rto_fields(progress),
                    },
                )
        else:
            self._runs[progress.run_id] = progress

    # -- queueing -------------------------------------------------------------------------

    def _event(self, service: str, kind: EventType, at: float, body: dict[str, Any]) -> None:
        message = self._message(event_topic(service, kind), str(kind), at, service, body)
        if message is not None:
            self._enqueue(message)

    def _message(
        self, topic: str, kind: str, at: float, service: str, body: dict[str, Any]
    ) -> _Message | None:
        if not _SERVICE.match(service):
            # A name with / + # would publish elsewhere; policies cannot produce one.
            EVENTS_DROPPED.labels("invalid").inc()
            log.warning("event_dropped_invalid_service", service=service[:80], kind=kind)
            return None
        document = {"v": WIRE_VERSION, "type": kind, "service": service, "at": at, **body}
        payload = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        return _Message(topic, payload, kind)

    def _enqueue(self, message: _Message) -> None:
        if len(self._queue) >= self._queue_size:
            lost = self._queue.popleft()
            self.dropped += 1
            EVENTS_DROPPED.labels("queue_full").inc()
            # Logged at powers of two: a broker outage must not flood the logs.
            if self.dropped & (self.dropped - 1) == 0:
                log.warning("events_dropped", dropped=self.dropped, oldest=lost.kind)
        self._queue.append(message)
        EVENTS_QUEUED.set(len(self._queue))
        self._wakeup.set()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, take commands; reconnect with backoff. Returns only by
        cancellation."""
        while True:
            try:
                await self._session()
            except* aiomqtt.MqttError as group:
                log.warning(
                    "event_stream_disconnected",
                    broker=self._broker.url,
                    error=str(group.exceptions[0]),
                    was_connected=self._connected,
                )
            except* BrokerConfigError as group:
                log.error("event_stream_config_error", error=str(group.exceptions[0]))
            except* Exception:
                log.exception("event_stream_error", broker=self._broker.url)
            finally:
                self._set_connected(False)
            delay = self._backoff.next_delay()
            log.info("event_stream_reconnect_scheduled", delay=round(delay, 3))
            await self._clock.sleep(delay)

    async def _session(self) -> None:
        client = self._broker.client(identifier=self._client_id, max_queued_incoming=100)
        async with client:
            if self._commands is not None:
                await mqtt_calls.subscribe(
                    client, [(f"{COMMANDS_PREFIX}/+", 1)], within=self._broker.timeout
                )
            self._set_connected(True)
            self._backoff.reset()
            # The broker may have lost retained documents (restart without persistence).
            self._states_dirty.update(self._states)
            log.info(
                "event_stream_connected",
                broker=self._broker.url,
                commands=self._commands is not None,
                queued=len(self._queue),
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._drain(client), name="events-drain")
                # Also without commands: reading is how a lost connection is noticed while
                # there is nothing to publish.
                tg.create_task(self._listen(client), name="events-listen")

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            self._wakeup.clear()
            while self._states_dirty:
                service = self._states_dirty.pop()
                state = self._states.get(service)
                if state is None:
                    continue
                try:
                    await self._send(client, state)
                except BaseException:
                    self._states_dirty.add(service)
                    raise
                if not state.payload:
                    self._states.pop(service, None)
            if self._in_flight is None and self._queue:
                self._in_flight = self._queue.popleft()
                EVENTS_QUEUED.set(len(self._queue))
            if self._in_flight is not None:
                # Kept until acknowledged, so a lost connection loses no event.
                await self._send(client, self._in_flight)
                self._in_flight = None
                continue
            await self._wakeup.wait()

    async def _send(self, client: aiomqtt.Client, message: _Message) -> None:
        await mqtt_calls.publish(
            client,
            message.topic,
            message.payload,
            qos=1,
            retain=message.retain,
            within=self._broker.timeout,
        )
        EVENTS_PUBLISHED.labels(message.kind).inc()

    def _set_connected(self, connected: bool) -> None:
        self._connected = connected
        EVENTS_CONNECTED.set(1 if connected else 0)

    # -- commands -------------------------------------------------------------------------

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            elif not isinstance(payload, bytes | bytearray):
                payload = b"" if payload is None else str(payload).encode()
            await self.handle_command(message.topic.value, bytes(payload), message.retain)

    async def handle_command(self, topic: str, payload: bytes, retained: bool = False) -> str:
        """Take one command message; publish its result; return the outcome label.
        Never raises (but cancellation)."""
        try:
            return await self._handle_command(topic, payload, retained)
        except Exception:
            MQTT_COMMANDS.labels("error").inc()
            log.exception("mqtt_command_error", topic=topic[:128])
            return "error"

    async def _handle_command(self, topic: str, payload: bytes, retained: bool) -> str:
        prefix = COMMANDS_PREFIX + "/"
        service = topic[len(prefix) :] if topic.startswith(prefix) else ""
        if not _SERVICE.match(service):
            return self._refuse_silently("unknown_topic", topic)
        if self._commands is None:  # pragma: no cover - not subscribed when disabled
            return self._refuse_silently("disabled", topic)
        if not payload:
            return "cleared"  # our own clearing of a retained command coming back: not junk
        if retained:
            # Never act on a retained command: it would replay at every reconnection. The
            # empty message clears it from the broker.
            if payload:
                self._enqueue(_Message(topic, b"", "command_clear", retain=True))
            return self._reject(service, "retained", "retained commands are refused", None)
        if len(payload) > MAX_COMMAND_BYTES:
            return self._reject(
                service, "too_large", f"command over {MAX_COMMAND_BYTES} bytes", None
            )
        try:
            parsed = CommandMessage.model_validate_json(payload)
        except ValidationError as exc:
            return self._reject(service, "invalid", _validation_message(exc), _id_of(payload))
        try:
            async with asyncio.timeout(self._command_timeout):
                result = await self._commands(service, parsed.operator_command())
        except NotLeaderError as exc:
            result = CommandResult(False, str(exc))
            outcome = "not_leader"
        except TimeoutError:
            result = CommandResult(False, f"no answer within {self._command_timeout:g}s")
            outcome = "error"
        else:
            outcome = "accepted" if result.accepted else "refused"
        MQTT_COMMANDS.labels(outcome).inc()
        log.info(
            "mqtt_command",
            service=service,
            command=str(parsed.command),
            to=parsed.to,
            by=parsed.by,
            reason=parsed.reason,
            outcome=outcome,
            message=result.message,
            run_id=result.run_id,
        )
        self._result(
            service,
            {
                "id": parsed.id,
                "command": str(parsed.command),
                "accepted": result.accepted,
                "outcome": outcome,
                "message": result.message,
                "run_id": result.run_id,
                "decision": decision_body(result.decision) if result.decision else None,
            },
        )
        return outcome

    def _reject(self, service: str, outcome: str, message: str, ident: str | None) -> str:
        MQTT_COMMANDS.labels(outcome).inc()
        log.warning("mqtt_command_rejected", service=service, outcome=outcome, message=message)
        self._result(
            service,
            {
                "id": ident,
                "command": None,
                "accepted": False,
                "outcome": outcome,
                "message": message,
                "run_id": None,
                "decision": None,
            },
        )
        return outcome

    def _refuse_silently(self, outcome: str, topic: str) -> str:
        # No service to answer to: count and log only.
        MQTT_COMMANDS.labels(outcome).inc()
        log.warning("mqtt_command_rejected", topic=topic[:128], outcome=outcome)
        return outcome

    def _result(self, service: str, body: dict[str, Any]) -> None:
        message = self._message(
            result_topic(service), "command_result", self._clock.now(), service, body
        )
        if message is not None:
            self._enqueue(message)


def _without_at(payload: bytes) -> Any:
    document = json.loads(payload)
    document.pop("at", None)
    return document


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _id_of(payload: bytes) -> str | None:
    """The command's ``id`` when the body is JSON with a short string id, so that even a
    rejection can be correlated."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    ident = document.get("id") if isinstance(document, dict) else None
    return ident if isinstance(ident, str) and len(ident) <= 128 else None

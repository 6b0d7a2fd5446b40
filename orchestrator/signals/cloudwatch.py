"""CloudWatch alarm states as a signal: the ``cloudwatch`` vantage point.

For every ``cloudwatch_alarm`` signal of every policy, in every region it names alarms for,
the source reads the alarms' states each ``detection.interval`` with ``DescribeAlarms`` in
that region (at most 100 names a call, every page followed) and emits one observation per
(service, region, signal):

* ``ok=False``, detail ``alarm``: at least one of the alarms is in ALARM;
* ``ok=True``: all of them are OK;
* ``ok=None`` (unknown): any is INSUFFICIENT_DATA or does not exist (the detail names which),
  or the API call failed (the detail gives the error code). An alarm the daemon cannot see
  is never taken for a healthy one.

Alarms of one region are read together, whatever policy names them, so a region costs
``ceil(names / 100)`` calls a tick however many policies share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.policy.access import AwsRole
from orchestrator.policy.models import CLOUDWATCH_VANTAGE, CloudWatchAlarmSignal, Policy
from orchestrator.signals.aws_clients import AwsClients, error_code, run_regional_loops
from orchestrator.signals.base import ObservationSink
from orchestrator.telemetry import get_logger

SOURCE = "cloudwatch"
MAX_NAMES_PER_CALL = 100  # DescribeAlarms accepts at most 100 AlarmNames
STATE_ALARM = "ALARM"
STATE_OK = "OK"
STATE_INSUFFICIENT = "INSUFFICIENT_DATA"

# Unknown-observation detail prefixes (shown as evidence: "unknown: missing: x").
DETAIL_INSUFFICIENT = "insufficient_data"
DETAIL_MISSING = "missing"
DETAIL_API_ERROR = "api_error"

log = get_logger()


@dataclass(frozen=True, slots=True)
class AlarmWatch:
    """One (service, region, signal): the alarms whose states make up its observation."""

    service: str
    region: str
    signal: str
    alarms: tuple[str, ...]
    interval: float
    role: AwsRole | None = None  # read as this role (the signal's or the policy's aws)


def alarm_watches(policies: Iterable[Policy]) -> list[AlarmWatch]:
    """Every alarm signal of every policy, per region that names at least one alarm."""
    out: list[AlarmWatch] = []
    for policy in policies:
        for signal in policy.signals:
            if not isinstance(signal, CloudWatchAlarmSignal):
                continue
            for region, names in signal.alarms.items():
                if names:
                    out.append(
                        AlarmWatch(
                            policy.service,
                            region,
                            signal.name,
                            tuple(dict.fromkeys(names)),
                            float(policy.detection.interval),
                            policy.role(signal.aws),
                        )
                    )
    return out


def batches(names: Sequence[str], size: int = MAX_NAMES_PER_CALL) -> list[list[str]]:
    """``names`` without duplicates, in order, cut into lists of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    unique = list(dict.fromkeys(names))
    return [unique[i : i + size] for i in range(0, len(unique), size)]


async def describe_alarm_states(client: Any, names: Sequence[str]) -> dict[str, str]:
    """The state of each named alarm (metric or composite) that exists: name -> ``OK`` /
    ``ALARM`` / ``INSUFFICIENT_DATA``. Names that do not exist are absent from the result.
    Raises whatever the client raises; the caller bounds the time."""
    states: dict[str, str] = {}
    wanted = set(names)
    paginator = client.get_paginator("describe_alarms")
    for batch in batches(names):
        pages = paginator.paginate(
            AlarmNames=batch,
            # Without AlarmTypes, DescribeAlarms returns metric alarms only.
            AlarmTypes=["MetricAlarm", "CompositeAlarm"],
            PaginationConfig={"PageSize": MAX_NAMES_PER_CALL},
        )
        async for page in pages:
            for key in ("MetricAlarms", "CompositeAlarms"):
                for alarm in page.get(key, ()):
                    name = alarm.get("AlarmName")
                    if name in wanted:
                        states[name] = str(alarm.get("StateValue", ""))
    return states


def alarm_observation(
    watch: AlarmWatch,
    states: Mapping[str, str] | None,
    at: float,
    *,
    latency: float | None = None,
    error: str = "",
) -> Observation:
    """The observation for ``watch`` given the alarm states read (None: the read failed,
    ``error`` says why). Pure, so the rules are testable without AWS."""

    def obs(ok: bool | None, detail: str) -> Observation:
        return Observation(
            service=watch.service,
            region=watch.region,
            signal=watch.signal,
            vantage=CLOUDWATCH_VANTAGE,
            ok=ok,
            at=at,
            source=SOURCE,
            target=",".join(watch.alarms),
            latency=latency,
            detail=detail,
        )

    if states is None:
        return obs(None, f"{DETAIL_API_ERROR}: {error or 'unknown'}")
    firing = [n for n in watch.alarms if states.get(n) == STATE_ALARM]
    if firing:
        return obs(False, FailureKind.ALARM)
    missing = [n for n in watch.alarms if n not in states]
    unsure = [n for n in watch.alarms if n in states and states[n] != STATE_OK]
    if not missing and not unsure:
        return obs(True, "")
    parts: list[str] = []
    if unsure:
        # INSUFFICIENT_DATA, or a state this code does not know: unknown either way.
        parts.append(f"{DETAIL_INSUFFICIENT}: {', '.join(unsure)}")
    if missing:
        parts.append(f"{DETAIL_MISSING}: {', '.join(missing)}")
    return obs(None, "; ".join(parts))


class CloudWatchAlarmSource:
    """The alarm reader (a :class:`~orchestrator.signals.base.SignalSource`).

    ``run`` opens one CloudWatch client per region for its lifetime and polls each
    (region, interval) group on a fixed schedule (a slow tick delays the next, never
    bunches them up). Each poll is bounded by ``call_timeout`` (default: the interval,
    at most 30 s); a failed or timed-out poll is an unknown observation, never an escaped
    error. ``put`` is called for every watch on every tick.
    """

    name = SOURCE

    def __init__(
        self,
        policies: Iterable[Policy],
        clients: AwsClients,
        clock: Clock = SYSTEM_CLOCK,
        *,
        call_timeout: float | None = None,
    ) -> None:
        if call_timeout is not None and not call_timeout > 0:
            raise ValueError(f"call_timeout must be positive, got {call_timeout!r}")
        self.watches = alarm_watches(policies)
        self.clients = clients
        self.clock = clock
        self.call_timeout = call_timeout
        self._firing: dict[tuple[str, str, str], tuple[str, ...]] = {}
        self._api_down: dict[str, str] = {}  # region -> error code, while calls fail

    def _timeout(self, interval: float) -> float:
        return self.call_timeout if self.call_timeout is not None else min(interval, 30.0)

    async def poll(self, client: Any, watches: Sequence[AlarmWatch]) -> list[Observation]:
        """Read the alarms of ``watches`` (all in the client's region) once; one
        observation per watch. Never raises, except on cancellation."""
        if not watches:
            return []
        region = watches[0].region
        names = [n for w in watches for n in w.alarms]
        started = self.clock.monotonic()
        states: dict[str, str] | None
        error = ""
        try:
            async with asyncio.timeout(self._timeout(max(w.interval for w in watches))):
                states = await describe_alarm_states(client, names)
        except Exception as exc:  # any failure to read is "unknown", never a crash
            states = None
            error = error_code(exc)
            self._api_failed(region, error)
        else:
            self._api_answered(region)
        latency = self.clock.monotonic() - started
        at = self.clock.now()
        out = [alarm_observation(w, states, at, latency=latency, error=error) for w in watches]
        if states is not None:
            self._log_changes(watches, states)
        return out

    def _api_failed(self, region: str, error: str) -> None:
        # Once per outage at warning level; every tick of it would bury the logs.
        if region not in self._api_down:
            self._api_down[region] = error
            log.warning("cloudwatch_api_unavailable", region=region, error=error)
        else:
            log.debug("cloudwatch_describe_alarms_failed", region=region, error=error)

    def _api_answered(self, region: str) -> None:
        if self._api_down.pop(region, None) is not None:
            log.info("cloudwatch_api_recovered", region=region)

    def _log_changes(self, watches: Sequence[AlarmWatch], states: Mapping[str, str]) -> None:
        # Which alarms fire is the on-call's first question; say it once per change.
        for w in watches:
            key = (w.service, w.region, w.signal)
            firing = tuple(n for n in w.alarms if states.get(n) == STATE_ALARM)
            if self._firing.get(key, ()) != firing:
                self._firing[key] = firing
                log.info(
                    "cloudwatch_alarms_firing" if firing else "cloudwatch_alarms_clear",
                    service=w.service,
                    region=w.region,
                    signal=w.signal,
                    alarms=list(firing),
                )

    async def run(self, sink: ObservationSink) -> None:
        await run_regional_loops(
            self.clients,
            "cloudwatch",
            self.watches,
            lambda client, interval, watches: self._loop(client, interval, watches, sink),
            "cloudwatch-alarms",
        )

    async def _loop(
        self, client: Any, interval: float, watches: list[AlarmWatch], sink: ObservationSink
    ) -> None:
        next_at = self.clock.monotonic()
        while True:
            for obs in await self.poll(client, watches):
                sink.put(obs)
            next_at += interval
            now = self.clock.monotonic()
            if next_at < now:  # overran: skip the missed ticks rather than catch up
                next_at = now
            await self.clock.sleep(next_at - now)

"""The probe scheduler: every probe signal x region of this vantage point, on time.

A :class:`ProbeScheduler` is a :class:`~orchestrator.signals.base.SignalSource`. From the
policies it takes every probe-type signal (http, tcp, dns, tls) whose vantage points include
this one, in every region of the policy: one *target* each. Each target runs every
``detection.interval`` on a deadline grid planned by
:class:`~orchestrator.signals.probes.plan.DeadlinePlanner` (deterministic phase jitter, no
drift). Timing rules:

* at most ``max_concurrency`` probes are in flight; a probe waiting for a slot starts late,
  and its lateness is recorded (``failoverd_probe_scheduling_lateness_seconds``);
* a target whose previous probe is still running (or still waiting for a slot) at its next
  deadline skips that run: counted in ``failoverd_probe_overruns_total`` and logged as
  ``probe_overrun`` at most once per ``overrun_log_interval`` per (service, signal);
* when the dispatcher wakes for a deadline it also starts the probes due within the next
  ``dispatch_slack`` seconds: they start up to that much early, never late.

Every result becomes an :class:`~orchestrator.engine.observation.Observation` for the sink
(``detail`` is the failure reason) and updates the blackbox-style probe metrics. A target
changing between passing and failing is logged (``probe_failing`` / ``probe_recovered``) with
the human detail; individual results are not. URL credentials never leave in targets or
details. Usage::

    async with ProbeContext() as context:
        scheduler = ProbeScheduler(policies, "local", context.make_prober)
        await scheduler.run(sink)  # until cancelled
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.engine.observation import FailureKind, Observation
from orchestrator.policy.models import (
    DnsSignal,
    HttpSignal,
    Policy,
    TcpSignal,
    TlsSignal,
)
from orchestrator.signals.base import ObservationSink
from orchestrator.signals.probes.plan import DeadlinePlanner
from orchestrator.signals.probes.result import Prober, ProbeResult
from orchestrator.signals.probes.targets import redact
from orchestrator.telemetry import (
    PROBE_DURATION,
    PROBE_FAILURES,
    PROBE_LATENESS,
    PROBE_OVERRUNS,
    PROBE_RUNS,
    PROBE_SUCCESS,
    PROBES_IN_FLIGHT,
    get_logger,
)

ProbeSignal = HttpSignal | TcpSignal | DnsSignal | TlsSignal
DEFAULT_MAX_CONCURRENCY = 256
# Probes due within this long after the one being dispatched start with it: one event-loop
# wake-up per batch instead of per probe (measured in bench/probes.py). A probe may start
# this much early, never late, and the deadline grid does not move.
DEFAULT_DISPATCH_SLACK = 0.005
PROBE_ERROR = "probe_error"  # observation detail when a prober broke its contract

log = get_logger("failoverd.probes")


class ProberFactory(Protocol):
    """Builds the prober of one signal; ``timeout`` bounds each probe. May raise
    ``ValueError`` for a signal it cannot probe (the scheduler adds where it came from).
    :meth:`orchestrator.signals.probes.ProbeContext.make_prober` is the daemon's."""

    def __call__(self, signal: ProbeSignal, timeout: float, /) -> Prober: ...


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One probed cell: a signal of a service, in a region, from a vantage point."""

    service: str
    region: str
    signal: str
    vantage: str
    type: str
    target: str
    interval: float
    timeout: float

    @property
    def key(self) -> str:
        return f"{self.service}/{self.region}/{self.signal}/{self.vantage}"

    @property
    def shown(self) -> str:
        """The target as logs, evidence and the API show it: without URL credentials."""
        return redact(self.target)


class _Slot:
    """A target's runtime state and its metric children (looked up once, not per probe)."""

    __slots__ = (
        "duration",
        "failing",
        "failures",
        "prober",
        "running",
        "runs",
        "success",
        "target",
    )

    def __init__(self, target: ProbeTarget, prober: Prober) -> None:
        self.target = target
        self.prober = prober
        self.running = False
        self.failing: bool | None = None
        labels = (target.service, target.region, target.signal, target.vantage)
        self.success = PROBE_SUCCESS.labels(*labels)
        self.duration = PROBE_DURATION.labels(*labels)
        self.runs = PROBE_RUNS.labels(target.type)
        self.failures: dict[FailureKind, Any] = {}

    def failure_counter(self, reason: FailureKind) -> Any:
        counter = self.failures.get(reason)
        if counter is None:
            t = self.target
            counter = PROBE_FAILURES.labels(t.service, t.region, t.signal, t.vantage, reason)
            self.failures[reason] = counter
        return counter


class _OverrunWarnings:
    """At most one ``probe_overrun`` warning per (service, signal) per ``every`` seconds,
    carrying how many runs were skipped since the last one."""

    def __init__(self, clock: Clock, every: float) -> None:
        self._clock = clock
        self._every = every
        self._last: dict[tuple[str, str], float] = {}
        self._skipped: dict[tuple[str, str], int] = {}

    def skipped(self, target: ProbeTarget) -> None:
        key = (target.service, target.signal)
        count = self._skipped.get(key, 0) + 1
        now = self._clock.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._skipped[key] = count
            return
        self._last[key] = now
        self._skipped[key] = 0
        log.warning(
            "probe_overrun",
            service=target.service,
            signal=target.signal,
            region=target.region,
            vantage=target.vantage,
            interval=target.interval,
            timeout=target.timeout,
            skipped=count,
        )


class ProbeScheduler:
    """Runs this vantage point's probes (see the module docstring for the timing rules).

    ``vantage`` is this observer's name (``local`` for the daemon, or an agent id); only
    signals whose vantage points include it run. Raises ``ValueError`` naming the policy,
    signal and region for a target that cannot be probed, a non-positive interval or
    timeout, or a cell listed twice.
    """

    def __init__(
        self,
        policies: Iterable[Policy],
        vantage: str,
        probers: ProberFactory,
        *,
        clock: Clock = SYSTEM_CLOCK,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        overrun_log_interval: float = 60.0,
        dispatch_slack: float = DEFAULT_DISPATCH_SLACK,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if not 0.0 <= dispatch_slack <= 1.0:
            raise ValueError(f"dispatch_slack must be 0-1 seconds, got {dispatch_slack}")
        self.dispatch_slack = dispatch_slack
        self.name = f"probes[{vantage}]"
        self.vantage = vantage
        self.max_concurrency = max_concurrency
        self._clock = clock
        self._overruns = _OverrunWarnings(clock, overrun_log_interval)
        self._slots = _build_slots(policies, vantage, probers)
        self._started = False

    @property
    def targets(self) -> tuple[ProbeTarget, ...]:
        return tuple(slot.target for slot in self._slots)

    async def run(self, sink: ObservationSink) -> None:
        """Probe until cancelled; every probe task belongs to this call's TaskGroup, so
        cancelling ``run`` stops them all before it returns. Call it once per scheduler:
        the targets' running state is the scheduler's (build a new one to restart)."""
        if self._started:
            raise RuntimeError(f"{self.name} already ran; build a new ProbeScheduler")
        self._started = True
        slots = self._slots
        clock = self._clock
        slack = self.dispatch_slack
        semaphore = asyncio.Semaphore(self.max_concurrency)
        planner = DeadlinePlanner(
            [(s.target.key, s.target.interval) for s in slots], clock.monotonic()
        )
        log.info(
            "probe_scheduler_started",
            vantage=self.vantage,
            targets=len(slots),
            max_concurrency=self.max_concurrency,
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                while True:
                    deadline = planner.next_deadline()
                    if deadline is None:
                        await asyncio.Event().wait()  # nothing to probe here: idle until cancelled
                        continue
                    delay = deadline - clock.monotonic()
                    if delay > 0:
                        await clock.sleep(delay)
                        continue
                    for index, due in planner.pop_due(clock.monotonic() + slack):
                        slot = slots[index]
                        if slot.running:
                            PROBE_OVERRUNS.labels(slot.target.service, slot.target.signal).inc()
                            self._overruns.skipped(slot.target)
                            continue
                        slot.running = True
                        tasks.create_task(self._probe(slot, due, semaphore, sink))
        finally:
            log.info("probe_scheduler_stopped", vantage=self.vantage)

    async def _probe(
        self, slot: _Slot, deadline: float, semaphore: asyncio.Semaphore, sink: ObservationSink
    ) -> None:
        clock = self._clock
        target = slot.target
        try:
            async with semaphore:
                PROBE_LATENESS.observe(max(0.0, clock.monotonic() - deadline))
                slot.runs.inc()
                PROBES_IN_FLIGHT.inc()
                try:
                    result = await slot.prober.probe(target.target)
                finally:
                    PROBES_IN_FLIGHT.dec()
            self._record(slot, result, sink)
        except Exception:
            # A prober or sink broke its contract. Keep every other target probing, and
            # say "could not tell" for this one rather than healthy or failed.
            log.exception(
                "probe_crashed",
                service=target.service,
                region=target.region,
                signal=target.signal,
                vantage=target.vantage,
            )
            _put(sink, _observation(target, None, clock.now(), None, PROBE_ERROR))
        finally:
            slot.running = False

    def _record(self, slot: _Slot, result: ProbeResult, sink: ObservationSink) -> None:
        target = slot.target
        slot.success.set(1.0 if result.ok else 0.0)
        slot.duration.set(result.latency)
        reason = result.reason
        if reason is not None:
            slot.failure_counter(reason).inc()
        failing = not result.ok
        if failing != slot.failing and (failing or slot.failing is not None):
            event = "probe_failing" if failing else "probe_recovered"
            (log.warning if failing else log.info)(
                event,
                service=target.service,
                region=target.region,
                signal=target.signal,
                vantage=target.vantage,
                target=target.shown,
                reason=str(reason) if reason else None,
                detail=redact(result.detail),
            )
        slot.failing = failing
        sink.put(_observation(target, result.ok, self._clock.now(), result.latency, reason or ""))


def _observation(
    target: ProbeTarget, ok: bool | None, at: float, latency: float | None, detail: str
) -> Observation:
    return Observation(
        service=target.service,
        region=target.region,
        signal=target.signal,
        vantage=target.vantage,
        ok=ok,
        at=at,
        source=target.type,
        target=target.shown,
        latency=latency,
        detail=str(detail),
    )


def _put(sink: ObservationSink, obs: Observation) -> None:
    try:
        sink.put(obs)
    except Exception:
        log.exception("observation_sink_failed", service=obs.service, signal=obs.signal)


def _build_slots(policies: Iterable[Policy], vantage: str, probers: ProberFactory) -> list[_Slot]:
    slots: list[_Slot] = []
    seen: set[tuple[str, str, str]] = set()
    for policy in policies:
        detection = policy.detection
        for signal in policy.signals:
            if not isinstance(signal, HttpSignal | TcpSignal | DnsSignal | TlsSignal):
                continue  # AWS Health and CloudWatch have sources of their own
            if vantage not in (signal.vantage or policy.vantage_points):
                continue
            where = f"policy {policy.service!r}, signal {signal.name!r}"
            timeout = signal.timeout if signal.timeout is not None else detection.timeout
            if not timeout > 0:
                raise ValueError(f"{where}: timeout must be positive, got {timeout}")
            if not detection.interval > 0:
                raise ValueError(
                    f"{where}: detection.interval must be positive, got {detection.interval}"
                )
            try:
                prober = probers(signal, timeout)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            for region in policy.regions:
                cell = (policy.service, region, signal.name)
                if cell in seen:
                    raise ValueError(
                        f"{where}, region {region!r}: listed twice (two policies for one service?)"
                    )
                seen.add(cell)
                address = signal.region_target(region)
                try:
                    prober.validate(address)
                except ValueError as exc:
                    raise ValueError(f"{where}, region {region!r}: {exc}") from None
                target = ProbeTarget(
                    service=policy.service,
                    region=region,
                    signal=signal.name,
                    vantage=vantage,
                    type=signal.type,
                    target=address,
                    interval=detection.interval,
                    timeout=timeout,
                )
                slots.append(_Slot(target, prober))
    return slots

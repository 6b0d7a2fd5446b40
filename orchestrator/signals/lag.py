"""Replication lag readers: CloudWatch metrics of the replica in each standby region.

For each policy with ``replication``, for each standby region's source, every
``replication.interval`` the reader calls ``GetMetricData`` in that region and pushes a
:class:`~orchestrator.engine.state.LagReading` to a :class:`~orchestrator.signals.base.LagSink`:

* ``rds_replica_lag``: ``AWS/RDS`` ``ReplicaLag`` by ``DBInstanceIdentifier``, in seconds;
  ``-1`` means replication is not running, which is unknown lag, not zero;
* ``aurora_global_rpo_lag``: ``AWS/RDS`` ``AuroraGlobalDBRPOLag`` by ``DBClusterIdentifier``,
  in milliseconds; when it has no data (older engine versions publish only the other one),
  ``AuroraGlobalDBReplicationLag`` (also milliseconds) instead;
* ``cloudwatch_metric``: any metric, with its statistic and ``unit_seconds``.

The reading is the NEWEST datapoint, stamped with that datapoint's own timestamp. When a
primary region dies its replica's lag metric freezes; re-stamping the last value with the
current time would make a frozen, meaningless number look fresh. Kept with its own time, it
ages, and the engine treats it as unknown once older than ``replication.max_age``. No
datapoint in the window gives ``LagReading(None, now)``. A failed call pushes nothing: the
last reading keeps its own age and goes stale by itself.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.engine.state import LagReading
from orchestrator.policy.access import AwsRole
from orchestrator.policy.models import (
    AuroraGlobalLag,
    CloudWatchMetricLag,
    LagSource,
    Policy,
    RdsReplicaLag,
)
from orchestrator.signals.aws_clients import AwsClients, error_code, run_regional_loops
from orchestrator.signals.base import LagSink
from orchestrator.telemetry import REPLICATION_LAG, REPLICATION_LAG_TIMESTAMP, get_logger

SOURCE = "replication_lag"
RDS_NAMESPACE = "AWS/RDS"
MILLISECONDS = 0.001  # seconds per unit of the Aurora global database lag metrics
DEFAULT_WINDOW = 600.0  # how far back to look for the newest datapoint
DEFAULT_PERIOD = 60  # RDS publishes these metrics every minute (a source may name another)

log = get_logger()


@dataclass(frozen=True, slots=True)
class MetricQuery:
    """One CloudWatch metric to read, and how to turn its value into seconds."""

    namespace: str
    metric_name: str
    dimensions: tuple[tuple[str, str], ...]
    statistic: str = "Maximum"  # the worst lag within a period: the RPO's side
    unit_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class LagWatch:
    """The lag source of one service's replica in one standby region.
    ``queries`` are in order of preference: the first one with data is the reading."""

    service: str
    region: str
    queries: tuple[MetricQuery, ...]
    interval: float
    max_age: float
    role: AwsRole | None = None  # read as this role (replication's aws, or the policy's)
    period: int = DEFAULT_PERIOD  # the metric's period (GetMetricData Period)


def lag_queries(source: LagSource) -> tuple[MetricQuery, ...]:
    """The metric(s) behind a policy's lag source, preferred first."""
    if isinstance(source, RdsReplicaLag):
        dims = (("DBInstanceIdentifier", source.db_instance),)
        return (MetricQuery(RDS_NAMESPACE, "ReplicaLag", dims),)
    if isinstance(source, AuroraGlobalLag):
        dims = (("DBClusterIdentifier", source.db_cluster),)
        return (
            MetricQuery(RDS_NAMESPACE, "AuroraGlobalDBRPOLag", dims, unit_seconds=MILLISECONDS),
            MetricQuery(
                RDS_NAMESPACE, "AuroraGlobalDBReplicationLag", dims, unit_seconds=MILLISECONDS
            ),
        )
    if isinstance(source, CloudWatchMetricLag):
        return (
            MetricQuery(
                source.namespace,
                source.metric_name,
                tuple(sorted(source.dimensions.items())),
                source.statistic,
                source.unit_seconds,
            ),
        )
    raise TypeError(f"unknown lag source type: {type(source).__name__}")


def lag_watches(policies: Iterable[Policy]) -> list[LagWatch]:
    """One watch per (policy with replication, standby region source)."""
    out: list[LagWatch] = []
    for policy in policies:
        replication = policy.replication
        if replication is None:
            continue
        for region, source in replication.sources.items():
            out.append(
                LagWatch(
                    policy.service,
                    region,
                    lag_queries(source),
                    float(replication.interval),
                    float(replication.max_age),
                    policy.role(replication.aws),
                    int(source.period),
                )
            )
    return out


def _query_params(queries: Sequence[MetricQuery], period: int) -> list[dict[str, Any]]:
    return [
        {
            "Id": f"q{i}",
            "MetricStat": {
                "Metric": {
                    "Namespace": q.namespace,
                    "MetricName": q.metric_name,
                    "Dimensions": [{"Name": k, "Value": v} for k, v in q.dimensions],
                },
                "Period": period,
                "Stat": q.statistic,
            },
            "ReturnData": True,
        }
        for i, q in enumerate(queries)
    ]


def _epoch(value: Any) -> float:
    """Epoch seconds of a botocore timestamp (a datetime; naive means UTC)."""
    if isinstance(value, datetime):
        when: datetime = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return when.timestamp()
    return float(value)


def newest_reading(
    queries: Sequence[MetricQuery], results: Sequence[dict[str, Any]], now: float
) -> tuple[LagReading, MetricQuery | None]:
    """The reading from GetMetricData results: the newest datapoint of the first query (in
    preference order) that has any, converted to seconds and stamped with its own time
    (never later than ``now``: a clock running ahead must not make a reading look
    fresher). No datapoint at all: ``LagReading(None, now)``. A negative value (RDS's
    "replication not running") is unknown lag, stamped with its own time."""
    by_id = {r.get("Id"): r for r in results}
    for i, query in enumerate(queries):
        result = by_id.get(f"q{i}")
        if not result:
            continue
        points = [
            (_epoch(ts), float(v))
            for ts, v in zip(result.get("Timestamps", ()), result.get("Values", ()), strict=False)
            if v is not None and math.isfinite(float(v))
        ]
        if not points:
            continue
        at, value = max(points, key=lambda p: p[0])
        at = min(at, now)
        if value < 0:
            return LagReading(None, at), query
        return LagReading(value * query.unit_seconds, at), query
    return LagReading(None, now), None


async def get_metric_results(
    client: Any,
    queries: Sequence[MetricQuery],
    now: float,
    *,
    window: float,
    period: int,
) -> list[dict[str, Any]]:
    """GetMetricData for ``queries`` over the last ``window`` seconds before ``now``, all
    pages merged per query id. The window is aligned to ``period`` so that datapoints fall
    in whole periods, as CloudWatch aggregates them."""
    end = (math.floor(now / period) + 1) * period  # include the current, partial period
    start = math.floor((now - window) / period) * period
    merged: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {
        "MetricDataQueries": _query_params(queries, period),
        "StartTime": datetime.fromtimestamp(start, UTC),
        "EndTime": datetime.fromtimestamp(end, UTC),
        "ScanBy": "TimestampDescending",
    }
    while True:
        page = await client.get_metric_data(**params)
        for r in page.get("MetricDataResults", ()):
            slot = merged.setdefault(r["Id"], {"Id": r["Id"], "Timestamps": [], "Values": []})
            slot["Timestamps"].extend(r.get("Timestamps", ()))
            slot["Values"].extend(r.get("Values", ()))
        token = page.get("NextToken")
        if not token:
            return list(merged.values())
        params["NextToken"] = token


async def listed_query(client: Any, queries: Sequence[MetricQuery]) -> MetricQuery | None:
    """The first of ``queries`` whose metric ListMetrics knows with exactly these dimensions
    (None: none is listed — a wrong dimension value, or a metric not published at all).
    ListMetrics shows metrics with data in the last two weeks; a brand-new one can take up
    to 15 minutes to be listed (CloudWatch API reference, PutMetricData)."""
    for query in queries:
        kwargs: dict[str, Any] = {
            "Namespace": query.namespace,
            "MetricName": query.metric_name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in query.dimensions],
        }
        while True:
            page = await client.list_metrics(**kwargs)
            wanted = dict(query.dimensions)
            for metric in page.get("Metrics", []):
                dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
                if dims == wanted:
                    return query
            token = page.get("NextToken")
            if not token:
                break
            kwargs["NextToken"] = token
    return None


def describe_query(query: MetricQuery) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in query.dimensions) or "no dimensions"
    return f"{query.namespace} {query.metric_name} ({dims})"


def record_reading(service: str, region: str, reading: LagReading) -> None:
    """Export a reading. Unknown lag is NaN; the timestamp gauge keeps the time of the last
    KNOWN value, so ``time() - failoverd_replication_lag_timestamp_seconds`` keeps growing
    while the lag is unknown and an alert on its age fires."""
    if reading.seconds is None:
        REPLICATION_LAG.labels(service, region).set(math.nan)
        return
    REPLICATION_LAG.labels(service, region).set(reading.seconds)
    REPLICATION_LAG_TIMESTAMP.labels(service, region).set(reading.observed_at)


class ReplicationLagSource:
    """Reads replication lag for every policy's standby regions on its own schedule.

    ``run(sink)`` loops until cancelled: one CloudWatch client per region, open for the
    reader's lifetime; one task per (region, interval) group; each read bounded by
    ``call_timeout`` (default: the interval, at most 30 s). It never lets an AWS error
    escape. The query window is at least ``max_age`` plus one period, so that a reading
    still young enough for the engine is never missed.
    """

    name = SOURCE

    def __init__(
        self,
        policies: Iterable[Policy],
        clients: AwsClients,
        clock: Clock = SYSTEM_CLOCK,
        *,
        window: float = DEFAULT_WINDOW,
        period: int | None = None,
        call_timeout: float | None = None,
    ) -> None:
        if period is not None and not (
            isinstance(period, int)
            and (period in (1, 5, 10, 20, 30) or (period >= 60 and period % 60 == 0))
        ):
            raise ValueError(
                f"period must be 1, 5, 10, 20, 30 or a multiple of 60 seconds (what "
                f"GetMetricData accepts), got {period!r}"
            )
        if not window > 0:
            raise ValueError(f"window must be positive, got {window!r}")
        if call_timeout is not None and not call_timeout > 0:
            raise ValueError(f"call_timeout must be positive, got {call_timeout!r}")
        self.watches = lag_watches(policies)
        self.clients = clients
        self.clock = clock
        self.window = window
        self.period = period
        self.call_timeout = call_timeout
        self._status: dict[tuple[str, str], tuple[str, str]] = {}  # last (status, metric)

    async def read(self, client: Any, watch: LagWatch) -> LagReading | None:
        """One reading for ``watch``; None when the call failed (nothing to report)."""
        now = self.clock.now()
        period = self.period if self.period is not None else watch.period
        window = max(self.window, watch.max_age + period)
        timeout = self.call_timeout if self.call_timeout is not None else min(watch.interval, 30)
        try:
            async with asyncio.timeout(timeout):
                results = await get_metric_results(
                    client, watch.queries, now, window=window, period=period
                )
        except Exception as exc:  # a failed read is no news, never a crash
            self._report(watch, "read_failed", error=error_code(exc))
            return None
        reading, used = newest_reading(watch.queries, results, self.clock.now())
        if used is None:
            self._report(watch, "no_data")
        elif reading.seconds is None:
            self._report(watch, "inactive", metric=used.metric_name)
        else:
            self._report(watch, "ok", metric=used.metric_name)
        return reading

    def _report(self, watch: LagWatch, status: str, *, metric: str = "", error: str = "") -> None:
        # Logged when a source's status (or the metric it answers from) changes, not every
        # tick: an outage of an hour would otherwise bury the logs.
        key = (watch.service, watch.region)
        previous = self._status.get(key)
        self._status[key] = (status, metric)
        fields = {"service": watch.service, "region": watch.region}
        if metric:
            fields["metric"] = metric
        if error:
            fields["error"] = error
        if previous == (status, metric):
            if status == "read_failed":
                log.debug("replication_lag_read_failed", **fields)
            return
        if status == "ok":
            if previous is not None or metric != watch.queries[0].metric_name:
                log.info("replication_lag_reading", **fields)
        elif status == "no_data":
            log.warning("replication_lag_no_data", **fields)
        elif status == "inactive":
            log.warning("replication_lag_inactive", **fields)
        else:
            log.warning("replication_lag_read_failed", **fields)

    async def run(self, sink: LagSink) -> None:
        await run_regional_loops(
            self.clients,
            "cloudwatch",
            self.watches,
            lambda client, interval, watches: self._loop(client, interval, watches, sink),
            "replication-lag",
        )

    async def _loop(
        self, client: Any, interval: float, watches: list[LagWatch], sink: LagSink
    ) -> None:
        next_at = self.clock.monotonic()
        while True:
            for watch in watches:
                reading = await self.read(client, watch)
                if reading is not None:
                    record_reading(watch.service, watch.region, reading)
                    sink.put_lag(watch.service, watch.region, reading)
            next_at += interval
            now = self.clock.monotonic()
            if next_at < now:  # overran: skip the missed ticks rather than catch up
                next_at = now
            await self.clock.sleep(next_at - now)

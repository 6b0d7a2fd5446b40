"""Logs and metrics, defined in one place.

Metrics: prefix ``failoverd_``, base units (``_seconds``, ``_total``), bounded labels only
(service, region, signal, vantage, a fixed ``reason``/``outcome`` vocabulary — never run
ids or error strings). Probe metrics mirror Prometheus blackbox_exporter's names
(``probe_success``, ``probe_duration_seconds``) so existing dashboards read the same.

Logs: structlog, one snake_case event name per happening with key/value context; JSON when
not on a TTY. Secrets never go in: pass identifiers, not credentials or tokens.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram, Info

_PROBE = ("service", "region", "signal", "vantage")

# --- probes -------------------------------------------------------------------------------
PROBE_SUCCESS = Gauge(
    "failoverd_probe_success",
    "Whether the last probe succeeded (1) or failed (0), as blackbox_exporter's probe_success.",
    _PROBE,
)
PROBE_DURATION = Gauge(
    "failoverd_probe_duration_seconds",
    "How long the last probe took, as blackbox_exporter's probe_duration_seconds.",
    _PROBE,
)
PROBE_FAILURES = Counter(
    "failoverd_probe_failures_total",
    "Failed probes by reason (dns, connect, tls, timeout, status, body).",
    (*_PROBE, "reason"),
)
PROBE_RUNS = Counter("failoverd_probe_runs_total", "Probes started.", ("type",))
PROBE_LATENESS = Histogram(
    "failoverd_probe_scheduling_lateness_seconds",
    "How late a probe started against its deadline; starts up to dispatch_slack early count as 0.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
PROBE_OVERRUNS = Counter(
    "failoverd_probe_overruns_total",
    "Probes skipped because the previous run of the same target had not finished.",
    ("service", "signal"),
)
PROBES_IN_FLIGHT = Gauge("failoverd_probes_in_flight", "Probes running right now.")

# --- AWS Health ---------------------------------------------------------------------------
HEALTH_API_CALLS = Counter(
    "failoverd_health_api_calls_total",
    "AWS Health API calls by operation and outcome (ok, error, throttled, unavailable).",
    ("operation", "outcome"),
)
HEALTH_API_AVAILABLE = Gauge(
    "failoverd_health_api_available", "1 when the last AWS Health poll succeeded."
)
HEALTH_OPEN_EVENTS = Gauge(
    "failoverd_health_open_events",
    "Open AWS Health events matching a policy, by service and region.",
    ("service", "region"),
)
HEALTH_SIGNAL_DISABLED = Gauge(
    "failoverd_health_signal_disabled",
    "1 when AWS Health is disabled (e.g. no Business/Enterprise support subscription).",
)

# --- AWS API in general -------------------------------------------------------------------
AWS_API_CALLS = Counter(
    "failoverd_aws_api_calls_total",
    "AWS API calls by service, operation and outcome (ok, error, throttled).",
    ("aws_service", "operation", "outcome"),
)

AWS_API_RETRIES = Counter(
    "failoverd_aws_api_retries_total",
    "Retries botocore made inside AWS calls that got an answer (throttling, 5xx), by service"
    " and operation.",
    ("aws_service", "operation"),
)

# --- CloudWatch alarms and replication lag ------------------------------------------------
REPLICATION_LAG = Gauge(
    "failoverd_replication_lag_seconds",
    "Last replication lag reading of the replica in a region.",
    ("service", "region"),
)
REPLICATION_LAG_TIMESTAMP = Gauge(
    "failoverd_replication_lag_timestamp_seconds",
    "When the last lag reading was measured (Unix time): its age is time() minus this.",
    ("service", "region"),
)

# --- remote agents (MQTT) -----------------------------------------------------------------
AGENT_MESSAGES = Counter(
    "failoverd_agent_messages_total",
    "Agent messages received, by outcome (accepted, malformed, unknown_service, stale,"
    " future, wrong_version, agent_mismatch, too_large, unsigned, bad_signature, replayed,"
    " duplicate).",
    ("outcome",),
)
AGENT_OBSERVATIONS_DROPPED = Counter(
    "failoverd_agent_observations_dropped_total",
    "Observations dropped from otherwise accepted agent batches, by reason"
    " (unknown_service, stale, future).",
    ("reason",),
)
AGENT_UP = Gauge("failoverd_agent_up", "1 while an agent is online (by its last will).", ("agent",))
AGENT_LAST_SEEN = Gauge(
    "failoverd_agent_last_seen_timestamp_seconds",
    "When an agent's last accepted message arrived (Unix time).",
    ("agent",),
)
MQTT_CONNECTED = Gauge("failoverd_mqtt_connected", "1 while connected to the MQTT broker.")

# --- runbooks ---------------------------------------------------------------------------
RUNBOOK_STEP_ATTEMPTS = Counter(
    "failoverd_runbook_step_attempts_total",
    "Runbook step attempts by action and outcome (succeeded, failed, retryable, timeout, aborted).",
    ("service", "action", "outcome"),
)
RUNBOOK_STEP_DURATION = Histogram(
    "failoverd_runbook_step_duration_seconds",
    "How long one attempt of a runbook step took (check, execute and verify).",
    ("action",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
RUNS_FINISHED = Counter(
    "failoverd_runs_finished_total",
    "Runbook runs finished, by kind and outcome (succeeded, failed).",
    ("service", "kind", "outcome"),
)

# --- HTTP API ---------------------------------------------------------------------------
API_REQUESTS = Counter(
    "failoverd_api_requests_total",
    "HTTP API requests by method, route template and status code.",
    ("method", "route", "status"),
)
API_REQUEST_DURATION = Histogram(
    "failoverd_api_request_duration_seconds",
    "Time taken to answer an HTTP API request, by route template.",
    ("route",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
API_COMMANDS = Counter(
    "failoverd_api_commands_total",
    "Operator commands received over the API, by command and outcome"
    " (accepted, refused, not_leader).",
    ("command", "outcome"),
)

# --- MQTT event stream and commands ------------------------------------------------------
EVENTS_PUBLISHED = Counter(
    "failoverd_events_published_total", "Messages published on the MQTT event stream.", ("type",)
)
EVENTS_DROPPED = Counter(
    "failoverd_events_dropped_total",
    "Event stream messages dropped before publishing (queue_full, invalid).",
    ("reason",),
)
EVENTS_QUEUED = Gauge("failoverd_events_queued", "Event stream messages waiting for the broker.")
EVENTS_CONNECTED = Gauge(
    "failoverd_events_connected", "1 while the event publisher is connected to the broker."
)
MQTT_COMMANDS = Counter(
    "failoverd_mqtt_commands_total",
    "Operator commands received over MQTT, by outcome"
    " (accepted, refused, not_leader, invalid, retained, too_large, unknown_topic, error).",
    ("outcome",),
)

# --- daemon -----------------------------------------------------------------------------
POLICY_RELOADS = Counter(
    "failoverd_policy_reloads_total",
    "Policy reloads (SIGHUP or a changed file), by outcome (success, failure).",
    ("outcome",),
)
SOURCE_RESTARTS = Counter(
    "failoverd_signal_source_restarts_total",
    "Signal sources restarted by the supervisor after they crashed or returned.",
    ("source",),
)
READINESS_STEPS_NOT_READY = Gauge(
    "failoverd_readiness_not_ready_steps",
    "Runbook step checks not ready at the last readiness evaluation.",
    ("service",),
)
READINESS_LAST_RUN = Gauge(
    "failoverd_readiness_last_run_timestamp_seconds", "When readiness was last evaluated."
)

# --- state store ----------------------------------------------------------------------
STORE_OPERATION_DURATION = Histogram(
    "failoverd_store_operation_duration_seconds",
    "Time taken by state-store calls, by backend, operation and outcome"
    " (ok, fenced, timeout, cancelled, unavailable, error).",
    ("backend", "operation", "outcome"),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

OBSERVATIONS = Counter(
    "failoverd_observations_total", "Observations fed to the health book, by source.", ("source",)
)
WALL_CLOCK_OFFSET = Gauge(
    "failoverd_wall_clock_offset_seconds",
    "The host's wall clock minus the daemon's steady clock (moves when the host's clock is"
    " stepped; the daemon keeps its own time until restarted).",
)
OBSERVATIONS_REJECTED = Counter(
    "failoverd_observations_rejected_total",
    "Observations the health book did not count, by source and reason (too_soon: closer to"
    " the cell's previous one than the probe interval allows; out_of_order: not newer than"
    " it; unexpected: no policy cell expects it).",
    ("source", "reason"),
)

# --- engine state (orchestrator.daemon.metrics_export sets these after every engine pass) -------
# Enum gauges: one series per possible value, 1 for the current one and 0 for the others, so
# a query never depends on a series appearing or vanishing when the value changes.
REGION_VERDICT = Gauge(
    "failoverd_region_verdict",
    "A region's verdict as an enum: 1 for the current one (healthy, degraded, down,"
    " unknown), 0 for the others.",
    ("service", "region", "verdict"),
)
SERVICE_PHASE = Gauge(
    "failoverd_service_phase",
    "A service's phase as an enum: 1 for the current one (steady, suspect, blocked,"
    " awaiting_approval, failing_over, failed, paused), 0 for the others.",
    ("service", "phase"),
)
DECISION_REASON = Gauge(
    "failoverd_decision_reason",
    "1 for each reason code of the service's current decision; other reasons have no series.",
    ("service", "reason"),
)
DECISION_CHANGES = Counter(
    "failoverd_decision_changes_total",
    "Decisions that differed from the service's previous one (phase, action, target or reasons).",
    ("service",),
)
ACTIVE_REGION = Gauge(
    "failoverd_active_region",
    "1 for the service's active region, 0 for its other regions.",
    ("service", "region"),
)
RTO_SECONDS = Gauge("failoverd_rto_seconds", "The policy's recovery time objective.", ("service",))
RPO_SECONDS = Gauge("failoverd_rpo_seconds", "The policy's recovery point objective.", ("service",))
VANTAGE_UP = Gauge(
    "failoverd_vantage_up",
    "1 when a vantage point's latest observations of a region pass, 0 when they fail; no"
    " series while unknown. Local probes, agents and the aws_health/cloudwatch vantages.",
    ("service", "region", "vantage"),
)

# --- runs --------------------------------------------------------------------------------
RUNS_STARTED = Counter(
    "failoverd_runs_started_total",
    "Runbook runs started, by kind (failover, switchover, failback) and initiator (policy,"
    " operator). Runs resumed after a restart are not counted again.",
    ("service", "kind", "initiator"),
)
RUN_DURATION = Histogram(
    "failoverd_run_duration_seconds",
    "How long a run took from detection (or from the decision, for an operator's run) to its"
    " end: the time the RTO is measured against.",
    ("service", "kind", "outcome"),
    buckets=(5, 10, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600, 7200),
)
RUN_IN_PROGRESS = Gauge(
    "failoverd_run_in_progress", "1 while a run of the service is in progress.", ("service",)
)
RUN_AWAITING_APPROVAL = Gauge(
    "failoverd_run_awaiting_approval",
    "1 while the service waits for an operator's approval (before or during a run).",
    ("service",),
)
RUN_RTO_BUDGET_REMAINING = Gauge(
    "failoverd_run_rto_budget_remaining_seconds",
    "RTO left for the run in progress (negative once overrun); no series without a run.",
    ("service",),
)
RUN_STEP_STATE = Gauge(
    "failoverd_run_step_state",
    "The current (or last) run's steps as an enum: 1 for the step's state (pending, running,"
    " succeeded, failed, skipped), 0 for the others.",
    ("service", "step", "state"),
)
RUN_SUBSTEP_STATE = Gauge(
    "failoverd_run_substep_state",
    "The current (or last) run's steps' own steps (an ARC Region switch plan's) as an enum:"
    " 1 for the sub-step's state (running, waiting_approval, succeeded, failed, skipped,"
    " cancelled), 0 for the others.",
    ("service", "step", "substep", "state"),
)
RUN_SUBSTEP_DURATION = Gauge(
    "failoverd_run_substep_duration_seconds",
    "How long the current (or last) run's sub-step has run (so far, while it runs).",
    ("service", "step", "substep"),
)

# --- leadership, store, policies, daemon -------------------------------------------------
IS_LEADER = Gauge("failoverd_is_leader", "1 while this instance holds the leader lease.")
FENCING_TOKEN = Gauge(
    "failoverd_fencing_token", "The fencing token of the lease held (0 when not leading)."
)
LEADER_TRANSITIONS = Counter(
    "failoverd_leader_transitions_total",
    "Leader lease transitions of this instance, by event (acquired, lost).",
    ("event",),
)
STORE_CORRUPT_RECORDS = Counter(
    "failoverd_store_corrupt_records_total",
    "Stored records that could not be decoded and were quarantined (kept, reported, worked"
    " around), by backend and kind (service_state, journal); each counted once per process.",
    ("backend", "kind"),
)
STORE_UP = Gauge(
    "failoverd_store_up",
    "1 when the last state-store call or lease step reached the store.",
    ("backend",),
)
# Info metrics: their labels are the keys of the dict given to .info(), listed here for the
# generated reference (docs/metrics.md).
POLICY_INFO = Info("failoverd_policy", "The policy set in use (version: its hash).")
BUILD_INFO = Info("failoverd_build", "The failoverd build running, and its Python.")
INFO_LABELS: dict[str, tuple[str, ...]] = {
    "failoverd_policy": ("version",),
    "failoverd_build": ("version", "python"),
}
POLICY_DIFFERS_FROM_LEADER = Gauge(
    "failoverd_policy_differs_from_leader",
    "1 when this instance's policy set differs from the one the leader announced it acts on"
    " (0 on the leader, and while no leader is known).",
)
POLICY_LAST_RELOAD_SUCCESSFUL = Gauge(
    "failoverd_policy_last_reload_successful",
    "1 when the last policy reload (or the load at start) succeeded, 0 when it failed.",
)
POLICY_LAST_RELOAD_TIMESTAMP = Gauge(
    "failoverd_policy_last_reload_timestamp_seconds",
    "When the policy set in use was loaded (Unix time).",
)
ENGINE_TICK_DURATION = Histogram(
    "failoverd_engine_tick_duration_seconds",
    "How long one engine pass over every service took.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ASYNCIO_TASKS = Gauge(
    "failoverd_asyncio_tasks",
    "Tasks alive on the daemon's event loop (a number that must not grow over a long run).",
)
EVENT_LOOP_LAG = Histogram(
    "failoverd_event_loop_lag_seconds",
    "How late a 0.25 s timer fired: time the event loop was busy with something else.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FLIGHT_RECORDER_BYTES = Gauge(
    "failoverd_flight_recorder_bytes",
    "What the flight recorder keeps on disk, all services together (flight_recorder.max_bytes"
    " caps it).",
)
FLIGHT_RECORDER_DROPPED = Counter(
    "failoverd_flight_recorder_dropped_total",
    "Flight recorder records lost: a full queue, or a write that failed.",
)


# --- logging ------------------------------------------------------------------------------
REDACTED = "[redacted]"
# Key names whose string values are secrets whatever they hold.
SECRET_KEYS = frozenset(
    {"authorization", "proxy_authorization", "password", "secret", "api_token", "bearer"}
)
_SECRET_PATTERNS = (
    # An Authorization or Cookie header quoted with its value (a parser error, a repr).
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key|x-auth-token)"
            r"(['\"]?\s*[:=]\s*['\"]?)((?:bearer|basic)\s+)?[^\s'\",;]+"
        ),
        r"\1\2\3" + REDACTED,
    ),
    # A credential after its scheme, wherever it is quoted: `Bearer abc`, `Basic abc`.
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\",;]+"), r"\1\2" + REDACTED),
)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]*\?)([^\s#'\"]*)", re.IGNORECASE)
_QUERY_VALUE = re.compile(r"=[^&;]*")


_KNOWN_SECRETS: set[str] = set()
MIN_KNOWN_SECRET = 8  # shorter values would redact ordinary words


def add_known_secret(value: str) -> None:
    """Redact ``value`` itself from every log line from now on, wherever it appears (a
    client may paste the API token into a command's reason). Secret files register what
    they hold when read (:func:`orchestrator.settings.read_secret_text`)."""
    value = value.strip()
    if len(value) >= MIN_KNOWN_SECRET:
        _KNOWN_SECRETS.add(value)


def redact_text(text: str) -> str:
    """``text`` without what may be a secret: the secrets the daemon has read, credentials
    after ``Bearer``/``Basic``, the values of Authorization-like headers quoted in it, URL user
    info and URL query values (``token=...``). Cheap when there is nothing to redact."""
    for secret in _KNOWN_SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "@" in text:
        text = _URL_USERINFO.sub("***@", text)
    if "?" in text and "://" in text:
        text = _URL_QUERY.sub(lambda m: m[1] + _QUERY_VALUE.sub("=***", m[2]), text)
    lowered = text.lower()
    if any(w in lowered for w in ("bearer", "basic", "auth", "cookie", "api-key")):
        for pattern, replacement in _SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
    return text


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return REDACTED if key.lower() in SECRET_KEYS else redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, dict):
        return {str(k): _redact_value(str(k), v) for k, v in value.items()}
    return _redact_value(key, str(value))  # an object is rendered as text: redact that text


def redact_processor(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: every string value through :func:`redact_text` (last before
    rendering, so that rendered tracebacks are covered too)."""
    return {k: _redact_value(k, v) for k, v in event.items()}


def exception_place(exc: BaseException) -> str:
    """``file:function:line`` of the innermost frame of ``exc``'s traceback: where it was
    raised, to log instead of its text (which may quote request data, headers included)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    code = tb.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}:{tb.tb_lineno}"


def _from_library(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A record from a library's standard logging, as one of our events: named
    ``library_log`` with the logger's name and message, and an exception reduced to its type
    and innermost place. Its text is dropped: aiohttp's parser errors quote the raw header
    bytes (a token with a stray CR included), and other libraries quote URLs."""
    record: logging.LogRecord | None = event.get("_record")
    if record is None:
        return event
    event["logger"] = record.name
    event["message"] = event.pop("event", "")
    event["event"] = "library_log"
    exc_info = event.pop("exc_info", None) or record.exc_info
    if exc_info and exc_info is not True and exc_info[1] is not None:
        event["error"] = type(exc_info[1]).__name__
        event["where"] = exception_place(exc_info[1])
    record.exc_info = None
    record.exc_text = None
    return event


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """Set up structlog: JSON lines when not on a TTY (or when asked), readable otherwise.

    The standard library's logging (aiohttp, asyncio, botocore, warnings) goes through the
    same processors and renderer, so every line on stderr is one event in one format, and
    every value passes :func:`redact_processor` on its way out."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, stamp, _from_library],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact_processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    logging.captureWarnings(True)


def get_logger(name: str = "failoverd") -> Any:
    return structlog.get_logger(name)


# --- audit --------------------------------------------------------------------------------
AUDIT_RECORDS = Counter(
    "failoverd_audit_records_total",
    "Decision records for the audit log, by outcome (written, failed, dropped).",
    ("outcome",),
)

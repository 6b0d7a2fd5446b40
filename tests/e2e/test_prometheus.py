"""A real Prometheus (Debian's `prometheus`) scraping `failoverd sandbox` with the shipped alert
rules: a us-east-1 outage moves the failover metrics and fires FailoverStarted, as an on-call
engineer would see it through Prometheus's HTTP API; then every dashboard query and alert
expression runs against the live data without an evaluation error (promtool only parses;
many-to-many matches and the like fail at query time). Everything listens on 127.0.0.1;
both processes are stopped at the end."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.support import (  # noqa: F401 - the fixture applies to this module
    COMMAND,
    ROOT,
    _mosquitto_when_in_ci,
    start_sandbox,
    stop,
    wait_for,
)
from tests.fixtures.binaries import free_port, require_binary
from tests.integration.test_dashboards import dashboard_queries, load_dashboard, load_rules

ALERTS = ROOT / "dashboards" / "prometheus" / "alerts.yml"
SERVICE, PRIMARY, STANDBY = "webapp", "us-east-1", "us-west-2"
PROMETHEUS_START = 20.0  # seconds for Prometheus to listen and scrape the daemon once
STEADY_DEADLINE = 30.0  # the sandbox's first verdicts, as Prometheus sees them
FAILOVER_DEADLINE = 30.0  # detection (~3 s) + the run (~1 s) + a scrape and a rule pass


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=3) as response:
        return json.loads(response.read())


class Prometheus:
    """Prometheus's HTTP API on loopback."""

    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = _get(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def evaluate(self, promql: str) -> dict[str, Any]:
        """The API's answer, errors included (HTTP 4xx/5xx carry a JSON body too)."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            return dict(_get(url))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))

    def value(self, promql: str) -> float | None:
        """The value of a query that yields at most one series (None: no series)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = _get(f"{self.base}/api/v1/targets")["data"]["activeTargets"]
        return found

    def last_rule_evaluation(self) -> datetime:
        """When the oldest of the rule groups was last evaluated."""
        groups = _get(f"{self.base}/api/v1/rules")["data"]["groups"]
        return min(_instant(g["lastEvaluation"]) for g in groups)

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = _get(f"{self.base}/api/v1/alerts")["data"]["alerts"]
        return found


def _instant(text: str) -> datetime:
    """A Go RFC 3339 timestamp (nanoseconds, Z) as a datetime (microseconds)."""
    return datetime.fromisoformat(re.sub(r"(\.\d{1,6})\d*", r"\1", text).replace("Z", "+00:00"))


@pytest.fixture
def sandbox() -> Iterator[tuple[str, str]]:
    """A running sandbox: its API base URL (which serves /metrics) and its control URL."""
    proc, api, control = start_sandbox()
    try:
        yield api, control
    finally:
        rc = stop(proc)
    assert rc == 0


@pytest.fixture
def prometheus(tmp_path: Path, sandbox: tuple[str, str]) -> Iterator[Prometheus]:
    """Prometheus scraping the sandbox daemon every second and evaluating the shipped rules
    every second, with its data in tmp_path."""
    binary = require_binary("prometheus", "/usr/bin/prometheus")
    daemon = urllib.parse.urlsplit(sandbox[0]).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {"job_name": "failoverd", "static_configs": [{"targets": [daemon]}]}
                ],
            }
        )
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        api = Prometheus(f"http://127.0.0.1:{port}")

        def scraped() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited ({proc.returncode}):\n{log.read_text()}")
            return [t["health"] for t in api.targets()] == ["up"]

        wait_for(scraped, "Prometheus to scrape the sandbox daemon", PROMETHEUS_START, log)
        # Rules evaluated before the first scrape saw no data (FailoverdDown pending): wait
        # for a pass of the rules over scraped data.
        first_scrape = _instant(api.targets()[0]["lastScrape"])
        wait_for(
            lambda: api.last_rule_evaluation() > first_scrape,
            "a rule evaluation after the first scrape",
            PROMETHEUS_START,
            log,
        )
        yield api
    finally:
        stop(proc, sig=signal.SIGTERM, name="prometheus")


def test_a_region_outage_moves_the_failover_metrics_and_fires_failover_started(
    sandbox: tuple[str, str], prometheus: Prometheus
) -> None:
    _, control = sandbox
    webapp = f'service="{SERVICE}"'
    started = f'sum(failoverd_runs_started_total{{{webapp}, kind="failover"}}) or vector(0)'
    succeeded = (
        f'sum(failoverd_runs_finished_total{{{webapp}, kind="failover", outcome="succeeded"}})'
        " or vector(0)"
    )
    firing = f'ALERTS{{alertname="FailoverStarted", alertstate="firing", {webapp}}}'

    def steady() -> bool:
        verdicts = prometheus.query(f'failoverd_region_verdict{{{webapp}, verdict="healthy"}} == 1')
        return (
            prometheus.value(f'failoverd_active_region{{{webapp}, region="{PRIMARY}"}}') == 1
            and {v["metric"]["region"] for v in verdicts} == {PRIMARY, STANDBY}
            and prometheus.value(f'failoverd_service_phase{{{webapp}, phase="steady"}}') == 1
        )

    wait_for(steady, f"{SERVICE} steady in {PRIMARY}, as Prometheus sees it", STEADY_DEADLINE)
    # Quiet before the outage: no run counted, and no alert pending or firing at all.
    assert prometheus.value(started) == 0
    assert [(a["labels"], a["state"]) for a in prometheus.alerts()] == []

    fault = subprocess.run(
        [*COMMAND, "fault", "region-down", PRIMARY, "--control", control],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert fault.returncode == 0, fault.stderr

    def failed_over() -> bool:
        return (
            prometheus.value(succeeded) == 1
            and prometheus.value(f'failoverd_active_region{{{webapp}, region="{STANDBY}"}}') == 1
            and prometheus.query(firing) != []
        )

    wait_for(
        failed_over, "the failover in Prometheus and FailoverStarted firing", FAILOVER_DEADLINE
    )
    assert prometheus.value(started) == 1
    assert prometheus.value(f'failoverd_active_region{{{webapp}, region="{PRIMARY}"}}') == 0
    alert = next(
        a
        for a in prometheus.alerts()
        if a["labels"]["alertname"] == "FailoverStarted" and a["labels"]["service"] == SERVICE
    )
    assert alert["state"] == "firing"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == f"failoverd started a failover of {SERVICE}"
    assert alert["annotations"]["runbook_url"].endswith("docs/alerts.md#failoverstarted")

    # The dashboard, read after a failover: every query evaluates, and the panels an
    # on-call engineer reads first have data.
    errors = []
    for where, expr in dashboard_queries(load_dashboard()):
        answer = prometheus.evaluate(expr)
        if answer["status"] != "success":
            errors.append(f"{where}: {answer.get('error')}")
    for rule in load_rules():
        answer = prometheus.evaluate(rule["expr"])
        if answer["status"] != "success":
            errors.append(f"alert {rule['alert']}: {answer.get('error')}")
    assert errors == []
    matrix = prometheus.query(
        f"max by (service, region, verdict) (failoverd_region_verdict{{{webapp}}} == 1)"
    )
    assert {(v["metric"]["region"], v["metric"]["verdict"]) for v in matrix} == {
        (PRIMARY, "down"),
        (STANDBY, "healthy"),
    }
    steps = prometheus.query(f'failoverd_run_step_state{{{webapp}, state="succeeded"}} == 1')
    assert steps, "the run's steps are not on the step timeline"
    assert prometheus.query(f'failoverd_vantage_up{{{webapp}, region="{PRIMARY}"}} == 0')

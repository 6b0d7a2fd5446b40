"""The on-call pack in dashboards/: the Grafana dashboard and the Prometheus alert rules.

What an on-call engineer relies on: every PromQL expression parses (`promtool check rules`,
on the rules and on a rules file generated from the dashboard's queries), every alert
behaves as its unit tests say (`promtool test rules`), every metric and label they name is
one the daemon exports (read from the prometheus_client registry after importing
orchestrator.telemetry), every runbook link lands on a section of docs/alerts.md, and the
dashboard works against whichever Prometheus data source the user picks.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import orchestrator.telemetry as telemetry
from tests.fixtures.binaries import require_binary

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "dashboards" / "failoverd.json"
ALERTS = ROOT / "dashboards" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "dashboards" / "prometheus" / "alerts_test.yml"
RUNBOOKS = ROOT / "docs" / "alerts.md"
PROMTOOL_DEADLINE = 60.0

# Series Prometheus itself attaches to every scrape target, with the target labels.
SCRAPE_SERIES = {"up": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})
# Grafana's built-in variables and what to put in their place for promtool.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}


# --- a small PromQL reader: which metrics and which label names an expression uses -------
@dataclass(frozen=True)
class Selector:
    """A vector selector: its metric name (None when it has only matchers) and the label
    names its matchers use."""

    metric: str | None
    labels: tuple[str, ...]


_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_:]))
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)
AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ]
)
LABEL_LIST_KEYWORDS = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
KEYWORDS = frozenset(
    ["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"]
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in a (valid) PromQL expression. Function and aggregation names,
    label names in by/without/on/ignoring/group_*, keywords, strings and durations are not
    metrics."""
    toks = _tokens(expr)
    found: list[Selector] = []
    i = 0

    def at(k: int) -> str:
        return toks[k][1] if k < len(toks) else ""

    def matchers(k: int) -> tuple[tuple[str, ...], str | None, int]:
        """Label names (and a __name__ value) of the {...} block opening at k; the index
        after its closing brace."""
        labels: list[str] = []
        name: str | None = None
        k += 1
        while at(k) != "}":
            label, op, value = toks[k][1], at(k + 1), toks[k + 2]
            if toks[k][0] != "ident" or op not in ("=", "!=", "=~", "!~") or value[0] != "string":
                raise ValueError(f"unexpected matcher {toks[k : k + 3]} in {expr!r}")
            if label == "__name__" and op == "=":
                name = value[1][1:-1]
            else:
                labels.append(label)
            k += 3
            if at(k) == ",":
                k += 1
        return tuple(labels), name, k + 1

    while i < len(toks):
        kind, text = toks[i]
        if text == "[":
            i = next(k for k in range(i, len(toks)) if toks[k][1] == "]") + 1
        elif text == "{":
            labels, name, i = matchers(i)
            found.append(Selector(name, labels))
        elif kind == "ident":
            nxt = at(i + 1)
            lowered = text.lower()
            if text in LABEL_LIST_KEYWORDS:
                i += 1
                if at(i) == "(":
                    i = next(k for k in range(i, len(toks)) if toks[k][1] == ")") + 1
            elif (
                nxt == "("
                or lowered in KEYWORDS
                or (text in AGGREGATIONS and nxt in ("by", "without"))
            ):
                i += 1
            elif nxt == "{":
                labels, _, i = matchers(i + 1)
                found.append(Selector(text, labels))
            else:
                found.append(Selector(text, ()))
                i += 1
        else:
            i += 1
    return found


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {Selector("up", ())}),
        (
            'sum by (service, le) (rate(a_bucket{service=~"x|y", le!="+Inf"}[5m]))',
            {Selector("a_bucket", ("service", "le"))},
        ),
        (
            "max by (job, service) (a) > on (job, service) group_left (region) max(b) by (x)",
            {Selector("a", ()), Selector("b", ())},
        ),
        (
            'label_replace(c == 1, "dst", "$1", "region", "(.*)") or on (service) vector(0)',
            {Selector("c", ())},
        ),
        (
            'd{kind="failover"} unless d{kind="failover"} offset 5m and ignoring (x) e',
            {Selector("d", ("kind",)), Selector("e", ())},
        ),
        ('{__name__="f", job="j"} * 2.5e3 + 0x1f', {Selector("f", ("job",))}),
        (
            "histogram_quantile(0.99, sum without (instance) (rate(g[$x:1m]))) > bool 1",
            {Selector("g", ())},
        ),
        ('count_values("value", h) + topk(3, i) - time() + absent(j{k="by"})', None),
        ("sum(rate(k[1h30m] @ end())) / scalar(l) ^ -inf", None),
    ],
)
def test_the_promql_reader_finds_the_metrics_and_their_matchers(
    expr: str, expected: set[Selector] | None
) -> None:
    found = set(selectors(expr.replace("$x", "5m")))
    if expected is None:
        names = {s.metric for s in found}
        assert names == ({"h", "i", "j"} if "count_values" in expr else {"k", "l"})
    else:
        assert found == expected


# --- what the daemon exports ----------------------------------------------------------
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "stateset": ("",),
}
# Labels a series has beyond the metric's own: a histogram bucket's bound, a quantile.
SUFFIX_LABELS = {"_bucket": ("le",)}


def exported() -> dict[str, frozenset[str]]:
    """Every series name the daemon's registry exports, with its label names. The label
    names of failoverd's metrics come from their definitions in orchestrator.telemetry (a
    labelled metric has no samples until first used); those of the process and platform
    collectors from their samples."""
    labels_of: dict[str, tuple[str, ...]] = {}
    for value in vars(telemetry).values():
        name = getattr(value, "_name", None)
        labelnames = getattr(value, "_labelnames", None)
        if isinstance(name, str) and isinstance(labelnames, tuple):
            labels_of[name] = labelnames
    for info, labelnames in getattr(telemetry, "INFO_LABELS", {}).items():
        labels_of[info] = tuple(labelnames)
    names: dict[str, frozenset[str]] = {}
    for family in REGISTRY.collect():
        base = labels_of.get(family.name, ())
        for suffix in SUFFIXES.get(family.type, ("",)):
            summary_value = family.type == "summary" and suffix == ""
            extra = SUFFIX_LABELS.get(suffix, ("quantile",) if summary_value else ())
            names[family.name + suffix] = frozenset((*base, *extra))
        for s in family.samples:
            names[s.name] = names.get(s.name, frozenset()) | frozenset(s.labels)
    for name, labels in SCRAPE_SERIES.items():
        names[name] = labels
    return names


def assert_exported(where: str, exprs: list[str], problems: list[str]) -> None:
    names = exported()
    for expr in exprs:
        for sel in selectors(expr):
            if sel.metric is None:
                problems.append(f"{where}: a selector without a metric name in {expr!r}")
                continue
            if sel.metric not in names:
                problems.append(f"{where}: {sel.metric} is not exported by the daemon")
                continue
            unknown = set(sel.labels) - names[sel.metric] - TARGET_LABELS
            if unknown:
                problems.append(
                    f"{where}: {sel.metric} has no label {sorted(unknown)}"
                    f" (it has {sorted(names[sel.metric])})"
                )


# --- the files ------------------------------------------------------------------------
def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|([A-Za-z_]\w*))")


def substitute(expr: str, defined: set[str]) -> str:
    """The query as Prometheus would receive it with every service and region selected
    (`.*`, the variables' allValue) and Grafana's built-in intervals filled in."""

    def value(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name not in defined:
            raise AssertionError(f"{expr!r} uses ${name}, which the dashboard does not define")
        return ".*"

    return _VARIABLE.sub(value, expr)


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, annotation query and the selector inside
    every label_values() variable query, variables substituted."""
    defined = set(variables(dashboard))
    out: list[tuple[str, str]] = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
            out.append((where, substitute(target["expr"], defined)))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            out.append(
                (f"annotation {annotation['name']!r}", substitute(annotation["expr"], defined))
            )
    for var in variables(dashboard).values():
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert m, f"variable {var['name']}: expected label_values(selector, label)"
            out.append((f"variable {var['name']}", substitute(m[1], defined)))
    return out


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool", "/usr/bin/promtool")
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=PROMTOOL_DEADLINE
    )


# --- alert rules ------------------------------------------------------------------------
def test_the_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_the_alerts_behave_as_their_unit_tests_say() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in load_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


EXPECTED_ALERTS = {
    "FailoverStarted", "FailoverFailed", "RTOBudgetLow", "ReplicationLagAboveRPO",
    "ReplicationLagStale", "ServiceBlocked", "AwaitingApproval", "VantagePointsDisagree",
    "AgentOffline", "HealthApiUnavailable", "NoLeader", "StoreUnavailable",
    "PolicyReloadFailing", "FailoverdDown", "FailoverdMetricsAbsent",
}  # fmt: skip


def test_every_alert_says_how_bad_it_is_what_happened_and_where_the_runbook_is() -> None:
    rules = load_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= EXPECTED_ALERTS
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook_url"}, name
        url = annotations["runbook_url"]
        assert url.startswith("https://github.com/failoverd/failoverd/blob/main/docs/alerts.md#"), (
            url
        )
        assert url.endswith("#" + name.lower()), f"{name}: runbook anchor {url}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_runbook_link_lands_on_a_section_of_docs_alerts_md() -> None:
    anchors = {
        github_anchor(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", RUNBOOKS.read_text(), re.M)
    }
    for rule in load_rules():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"{rule['alert']}: docs/alerts.md has no section #{anchor}"


def test_the_alert_rules_and_their_tests_name_only_what_the_daemon_exports() -> None:
    problems: list[str] = []
    for rule in load_rules():
        assert_exported(f"alert {rule['alert']}", [rule["expr"]], problems)
        # Queries inside annotation templates: {{ printf "...%q..." $labels.x | query }}
        for text in rule["annotations"].values():
            for query in re.findall(r'printf "((?:[^"\\]|\\.)*)"', text):
                expr = query.replace('\\"', '"').replace("%q", '"x"')
                assert_exported(f"alert {rule['alert']} annotation", [expr], problems)
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    series = [s["series"] for case in tests["tests"] for s in case.get("input_series", [])]
    # The unit tests feed series by name; a series the daemon never exports tests nothing.
    unused_on_purpose = [s for s in series if s.startswith('up{job="node"')]
    assert_exported("alerts_test.yml", [s for s in series if s not in unused_on_purpose], problems)
    assert problems == []


# --- the dashboard ----------------------------------------------------------------------
def test_the_dashboard_queries_pass_promtool_check(tmp_path: Path) -> None:
    queries = dashboard_queries(load_dashboard())
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr} for n, (_, expr) in enumerate(queries)
    ]
    generated = tmp_path / "dashboard_rules.yml"
    generated.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(generated))
    where = "\n".join(f"query_{n}: {w}" for n, (w, _) in enumerate(queries))
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + where
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_the_dashboard_names_only_what_the_daemon_exports() -> None:
    problems: list[str] = []
    for where, expr in dashboard_queries(load_dashboard()):
        assert_exported(where, [expr], problems)
    assert problems == []


def test_the_dashboard_reads_every_query_through_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    source = variables(dashboard)["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    ours = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == ours, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == ours, f"{panel['title']} {target['refId']}"
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == ours, annotation["name"]
    for var in variables(dashboard).values():
        if var["type"] == "query":
            assert var["datasource"] == ours, var["name"]
    # No data source pinned by uid anywhere (it would break the import in another Grafana).
    uids = re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text())
    assert set(uids) <= {"${datasource}", "-- Grafana --", dashboard["uid"]}


def test_the_service_and_region_variables_list_what_prometheus_knows() -> None:
    found = variables(load_dashboard())
    for name, metric in (
        ("service", "failoverd_service_phase"),
        ("region", "failoverd_region_verdict"),
    ):
        var = found[name]
        assert var["type"] == "query"
        query = var["query"]["query"]
        assert query.startswith(f"label_values({metric}") and query.endswith(f", {name})"), query
        assert name in exported()[metric]
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"
    # The region list follows the chosen services.
    assert "$service" in found["region"]["query"]["query"]


def test_every_panel_is_explained_and_the_layout_has_no_overlaps() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    taken: dict[tuple[int, int], str] = {}
    ids: set[int] = set()
    for panel in panels(dashboard):
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        if panel["type"] != "row":
            assert panel["title"] and len(panel["description"]) >= 40, panel["title"]
            assert panel["targets"], panel["title"]
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_the_dashboard_shows_what_on_call_reads_first() -> None:
    """The issue's list: services not steady and why, the region verdict matrix, RTO budget
    and lag vs RPO, probe success by vantage, the run's step timeline, leader and daemon
    health — each is on a panel, by the metric that carries it."""
    uses: dict[str, set[str]] = {}
    for panel in panels(load_dashboard()):
        for target in panel.get("targets", []):
            for sel in selectors(substitute(target["expr"], {"service", "region"})):
                uses.setdefault(sel.metric or "", set()).add(panel["type"])
    wanted = {
        "failoverd_service_phase": "table",
        "failoverd_decision_reason": "table",
        "failoverd_region_verdict": "table",
        "failoverd_run_rto_budget_remaining_seconds": "bargauge",
        "failoverd_replication_lag_seconds": "timeseries",
        "failoverd_rpo_seconds": "timeseries",
        "failoverd_probe_success": "timeseries",
        "failoverd_vantage_up": "state-timeline",
        "failoverd_run_step_state": "state-timeline",
        "failoverd_is_leader": "stat",
        "failoverd_fencing_token": "stat",
        "failoverd_store_up": "stat",
        "up": "stat",
        "failoverd_engine_tick_duration_seconds_bucket": "timeseries",
        "failoverd_event_loop_lag_seconds_bucket": "timeseries",
    }
    missing = {m: kind for m, kind in wanted.items() if kind not in uses.get(m, set())}
    assert missing == {}


def panel_query(dashboard: dict[str, Any], title: str, ref: str = "A") -> str:
    """A panel's query as Prometheus receives it with every service and region selected."""
    panel = next(p for p in panels(dashboard) if p["title"] == title)
    target = next(t for t in panel["targets"] if t["refId"] == ref)
    return substitute(target["expr"], set(variables(dashboard)))


def series(metric: str, instance: str, values: str, **labels: str) -> dict[str, str]:
    pairs = {"job": "failoverd", "instance": instance, **labels}
    body = ",".join(f'{k}="{v}"' for k, v in pairs.items())
    return {"series": f"{metric}{{{body}}}", "values": values}


def enum_series(
    metric: str, instance: str, label: str, current: str, values: list[str], **labels: str
) -> list[dict[str, str]]:
    return [
        series(metric, instance, "1x3" if v == current else "0x3", **labels, **{label: v})
        for v in values
    ]


PHASES = ["steady", "suspect", "blocked", "awaiting_approval", "failing_over", "failed", "paused"]


def test_the_needs_attention_table_shows_the_leaders_view_with_reasons(tmp_path: Path) -> None:
    """Two daemons: the leader (fo-1) sees webapp blocked, the follower (fo-2) sees it
    differently; catalog is reported by the follower only. The table must show the leader's
    phase and reasons for webapp (not a mix, and no many-to-many error), the follower's view
    for catalog, each with its active region, and nothing for steady ledger."""
    leader, follower = "fo-1:8080", "fo-2:8080"
    phase = "failoverd_service_phase"
    inputs = [
        series("failoverd_is_leader", leader, "1x3"),
        series("failoverd_is_leader", follower, "0x3"),
        *enum_series(phase, leader, "phase", "blocked", PHASES, service="webapp"),
        *enum_series(phase, follower, "phase", "suspect", PHASES, service="webapp"),
        *enum_series(phase, leader, "phase", "steady", PHASES, service="ledger"),
        *enum_series(phase, follower, "phase", "failing_over", PHASES, service="catalog"),
    ]
    for instance, service, reason in [
        (leader, "webapp", "active_down"),
        (leader, "webapp", "no_healthy_target"),
        (follower, "webapp", "no_quorum"),
        (follower, "webapp", "not_leader"),
        (leader, "ledger", "stale_data"),
    ]:
        inputs.append(
            series(
                "failoverd_decision_reason",
                instance,
                "1x3",
                **{"service": service, "reason": reason},
            )
        )
    for instance, service, active, other in [
        (leader, "webapp", "us-east-1", "us-west-2"),
        (follower, "webapp", "us-west-2", "us-east-1"),  # a follower lagging behind
        (leader, "ledger", "eu-west-1", "eu-central-1"),
        (follower, "catalog", "us-west-2", "us-east-1"),
    ]:
        inputs.append(
            series("failoverd_active_region", instance, "1x3", service=service, region=active)
        )
        inputs.append(
            series("failoverd_active_region", instance, "0x3", service=service, region=other)
        )

    def row(service: str, active: str, phase: str, reason: str | None = None) -> dict[str, Any]:
        labels = f'service="{service}", active_region="{active}", phase="{phase}"'
        if reason:
            labels += f', reason="{reason}"'
        return {"labels": "{" + labels + "}", "value": 1}

    dashboard = load_dashboard()
    checks = [
        {
            "expr": panel_query(dashboard, "Services that need attention: phase and reasons"),
            "eval_time": "2m",
            "exp_samples": [
                row("webapp", "us-east-1", "blocked", "active_down"),
                row("webapp", "us-east-1", "blocked", "no_healthy_target"),
                row("catalog", "us-west-2", "failing_over"),
            ],
        },
        {
            "expr": panel_query(dashboard, "Active region"),
            "eval_time": "2m",
            "exp_samples": [
                {"labels": '{service="webapp", region="us-east-1"}', "value": 1},
                {"labels": '{service="ledger", region="eu-west-1"}', "value": 1},
                {"labels": '{service="catalog", region="us-west-2"}', "value": 1},
            ],
        },
        {
            "expr": panel_query(dashboard, "Services not steady"),
            "eval_time": "2m",
            "exp_samples": [{"labels": "{}", "value": 2}],
        },
    ]
    run_promql_tests(tmp_path, inputs, checks)


def test_the_timelines_encode_verdicts_and_step_states_as_their_value_mappings_say(
    tmp_path: Path,
) -> None:
    verdicts = ["healthy", "degraded", "down", "unknown"]
    states = ["pending", "running", "succeeded", "failed", "skipped"]
    verdict_series, step_series = "failoverd_region_verdict", "failoverd_run_step_state"
    one = "fo-1:8080"
    inputs = [
        *enum_series(verdict_series, one, "verdict", "down", verdicts, service="webapp",
                     region="us-east-1"),
        *enum_series(verdict_series, one, "verdict", "healthy", verdicts, service="webapp",
                     region="us-west-2"),
        *enum_series(step_series, one, "state", "failed", states, service="webapp",
                     step="promote"),
        *enum_series(step_series, one, "state", "succeeded", states, service="webapp",
                     step="fence"),
    ]  # fmt: skip
    dashboard = load_dashboard()

    def mapped(title: str) -> dict[str, float]:
        """The panel's value mapping, text -> value."""
        panel = next(p for p in panels(dashboard) if p["title"] == title)
        options = panel["fieldConfig"]["defaults"]["mappings"][0]["options"]
        return {text["text"]: float(value) for value, text in options.items()}

    verdict, step = mapped("Region verdicts over time"), mapped("Run steps (current or last run)")
    checks = [
        {
            "expr": panel_query(dashboard, "Region verdicts over time"),
            "eval_time": "1m",
            "exp_samples": [
                {"labels": '{service="webapp", region="us-east-1"}', "value": verdict["down"]},
                {"labels": '{service="webapp", region="us-west-2"}', "value": verdict["healthy"]},
            ],
        },
        {
            "expr": panel_query(dashboard, "Run steps (current or last run)"),
            "eval_time": "1m",
            "exp_samples": [
                {"labels": '{service="webapp", step="promote"}', "value": step["failed"]},
                {"labels": '{service="webapp", step="fence"}', "value": step["succeeded"]},
            ],
        },
    ]
    run_promql_tests(tmp_path, inputs, checks)


def run_promql_tests(
    tmp_path: Path, inputs: list[dict[str, str]], checks: list[dict[str, Any]]
) -> None:
    """Evaluate dashboard queries over input series with `promtool test rules`."""
    (tmp_path / "none.yml").write_text("groups: []\n")
    suite = {
        "rule_files": ["none.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": inputs, "promql_expr_test": checks}],
    }
    (tmp_path / "queries_test.yml").write_text(yaml.safe_dump(suite, sort_keys=False))
    result = promtool("test", "rules", "queries_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

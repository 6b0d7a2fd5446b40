"""replication.max_age against how CloudWatch serves lag metrics: a datapoint is stamped with
the start of its period and arrives late, so a max_age under two periods plus the delay
reads "unknown" much of the time. validate refuses it, naming file, line and the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.policy.loader import load_policy_text
from orchestrator.policy.yamlsource import SourceErrors

POLICY = """\
service: shop
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
detection: {{quorum: 1}}
signals:
  - {{name: api, type: http, target: "https://api.{{region}}.example.com/healthz"}}
replication:
  sources:
    us-west-2: {source}
  interval: 30s
  max_age: {max_age}
runbooks:
  failover:
    - {{name: w, action: wait, params: {{duration: 1s}}}}
"""
RDS = "{type: rds_replica_lag, db_instance: shop-usw2}"


@pytest.mark.parametrize(
    ("source", "max_age", "fresh"),
    [
        (RDS, "1m", "3m"),  # 2 x 1m + the default 1m delay
        (RDS, "2m59s", "3m"),
        ("{type: aurora_global_rpo_lag, db_cluster: c, delay: 2m}", "3m", "4m"),
        (
            "{type: cloudwatch_metric, namespace: N, metric_name: M, period: 5m, delay: 0s}",
            "9m",
            "10m",
        ),
    ],
)
def test_a_max_age_shorter_than_a_fresh_reading_is_an_error(
    source: str, max_age: str, fresh: str
) -> None:
    with pytest.raises(SourceErrors) as caught:
        load_policy_text(POLICY.format(source=source, max_age=max_age), "shop.yaml")
    [error] = caught.value.errors
    assert (error.file, error.line, error.path) == ("shop.yaml", 12, "replication.max_age")
    assert f"= {fresh} (a datapoint is stamped at the start of its period" in error.message


@pytest.mark.parametrize(
    ("source", "max_age"),
    [
        (RDS, "3m"),
        ("{type: rds_replica_lag, db_instance: x, delay: 0s}", "2m"),
        ("{type: cloudwatch_metric, namespace: N, metric_name: M, period: 10s}", "1m20s"),
    ],
)
def test_a_max_age_that_allows_a_fresh_reading_loads(source: str, max_age: str) -> None:
    load_policy_text(POLICY.format(source=source, max_age=max_age), "shop.yaml")


def test_a_period_getmetricdata_refuses_is_an_error() -> None:
    source = "{type: cloudwatch_metric, namespace: N, metric_name: M, period: 45s}"
    with pytest.raises(SourceErrors, match="1s, 5s, 10s, 20s, 30s or a multiple of 1m"):
        load_policy_text(POLICY.format(source=source, max_age="1h"), "shop.yaml")


def test_validate_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(POLICY.format(source=RDS, max_age="1m"), encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:12:" in out and "replication.max_age: max_age 1m is shorter" in out
    assert "use at least 3m30s (with the interval 30s)" in out

"""AWS Health events are an account's own: one poller per identity the aws_health signals
read as (the daemon's own, or each role), each with only its signals' watches."""

from __future__ import annotations

from orchestrator.policy.loader import load_policy_text
from orchestrator.settings import AwsSettings
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.signals.aws_health import health_sources

ROLE = "arn:aws:iam::111111111111:role/failoverd"


def policy(service: str, aws: str = "") -> str:
    return f"""\
service: {service}
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
detection: {{quorum: 1}}
{aws}
signals:
  - {{name: api, type: http, target: "https://{service}.{{region}}.example.com/"}}
  - {{name: aws, type: aws_health, services: [EC2]}}
runbooks:
  failover:
    - {{name: w, action: wait, params: {{duration: 1s}}}}
"""


def test_one_poller_per_identity() -> None:
    policies = [
        load_policy_text(policy("shop"), "shop.yaml"),
        load_policy_text(policy("ledger", f'aws: {{role_arn: "{ROLE}"}}'), "ledger.yaml"),
        load_policy_text(policy("crm", f'aws: {{role_arn: "{ROLE}"}}'), "crm.yaml"),
    ]
    clients = AwsClients(AwsClientConfig(access_key_id="testing", secret_access_key="testing"))
    sources = health_sources(policies, clients, AwsSettings())
    by_name = {s.name: sorted(w.service for w in s.watches) for s in sources}
    assert by_name == {"aws_health": ["shop"], f"aws_health:{ROLE}": ["crm", "ledger"]}

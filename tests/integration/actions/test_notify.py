"""sns.publish against a real moto server, mqtt.publish against a real mosquitto broker."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest

from orchestrator.actions.base import ActionFailed, RetryableError, StepContext
from orchestrator.actions.notify import (
    BrokerPublisher,
    MqttPublish,
    SnsPublish,
    set_mqtt_publisher,
)
from orchestrator.actions.registry import get_action
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.policy.actions import MqttPublish as MqttParams
from orchestrator.policy.actions import SnsPublish as SnsParams
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from orchestrator.signals.mqtt_agents import BrokerConfig
from tests.fixtures.binaries import free_port
from tests.fixtures.mosquitto import Mosquitto
from tests.fixtures.moto_server import MotoServer

SOURCE, TARGET = "us-east-1", "us-west-2"
ACCOUNT = "123456789012"  # moto's default account
SNS = SnsPublish()
MQTT = MqttPublish()


@functools.cache
def clients_for(moto: MotoServer) -> AwsClients:
    """One client factory per server, shared by the module's tests: its session loads each
    service model once instead of in every test."""
    return AwsClients(moto.client_config())


@functools.cache
def boto3_for(moto: MotoServer, service: str, region: str) -> Any:
    """Seeding and inspection clients, made once (making a boto3 client takes a while)."""
    return moto.boto3_client(service, region)


def make_ctx(
    params: Any,
    *,
    aws: AwsClients | None = None,
    facts: dict[str, Any] | None = None,
    within: float = 10.0,
) -> StepContext:
    return StepContext(
        service="web",
        run_id="run-7",
        step="tell-ops",
        attempt=1,
        kind="failover",
        source_region=SOURCE,
        target_region=TARGET,
        primary_region=SOURCE,
        params=params,
        aws=aws or AwsClients(),
        clock=SYSTEM_CLOCK,
        deadline=SYSTEM_CLOCK.monotonic() + within,
        facts=facts or {},
    )


def test_registered_under_their_policy_names() -> None:
    assert isinstance(get_action("sns.publish"), SnsPublish)
    assert isinstance(get_action("mqtt.publish"), MqttPublish)
    assert SnsPublish.params_model is SnsParams
    assert MqttPublish.params_model is MqttParams


# ---------------------------------------------------------------------------------------
# SNS


@dataclass
class Topic:
    moto: MotoServer
    arn: str
    queue_url: str

    def received(self) -> list[dict[str, Any]]:
        """The SNS envelopes delivered to the subscribed queue so far."""
        sqs = boto3_for(self.moto, "sqs", TARGET)
        reply = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
        return [json.loads(m["Body"]) for m in reply.get("Messages", [])]


def _topic(moto: MotoServer, name: str, fifo: bool = False) -> Topic:
    """A topic in the target region with an SQS queue subscribed: what the topic sends
    can be read back."""
    sns, sqs = boto3_for(moto, "sns", TARGET), boto3_for(moto, "sqs", TARGET)
    attributes = {"FifoTopic": "true"} if fifo else {}
    arn = sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
    queue_attributes = {"FifoQueue": "true"} if fifo else {}
    url = sqs.create_queue(QueueName=name, Attributes=queue_attributes)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
    return Topic(moto, arn, url)


@pytest.fixture
def topic(moto: MotoServer) -> Topic:
    return _topic(moto, "ops")


async def test_sns_check_finds_the_topic_in_its_own_region(topic: Topic) -> None:
    params = SnsParams(topic_arn=topic.arn, message="m")
    report = await SNS.check(make_ctx(params, aws=clients_for(topic.moto)))
    assert report.ready, report.findings
    assert report.control_plane_region == TARGET


async def test_sns_check_reports_a_missing_topic_and_a_bad_arn(moto: MotoServer) -> None:
    aws = clients_for(moto)
    missing = f"arn:aws:sns:{TARGET}:{ACCOUNT}:nope"
    report = await SNS.check(make_ctx(SnsParams(topic_arn=missing, message="m"), aws=aws))
    assert not report.ready
    assert "NotFound" in report.findings[0]

    report = await SNS.check(make_ctx(SnsParams(topic_arn="ops-topic", message="m"), aws=aws))
    assert not report.ready
    assert report.findings == (
        "not an SNS topic ARN: 'ops-topic' (expected arn:aws:sns:REGION:ACCOUNT:NAME)",
    )


async def test_sns_publish_delivers_the_message_with_the_run_context(topic: Topic) -> None:
    params = SnsParams(topic_arn=topic.arn, subject="failover", message="web moved to us-west-2")
    ctx = make_ctx(params, aws=clients_for(topic.moto))

    outcome = await SNS.execute(ctx)
    await SNS.verify(ctx)

    assert outcome.changed
    (envelope,) = topic.received()
    assert envelope["Subject"] == "failover"
    assert envelope["Message"] == "web moved to us-west-2"
    attributes = {k: v["Value"] for k, v in envelope["MessageAttributes"].items()}
    assert attributes == {
        "failoverd.service": "web",
        "failoverd.run_id": "run-7",
        "failoverd.step": "tell-ops",
        "failoverd.kind": "failover",
        "failoverd.source_region": SOURCE,
        "failoverd.target_region": TARGET,
    }
    assert envelope["MessageId"] in outcome.detail


async def test_sns_publish_twice_is_at_least_once_with_a_dedup_key(topic: Topic) -> None:
    # The documented contract: a repeat (a resumed step) sends again, and the receiver can
    # tell it is the same notification from the run id and step.
    params = SnsParams(topic_arn=topic.arn, message="m")
    ctx = make_ctx(params, aws=clients_for(topic.moto))
    await SNS.execute(ctx)
    await SNS.execute(ctx)
    keys = [
        (
            e["MessageAttributes"]["failoverd.run_id"]["Value"],
            e["MessageAttributes"]["failoverd.step"]["Value"],
        )
        for e in topic.received()
    ]
    assert keys == [("run-7", "tell-ops")] * 2


async def test_sns_fifo_topic_drops_the_repeat(moto: MotoServer) -> None:
    fifo = _topic(moto, "ops.fifo", fifo=True)
    ctx = make_ctx(SnsParams(topic_arn=fifo.arn, message="m"), aws=clients_for(moto))
    await SNS.execute(ctx)
    await SNS.execute(ctx)
    assert len(fifo.received()) == 1


async def test_sns_publish_to_a_missing_topic_fails_for_good(moto: MotoServer) -> None:
    params = SnsParams(topic_arn=f"arn:aws:sns:{TARGET}:{ACCOUNT}:nope", message="m")
    with pytest.raises(ActionFailed, match="Publish failed: NotFound"):
        await SNS.execute(make_ctx(params, aws=clients_for(moto)))


async def test_sns_publish_with_aws_unreachable_is_retryable() -> None:
    aws = AwsClients(
        AwsClientConfig(
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            access_key_id="testing",
            secret_access_key="testing",
            connect_timeout=0.5,
            max_attempts=1,
        )
    )
    params = SnsParams(topic_arn=f"arn:aws:sns:{TARGET}:{ACCOUNT}:ops", message="m")
    with pytest.raises(RetryableError):
        await SNS.execute(make_ctx(params, aws=aws))


def test_sns_iam_statement_names_the_topic_per_region() -> None:
    params = SnsParams(topic_arn=f"arn:aws:sns:{{target_region}}:{ACCOUNT}:ops", message="m")
    statement, *kms = SNS.iam_statements(params, [SOURCE, TARGET])
    assert statement.actions == ("sns:GetTopicAttributes", "sns:Publish")
    assert statement.resources == tuple(f"arn:aws:sns:{r}:{ACCOUNT}:ops" for r in (SOURCE, TARGET))
    # An encrypted topic's key is not known before readiness reads it: any key in the topic's
    # region, and only through SNS there.
    assert [(k.actions, k.resources, k.conditions) for k in kms] == [
        statement
        for r in (SOURCE, TARGET)
        for statement in (
            (("kms:DescribeKey",), (f"arn:aws:kms:{r}:*:key/*",), ()),
            (
                ("kms:Decrypt", "kms:GenerateDataKey*"),
                (f"arn:aws:kms:{r}:*:key/*",),
                (("StringEquals", "kms:ViaService", (f"sns.{r}.amazonaws.com",)),),
            ),
        )
    ]
    key = f"arn:aws:kms:{TARGET}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    named = SnsParams(topic_arn=f"arn:aws:sns:{TARGET}:{ACCOUNT}:ops", message="m", kms_key=key)
    _, use, describe = SNS.iam_statements(named, [TARGET])
    assert (use.actions, use.resources, use.conditions) == (
        ("kms:Decrypt", "kms:GenerateDataKey*"),
        (key,),
        (),
    )
    assert describe.resources == (key,)


# --- KMS-encrypted topics and subjects ------------------------------------------------------


def _encrypted(topic: Topic, state: str = "Enabled") -> str:
    kms = boto3_for(topic.moto, "kms", TARGET)
    meta = kms.create_key(Description="ops topic")["KeyMetadata"]
    key = meta["Arn"]
    if state == "Disabled":
        kms.disable_key(KeyId=meta["KeyId"])
    boto3_for(topic.moto, "sns", TARGET).set_topic_attributes(
        TopicArn=topic.arn, AttributeName="KmsMasterKeyId", AttributeValue=key
    )
    return str(key)


async def test_sns_check_reads_the_topics_kms_key(topic: Topic) -> None:
    key = _encrypted(topic)
    params = SnsParams(topic_arn=topic.arn, message="m")
    report = await SNS.check(make_ctx(params, aws=clients_for(topic.moto)))
    assert report.ready
    assert report.findings == (
        f"topic encrypted with KMS key {key} (Enabled): publishing needs kms:GenerateDataKey*"
        " and kms:Decrypt on it (failoverd iam-policy grants them through SNS; name it in"
        " kms_key to narrow)",
    )
    other = SnsParams(topic_arn=topic.arn, message="m", kms_key="arn:aws:kms:x:1:key/other")
    report = await SNS.check(make_ctx(other, aws=clients_for(topic.moto)))
    assert not report.ready
    assert report.findings == (
        f"the topic is encrypted with {key}, not the kms_key {other.kms_key}",
    )


async def test_sns_with_a_disabled_key_is_not_ready_and_cannot_publish(topic: Topic) -> None:
    key = _encrypted(topic, "Disabled")
    params = SnsParams(topic_arn=topic.arn, message="m")
    ctx = make_ctx(params, aws=clients_for(topic.moto))
    report = await SNS.check(ctx)
    assert not report.ready
    assert report.findings == (
        f"KMS key {key} of the topic is Disabled: SNS would refuse to publish"
        " (KMSDisabled/KMSInvalidState)",
    )
    with pytest.raises(ActionFailed, match="KMSDisabled"):
        await SNS.execute(ctx)


@pytest.mark.parametrize(
    "subject", ["line one\nline two", "tab\there", "x" * 100], ids=["newline", "tab", "100"]
)
def test_sns_subjects_follow_the_publish_rules(subject: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="subject"):
        SnsParams(topic_arn=f"arn:aws:sns:{TARGET}:{ACCOUNT}:ops", message="m", subject=subject)
    SnsParams(topic_arn=f"arn:aws:sns:{TARGET}:{ACCOUNT}:ops", message="m", subject="x" * 99)


# ---------------------------------------------------------------------------------------
# MQTT


@pytest.fixture
def installed() -> Iterator[None]:
    """Whatever a test installs as the daemon's publisher is removed afterwards."""
    set_mqtt_publisher(None)
    try:
        yield
    finally:
        set_mqtt_publisher(None)


def _config(broker: Mosquitto) -> BrokerConfig:
    return BrokerConfig.from_url(broker.url, timeout=2.0)


@pytest.fixture
async def subscriber(mosquitto: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, timeout=5.0) as client:
        await client.subscribe("failoverd/test/#", qos=1)
        yield client


async def _next(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(5):
        async for message in client.messages:
            return message
    raise AssertionError("no message")


async def test_mqtt_publish_reaches_the_broker(
    installed: None, mosquitto: Mosquitto, subscriber: aiomqtt.Client
) -> None:
    set_mqtt_publisher(BrokerPublisher(_config(mosquitto)))
    params = MqttParams(topic="failoverd/test/events", payload='{"moved": "us-west-2"}')
    ctx = make_ctx(params)
    assert (await MQTT.check(ctx)).ready

    outcome = await MQTT.execute(ctx)
    await MQTT.verify(ctx)

    assert outcome.changed
    message = await _next(subscriber)
    assert str(message.topic) == "failoverd/test/events"
    assert message.payload == b'{"moved": "us-west-2"}'


async def test_mqtt_retained_message_is_there_for_late_subscribers(
    installed: None, mosquitto: Mosquitto
) -> None:
    topic = f"failoverd/test/retained-{free_port()}"
    params = MqttParams(topic=topic, payload="active=us-west-2", retain=True)
    await MQTT.execute(
        make_ctx(params, facts={"mqtt_publisher": BrokerPublisher(_config(mosquitto))})
    )

    async with aiomqtt.Client("127.0.0.1", mosquitto.port, timeout=5.0) as late:
        await late.subscribe(topic, qos=1)
        message = await _next(late)
    assert message.retain
    assert message.payload == b"active=us-west-2"


async def test_mqtt_without_a_broker_is_not_ready_and_fails(installed: None) -> None:
    ctx = make_ctx(MqttParams(topic="failoverd/test/x", payload="p"))
    report = await MQTT.check(ctx)
    assert not report.ready
    assert report.findings == ("no MQTT broker is configured for mqtt.publish steps",)
    with pytest.raises(ActionFailed, match="no MQTT broker"):
        await MQTT.execute(ctx)


async def test_mqtt_wildcard_topic_is_refused(installed: None, mosquitto: Mosquitto) -> None:
    set_mqtt_publisher(BrokerPublisher(_config(mosquitto)))
    ctx = make_ctx(MqttParams(topic="failoverd/+/x", payload="p"))
    report = await MQTT.check(ctx)
    assert not report.ready
    assert "wildcard" in report.findings[0]
    with pytest.raises(ActionFailed, match="wildcard"):
        await MQTT.execute(ctx)


async def test_mqtt_broker_down_is_retryable_and_bounded(installed: None) -> None:
    set_mqtt_publisher(BrokerPublisher(BrokerConfig.from_url(f"mqtt://127.0.0.1:{free_port()}")))
    ctx = make_ctx(MqttParams(topic="failoverd/test/x", payload="p"), within=3.0)
    async with asyncio.timeout(5):
        with pytest.raises(RetryableError, match="MQTT publish to failoverd/test/x failed"):
            await MQTT.execute(ctx)


@dataclass
class RecordingPublisher:
    sent: list[tuple[str, bytes, int, bool]] = field(default_factory=list)

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        self.sent.append((topic, payload, qos, retain))


async def test_a_publisher_in_the_facts_wins_over_the_installed_one(installed: None) -> None:
    daemon_wide, for_this_step = RecordingPublisher(), RecordingPublisher()
    set_mqtt_publisher(daemon_wide)
    params = MqttParams(topic="t/x", payload="p", qos=2, retain=True)
    await MQTT.execute(make_ctx(params, facts={"mqtt_publisher": for_this_step}))
    assert for_this_step.sent == [("t/x", b"p", 2, True)]
    assert daemon_wide.sent == []

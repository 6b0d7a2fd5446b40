"""Notifications from a runbook: ``sns.publish`` and ``mqtt.publish``.

Delivery is **at least once**. A notification cannot be read back to see whether it was
sent, so ``execute`` always publishes; the one window for a duplicate is a crash (or a lost
reply) between the publish and the journal's record of it, after which the resumed step
publishes again. That is acceptable for a notification, and receivers that care can
deduplicate: every SNS message carries the run id and the step in its message attributes
(``failoverd.run_id``, ``failoverd.step``), and a FIFO topic gets a deduplication id derived
from them, so SNS itself drops the repeat within its five-minute window.

A KMS-encrypted topic (its ``KmsMasterKeyId`` attribute) needs the publisher to hold
``kms:GenerateDataKey*`` and ``kms:Decrypt`` on the key (SNS developer guide, "Encryption at
rest": "the publisher must have ... permissions for the AWS KMS key"), and the key to be
enabled: otherwise Publish answers ``KMSAccessDenied``, ``KMSDisabled``, ``KMSNotFound`` or
``KMSInvalidState`` at failover time. ``check`` reads the attribute and the key's state
(``DescribeKey``), and ``failoverd iam-policy`` grants the KMS permissions: on the step's
``kms_key`` when it names one, else on any key but only through SNS in the topic's region
(``kms:ViaService``).

MQTT goes through an :class:`MqttPublisher`, which the daemon installs once with
:func:`set_mqtt_publisher` (it owns the broker settings); a step may bring its own in
``ctx.facts["mqtt_publisher"]`` (tests, or a daemon with several brokers).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import aiomqtt
from pydantic import BaseModel

from orchestrator import mqtt_calls
from orchestrator.actions.base import (
    Action,
    ActionFailed,
    ApiDependency,
    CheckReport,
    ExecuteOutcome,
    IamStatement,
    RetryableError,
    StepContext,
    typed_params,
)
from orchestrator.actions.errors import aws_errors
from orchestrator.actions.render import fill_for_iam
from orchestrator.partitions import partition_of
from orchestrator.policy.actions import DEFAULT_SNS_MESSAGE_BYTES
from orchestrator.policy.actions import MqttPublish as MqttPublishParams
from orchestrator.policy.actions import SnsPublish as SnsPublishParams
from orchestrator.signals.mqtt_agents import BrokerConfig
from orchestrator.telemetry import get_logger

log = get_logger("failoverd.actions.notify")

ATTRIBUTE_PREFIX = "failoverd."
MQTT_PUBLISHER_FACT = "mqtt_publisher"
_MQTT_TOPIC_MAX_BYTES = 65535


# ---------------------------------------------------------------------------------------
# SNS


def topic_region(topic_arn: str) -> str:
    """The region of an SNS topic ARN (``arn:<partition>:sns:REGION:ACCOUNT:NAME``);
    ValueError saying what is wrong otherwise."""
    parts = topic_arn.split(":")
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sns" or not all(parts[3:]):
        raise ValueError(
            f"not an SNS topic ARN: {topic_arn!r} (expected arn:aws:sns:REGION:ACCOUNT:NAME)"
        )
    return parts[3]


def _run_attributes(ctx: StepContext) -> dict[str, dict[str, str]]:
    values = {
        "service": ctx.service,
        "run_id": ctx.run_id,
        "step": ctx.step,
        "kind": ctx.kind,
        "source_region": ctx.source_region,
        "target_region": ctx.target_region,
    }
    # SNS rejects empty attribute values; an empty one says nothing anyway.
    return {
        ATTRIBUTE_PREFIX + key: {"DataType": "String", "StringValue": value}
        for key, value in values.items()
        if value
    }


class SnsPublish(Action):
    """Publish ``message`` to an SNS topic (in the topic's own region, taken from its ARN),
    with the run's context as message attributes. At least once (see the module docs)."""

    name = "sns.publish"
    params_model = SnsPublishParams

    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, SnsPublishParams)
        try:
            region = topic_region(p.topic_arn)
        except ValueError as exc:
            return CheckReport(ready=False, findings=(str(exc),))
        try:
            async with aws_errors(), ctx.aws.client("sns", region) as client:
                response = await client.get_topic_attributes(TopicArn=p.topic_arn)
        except ActionFailed as exc:
            # NotFound, AuthorizationError...: what a readiness report is for. Transient
            # errors (RetryableError) propagate: they say nothing about readiness.
            finding = f"SNS topic {p.topic_arn} cannot be used: {exc}"
            return CheckReport(ready=False, findings=(finding,), control_plane_region=region)
        attributes: dict[str, str] = response.get("Attributes") or {}
        findings: list[str] = []
        notes: list[str] = []
        limit = int(attributes.get("MaximumMessageSize") or DEFAULT_SNS_MESSAGE_BYTES)
        size = len(p.message.encode("utf-8"))
        if size > limit:
            findings.append(
                f"the message is {size} bytes; topic {p.topic_arn} takes at most {limit}"
            )
        key = attributes.get("KmsMasterKeyId")
        if key:
            problems, seen = await self._key_problems(ctx, region, key, p.kms_key)
            findings.extend(problems)
            if not problems:
                notes.append(
                    f"topic encrypted with KMS key {key} ({seen}): publishing needs"
                    " kms:GenerateDataKey* and kms:Decrypt on it (failoverd iam-policy grants"
                    + (
                        " them)"
                        if p.kms_key
                        else " them through SNS; name it in kms_key to narrow)"
                    )
                )
        elif p.kms_key:
            findings.append(f"topic {p.topic_arn} is not encrypted, but kms_key names {p.kms_key}")
        return CheckReport(
            ready=not findings, findings=tuple(findings + notes), control_plane_region=region
        )

    async def _key_problems(
        self, ctx: StepContext, region: str, key: str, named: str | None
    ) -> tuple[list[str], str]:
        """Why publishing with the topic's ``key`` would fail (DescribeKey), and its state."""
        try:
            async with aws_errors(), ctx.aws.client("kms", region) as kms:
                meta = (await kms.describe_key(KeyId=key))["KeyMetadata"]
        except ActionFailed as exc:
            return [f"KMS key {key} of the topic cannot be read: {exc}"], ""
        state = str(meta.get("KeyState", ""))
        problems: list[str] = []
        if state != "Enabled":
            problems.append(
                f"KMS key {key} of the topic is {state}: SNS would refuse to publish"
                " (KMSDisabled/KMSInvalidState)"
            )
        arn = str(meta.get("Arn", ""))
        if named and named not in (key, arn, meta.get("KeyId")):
            problems.append(f"the topic is encrypted with {arn or key}, not the kms_key {named}")
        return problems, state

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, SnsPublishParams)
        try:
            region = topic_region(p.topic_arn)
        except ValueError as exc:
            raise ActionFailed(str(exc)) from None
        request: dict[str, Any] = {
            "TopicArn": p.topic_arn,
            "Message": p.message,
            "MessageAttributes": _run_attributes(ctx),
        }
        if p.subject:
            request["Subject"] = p.subject
        if p.topic_arn.endswith(".fifo"):
            # FIFO topics require a group, and deduplicate on this id for five minutes:
            # a resumed step's second publish is dropped by SNS itself.
            request["MessageGroupId"] = ctx.service
            request["MessageDeduplicationId"] = hashlib.sha256(
                f"{ctx.service}/{ctx.run_id}/{ctx.step}".encode()
            ).hexdigest()
        async with aws_errors(), ctx.aws.client("sns", region) as client:
            response = await client.publish(**request)
        message_id = str(response.get("MessageId", ""))
        log.info(
            "sns_published",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            topic_arn=p.topic_arn,
            message_id=message_id,
        )
        return ExecuteOutcome(changed=True, detail=f"published message {message_id}")

    async def verify(self, ctx: StepContext) -> None:
        # SNS answered with a MessageId: it has taken the message. What subscribers do with
        # it is beyond what this step can observe.
        return None

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        p = typed_params(params, SnsPublishParams)
        try:
            region: str | None = topic_region(p.topic_arn)
        except ValueError:
            region = target_region
        # Publish is SNS's data plane, but it is served by the topic's region alone.
        return (ApiDependency("sns", "Publish", region, "data"),)

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        p = typed_params(params, SnsPublishParams)
        arns = sorted({fill_for_iam(p.topic_arn, r, p) for r in regions})
        statements = [
            IamStatement(actions=("sns:GetTopicAttributes", "sns:Publish"), resources=tuple(arns))
        ]
        kms_actions = ("kms:Decrypt", "kms:GenerateDataKey*")
        if p.kms_key:
            statements.append(IamStatement(actions=kms_actions, resources=(p.kms_key,)))
            # Readiness reads the key's state itself (not through SNS).
            statements.append(IamStatement(actions=("kms:DescribeKey",), resources=(p.kms_key,)))
            return statements
        # The key is the topic's, not known before readiness reads it: any key in the topic's
        # region, usable through SNS there only.
        for arn in arns:
            try:
                region = topic_region(arn)
            except ValueError:
                continue
            partition = partition_of(regions[0] if "*" in region else region)
            scope = "*" if "*" in region else region
            any_key = partition.arn("kms", scope, account, "key/*")
            statements.append(IamStatement(actions=("kms:DescribeKey",), resources=(any_key,)))
            statements.append(
                IamStatement(
                    actions=kms_actions,
                    resources=(any_key,),
                    conditions=(
                        (
                            "StringEquals",
                            "kms:ViaService",
                            (f"sns.{scope}.{partition.dns_suffix}",),
                        ),
                    ),
                )
            )
        return statements


# ---------------------------------------------------------------------------------------
# MQTT


@runtime_checkable
class MqttPublisher(Protocol):
    """Publishes single messages to an MQTT broker for the ``mqtt.publish`` action.

    Contract: ``publish`` returns once the broker has the message as far as ``qos`` lets
    the client know (PUBACK for 1, PUBCOMP for 2, written out for 0). Bounded in time:
    each broker operation by the publisher's own timeout, the whole call by the caller's
    ``asyncio.timeout`` (so it must tolerate cancellation). A broker that cannot be reached
    or drops the connection raises ``aiomqtt.MqttError``, ``OSError`` or ``TimeoutError``
    (all transient); a setting that cannot work raises ``ValueError``. Not idempotent
    (MQTT cannot tell a repeat from a new message); safe to call concurrently. Never logs
    credentials."""

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None: ...


class BrokerPublisher:
    """An :class:`MqttPublisher` that connects for each message (runbook notifications are
    rare; a connection held open for them would only be one more thing to supervise)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        # Each operation (CONNACK, PUBACK...) is bounded by the config's timeout.
        async with self.config.client() as client:
            await mqtt_calls.publish(
                client, topic, payload, qos=qos, retain=retain, within=self.config.timeout
            )


_publisher: MqttPublisher | None = None


def set_mqtt_publisher(publisher: MqttPublisher | None) -> None:
    """Install the publisher ``mqtt.publish`` steps use (the daemon calls this at start-up
    with its broker settings; None removes it)."""
    global _publisher
    _publisher = publisher


def mqtt_publisher(ctx: StepContext) -> MqttPublisher | None:
    """The step's publisher: ``ctx.facts["mqtt_publisher"]`` if given, else the installed
    one."""
    given = ctx.facts.get(MQTT_PUBLISHER_FACT)
    if given is not None:
        if not isinstance(given, MqttPublisher):
            raise TypeError(f"ctx.facts[{MQTT_PUBLISHER_FACT!r}] is not an MqttPublisher")
        return given
    return _publisher


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to (None when it can)."""
    if not topic:
        return "MQTT topic is empty"
    if "+" in topic or "#" in topic:
        return f"MQTT topic {topic!r} has a wildcard (+ or #): one cannot publish to it"
    if "\0" in topic:
        return "MQTT topic contains a NUL character"
    if len(topic.encode()) > _MQTT_TOPIC_MAX_BYTES:
        return f"MQTT topic is longer than {_MQTT_TOPIC_MAX_BYTES} bytes"
    return None


class MqttPublish(Action):
    """Publish ``payload`` to ``topic`` (with ``qos`` and ``retain``) through the installed
    :class:`MqttPublisher`. At least once; a retained message makes a repeat harmless."""

    name = "mqtt.publish"
    params_model = MqttPublishParams

    async def check(self, ctx: StepContext) -> CheckReport:
        p = typed_params(ctx, MqttPublishParams)
        findings = []
        if mqtt_publisher(ctx) is None:
            findings.append("no MQTT broker is configured for mqtt.publish steps")
        problem = topic_problem(p.topic)
        if problem is not None:
            findings.append(problem)
        return CheckReport(ready=not findings, findings=tuple(findings))

    async def execute(self, ctx: StepContext) -> ExecuteOutcome:
        p = typed_params(ctx, MqttPublishParams)
        problem = topic_problem(p.topic)
        if problem is not None:
            raise ActionFailed(problem)
        publisher = mqtt_publisher(ctx)
        if publisher is None:
            raise ActionFailed("no MQTT broker is configured for mqtt.publish steps")
        remaining = ctx.remaining()
        if remaining <= 0:
            raise RetryableError(f"no time left in the step to publish to {p.topic}")
        try:
            async with asyncio.timeout(remaining):
                await publisher.publish(p.topic, p.payload.encode(), qos=p.qos, retain=p.retain)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise RetryableError(
                f"MQTT publish to {p.topic} failed: {type(exc).__name__}: {exc}"
            ) from exc
        except ValueError as exc:  # BrokerConfigError included: a file, a bad setting
            raise ActionFailed(f"MQTT publish to {p.topic} cannot work: {exc}") from exc
        log.info(
            "mqtt_published",
            service=ctx.service,
            run_id=ctx.run_id,
            step=ctx.step,
            topic=p.topic,
            qos=p.qos,
            retain=p.retain,
        )
        return ExecuteOutcome(changed=True, detail=f"published to {p.topic}")

    async def verify(self, ctx: StepContext) -> None:
        return None

    def dependencies(
        self, params: BaseModel, *, source_region: str, target_region: str
    ) -> tuple[ApiDependency, ...]:
        return ()  # the broker, not AWS

    def iam_statements(
        self, params: BaseModel, regions: Sequence[str], account: str = "*"
    ) -> list[IamStatement]:
        return []  # the broker's ACLs govern this, not IAM

"""Action names (as policies write them) to implementations, imported on first use."""

from __future__ import annotations

import importlib
from functools import cache

from orchestrator.actions.base import Action
from orchestrator.policy.actions import ACTION_NAMES

# name -> (module, class)
_IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    "route53.set_record": ("orchestrator.actions.route53", "SetRecord"),
    "route53.set_health_check_inverted": ("orchestrator.actions.route53", "SetHealthCheckInverted"),
    "rds.promote_read_replica": ("orchestrator.actions.rds", "PromoteReadReplica"),
    "aurora.global_failover": ("orchestrator.actions.aurora", "GlobalFailover"),
    "autoscaling.set_capacity": ("orchestrator.actions.autoscaling", "SetCapacity"),
    "ecs.set_desired_count": ("orchestrator.actions.ecs", "SetDesiredCount"),
    "sns.publish": ("orchestrator.actions.notify", "SnsPublish"),
    "mqtt.publish": ("orchestrator.actions.notify", "MqttPublish"),
    "webhook": ("orchestrator.actions.webhook", "Webhook"),
    "approval": ("orchestrator.actions.approval", "Approval"),
    "wait": ("orchestrator.actions.wait", "Wait"),
    "arc.set_routing_controls": ("orchestrator.actions.arc", "SetRoutingControls"),
    "arc.region_switch": ("orchestrator.actions.region_switch", "RegionSwitch"),
}
assert set(_IMPLEMENTATIONS) == ACTION_NAMES, "every policy action needs an implementation"


@cache
def get_action(name: str) -> Action:
    """The shared instance for ``name``; KeyError for a name no policy may use."""
    module_name, class_name = _IMPLEMENTATIONS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    action = cls()
    if not isinstance(action, Action):
        raise TypeError(f"{module_name}.{class_name} is not an Action")
    return action

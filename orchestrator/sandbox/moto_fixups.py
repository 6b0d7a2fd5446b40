"""Named fix-ups of moto where it differs from what real AWS does.

moto runs in this process (``ThreadedMotoServer``), so its backend and response classes can
be patched: the fix-ups make the emulator report what AWS reports after a change, and refuse
what AWS refuses, so production ``check``/``verify`` code can stay strict and a test that
passes against the sandbox means something against AWS. Each fix-up is named, listed in
:data:`FIXUPS`, and shown by a test (tests/integration/actions/test_moto_fixups.py) to
close a real gap: moto as is, then fixed.

* ``rds_promote_clears_source`` — after PromoteReadReplica, AWS shows the instance with no
  ``ReadReplicaSourceDBInstanceIdentifier`` and the source no longer lists it; moto keeps
  both links.
* ``rds_promote_needs_available_replica`` — PromoteReadReplica of a replica that is not
  ``available`` (backing up, modifying, optimising storage...) answers
  ``InvalidDBInstanceState``; moto promotes it whatever its status (tests set the status
  in moto's backend, as a real replica's backup window would).
* ``rds_global_source_is_writer`` — a global cluster created from an existing cluster
  (``SourceDBClusterIdentifier``) has that cluster as its writer (``IsWriter: true``); moto
  reports ``false``.
* ``rds_remove_from_global_any_region`` — RemoveFromGlobalCluster works in any region (the
  detached cluster's own, typically) and leaves the cluster standalone; moto keeps global
  clusters in us-east-1's backend only, so the call from another region silently does
  nothing, and the detached cluster still names its global cluster.
* ``route53_refuses_conflicting_records`` — ChangeResourceRecordSets answers
  ``InvalidChangeBatch`` for a CNAME at the zone apex, a CNAME sharing its name with
  another type, and simple and weighted/failover sets mixed for one name and type; moto
  accepts them all.
* ``ecs_scalable_target_bounds_desired_count`` — an ECS service with an Application Auto
  Scaling target keeps its desired count inside [MinCapacity, MaxCapacity]: registering
  the target moves it there (API reference: RegisterScalableTarget "changes the resource's
  current capacity to a value that is inside of this range"), and a count set outside is
  brought back by the scaling that follows (emulated at once); moto keeps whatever
  UpdateService set, so a fence to 0 under MinCapacity 2 looks done.
* ``autoscaling_suspended_launch_starts_nothing`` — with the group's ``Launch`` process
  suspended, a scale-out starts no instance; moto starts them anyway.
* ``autoscaling_instance_refreshes`` — StartInstanceRefresh and DescribeInstanceRefreshes
  (moto: HTTP 500), enough to show a refresh under way (it stays ``InProgress``).
* ``sns_subject_rules`` — a Publish ``Subject`` with a line break or a control character is
  refused (``InvalidParameter``); moto checks its length only.
* ``sns_publish_needs_a_usable_kms_key`` — Publish to a topic whose ``KmsMasterKeyId`` names
  a missing, disabled or to-be-deleted key fails (``KMSNotFound``, ``KMSDisabled``,
  ``KMSInvalidState``); moto publishes anyway. (Whether the publisher may *use* the key is
  IAM, which moto does not enforce.)
* ``cloudwatch_datapoints_arrive_late`` — a datapoint becomes readable
  (GetMetricData) only :data:`CLOUDWATCH_DELAY` seconds after its timestamp, as AWS-published
  metrics arrive late; moto serves it at once. (moto already stamps a period's aggregate with
  the period's start, as CloudWatch does.)
* ``rds_global_failover_and_switchover`` — FailoverGlobalCluster and SwitchoverGlobalCluster,
  which moto does not implement (HTTP 500), with replicated positions: a failover with
  ``AllowDataLoss`` loses the writes not yet replicated, a switchover waits for the
  secondary and loses none (:mod:`orchestrator.sandbox.aurora_global`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.applicationautoscaling.models import ApplicationAutoscalingBackend
from moto.autoscaling.models import FakeAutoScalingGroup
from moto.autoscaling.responses import AutoScalingResponse
from moto.cloudwatch.models import CloudWatchBackend
from moto.core.exceptions import ServiceException
from moto.ecs.models import EC2ContainerServiceBackend
from moto.rds.exceptions import RDSClientError
from moto.rds.models import RDSBackend, rds_backends
from moto.rds.responses import RDSResponse
from moto.route53.exceptions import Route53ClientError
from moto.route53.models import Route53Backend
from moto.sns.models import SNSBackend
from moto.sns.responses import SNSResponse

from orchestrator.sandbox.moto_route53_fixups import PATCHES as ROUTE53_PATCHES

GLOBAL_CLUSTERS_REGION = "us-east-1"  # where moto's RDS responses keep global clusters

_MISSING: Any = object()  # an attribute moto's class does not have (a call it lacks)


def _original(cls: type, attribute: str) -> Any:
    """moto's own ``cls.attribute`` (as it was before any fix-up), or :data:`_MISSING`."""
    return _ORIGINALS[(cls, attribute)]


def _promote_read_replica(self: Any, db_kwargs: dict[str, Any]) -> Any:
    database = self.databases[db_kwargs["db_instance_identifier"]]
    source_id = database.source_db_instance_identifier if database.is_replica else None
    result = _original(RDSBackend, "promote_read_replica")(self, db_kwargs)
    if source_id:
        source = self.find_db_from_id(source_id)
        for link in (result.db_instance_arn, result.db_instance_identifier):
            if link in source.replicas:
                source.replicas.remove(link)
        result.source_db_instance_identifier = None
    return result


def _promote_needs_available(self: Any) -> Any:
    """rds_promote_needs_available_replica: "a read replica cannot be promoted to a standalone
    instance when it is in the backing-up status" (API reference); RDS answers
    InvalidDBInstanceState for a replica in any status but available."""
    identifier = str(self.params.get("DBInstanceIdentifier", ""))
    database = self.backend.databases.get(identifier.lower()) or self.backend.databases.get(
        identifier
    )
    if database is not None and database.status != "available":
        raise RDSClientError(
            "InvalidDBInstanceState",
            f"DB instance {database.db_instance_identifier} is not in available state"
            f" (it is {database.status})",
        )
    return _original(RDSResponse, "promote_read_replica")(self)


def _create_global_cluster(self: Any, *args: Any, **kwargs: Any) -> Any:
    global_cluster = _original(RDSBackend, "create_global_cluster")(self, *args, **kwargs)
    if len(global_cluster.members) == 1:
        global_cluster.members[0].is_writer = True
    return global_cluster


def _remove_from_global_cluster(
    self: Any, global_cluster_identifier: str, db_cluster_identifier: str
) -> Any:
    home = rds_backends[self.account_id][GLOBAL_CLUSTERS_REGION]
    global_cluster = next(
        (
            g
            for key, g in home.global_clusters.items()
            if key.lower() == global_cluster_identifier.lower()
        ),
        None,
    )
    if global_cluster is None:
        raise RDSClientError(
            "GlobalClusterNotFoundFault", f"Global cluster {global_cluster_identifier} not found"
        )
    wanted = db_cluster_identifier.lower()
    for cluster in list(global_cluster.members):
        if wanted in (cluster.db_cluster_arn.lower(), cluster.db_cluster_identifier.lower()):
            global_cluster.members.remove(cluster)
            cluster.global_cluster_identifier = None
            cluster.is_writer = False
            return global_cluster
    raise RDSClientError(
        "InvalidParameterValue",
        f"{db_cluster_identifier} is not a member of global cluster {global_cluster_identifier}",
    )


# -- rds_global_failover_and_switchover ------------------------------------------------------
def _target_cluster(account: str, identifier: str) -> Any:
    """The cluster a TargetDbClusterIdentifier names (an ARN, as AWS asks for, says the
    region; a bare id is looked up in every region)."""
    parts = identifier.split(":")
    regions = [parts[3]] if identifier.startswith("arn:") and len(parts) > 3 else None
    for region in regions or list(rds_backends[account].keys()):
        try:
            return rds_backends[account][region].describe_db_clusters(
                db_cluster_identifier=identifier
            )[0]
        except RDSClientError:
            continue
    raise RDSClientError("DBClusterNotFoundFault", f"DBCluster {identifier} not found.")


def _global_move(response: Any, *, switchover: bool) -> Any:
    from moto.core.responses import ActionResult

    from orchestrator.sandbox.aurora_global import (
        EMULATOR,
        GlobalClusterStateError,
        find_global_cluster,
    )

    params = response.params
    identifier = str(params["GlobalClusterIdentifier"])
    account = response.current_account
    try:
        global_cluster = find_global_cluster(identifier, account)
    except KeyError:
        raise RDSClientError(
            "GlobalClusterNotFoundFault", f"Global cluster {identifier} not found"
        ) from None
    target = _target_cluster(account, str(params["TargetDbClusterIdentifier"]))
    allow_loss = params.get("AllowDataLoss") in (True, "true")
    if not switchover and allow_loss and params.get("Switchover") in (True, "true"):
        # The API reference: AllowDataLoss "can't be specified together with" Switchover.
        raise RDSClientError(
            "InvalidParameterCombination", "AllowDataLoss and Switchover cannot both be set"
        )
    try:
        if switchover or not allow_loss:  # without AllowDataLoss it is a switchover
            EMULATOR.switchover(global_cluster, target)
        else:
            EMULATOR.failover(global_cluster, target)
    except GlobalClusterStateError as exc:
        raise RDSClientError("InvalidGlobalClusterStateFault", str(exc)) from None
    return ActionResult({"GlobalCluster": global_cluster})


def _failover_global_cluster(self: Any) -> Any:
    return _global_move(self, switchover=False)


def _switchover_global_cluster(self: Any) -> Any:
    return _global_move(self, switchover=True)


def _describe_global_clusters(self: Any) -> Any:
    from orchestrator.sandbox.aurora_global import EMULATOR

    clusters = _original(RDSBackend, "describe_global_clusters")(self)
    for global_cluster in clusters:
        EMULATOR.advance(global_cluster)
    return clusters


# -- route53_refuses_conflicting_records ---------------------------------------------------
def _r53_name(name: str) -> str:
    value = name.strip().lower().replace("\\052", "*")
    return value if value.endswith(".") else value + "."


def _change_resource_record_sets(self: Any, zoneid: str, change_list: list[dict[str, Any]]) -> Any:
    """Refuse a batch the way Route 53 does (InvalidChangeBatch, AWS's own wording) when a
    CREATE or UPSERT would leave a CNAME at the apex, a CNAME beside another type, or
    simple and routed (SetIdentifier) sets of one name and type side by side. The batch is
    judged as a whole, against the zone as it would be after it (AWS validates it so)."""
    zone = self.get_hosted_zone(zoneid)
    apex = _r53_name(zone.name)
    # (name, type, set id) -> present after the batch
    state = {(_r53_name(r.name), r.type, r.set_identifier): True for r in zone.rrsets}
    for change in change_list:
        rrset = change["ResourceRecordSet"]
        key = (_r53_name(rrset["Name"]), rrset["Type"], rrset.get("SetIdentifier"))
        state[key] = change["Action"] in ("CREATE", "UPSERT")
    for change in change_list:
        if change["Action"] not in ("CREATE", "UPSERT"):
            continue
        rrset = change["ResourceRecordSet"]
        name, kind, ident = _r53_name(rrset["Name"]), rrset["Type"], rrset.get("SetIdentifier")
        if kind == "CNAME" and name == apex:
            raise Route53ClientError(
                "InvalidChangeBatch",
                f"[RRSet of type CNAME with DNS name {name} is not permitted at apex in zone"
                f" {apex}]",
            )
        present = [k for k, alive in state.items() if alive and k[0] == name]
        if kind == "CNAME" and any(t != "CNAME" for _, t, _ in present):
            raise Route53ClientError(
                "InvalidChangeBatch",
                f"[RRSet of type CNAME with DNS name {name} is not permitted as it conflicts"
                f" with other records with the same DNS name in zone {apex}]",
            )
        if kind != "CNAME" and any(t == "CNAME" for _, t, _ in present):
            raise Route53ClientError(
                "InvalidChangeBatch",
                f"[RRSet of type {kind} with DNS name {name} is not permitted because a"
                f" conflicting RRSet of type CNAME with the same DNS name already exists in"
                f" zone {apex}]",
            )
        same = [i for _, t, i in present if t == kind]
        if ident is None and any(i is not None for i in same):
            raise Route53ClientError(
                "InvalidChangeBatch",
                f"[RRSet with DNS name {name}, type {kind} cannot be created as other RRSets"
                " exist with the same name and type.]",
            )
        if ident is not None and None in same:
            raise Route53ClientError(
                "InvalidChangeBatch",
                f"[RRSet with DNS name {name}, type {kind}, SetIdentifier {ident} cannot be"
                " created as a non-weighted set exists with the same name and type.]",
            )
    return _original(Route53Backend, "change_resource_record_sets")(self, zoneid, change_list)


# -- ecs_scalable_target_bounds_desired_count ---------------------------------------------
ECS_DIMENSION = "ecs:service:DesiredCount"


def _clamp_service(ecs_backend: Any, cluster: str, service_name: str) -> None:
    """Move an ECS service's desired (and, moto starting tasks at once, running) count into
    its scalable target's [MinCapacity, MaxCapacity], as Application Auto Scaling does."""
    from moto.applicationautoscaling.models import applicationautoscaling_backends

    backend = applicationautoscaling_backends[ecs_backend.account_id][ecs_backend.region_name]
    target = backend.targets.get(ECS_DIMENSION, {}).get(f"service/{cluster}/{service_name}")
    service = ecs_backend.services.get(f"{cluster}:{service_name}")
    if target is None or service is None:
        return
    low, high = target.min_capacity, target.max_capacity
    count = service.desired_count
    if low is not None and count < low:
        count = low
    if high is not None and count > high:
        count = high
    if count != service.desired_count:
        service.desired_count = count
        service.running_count = count
        service.pending_count = 0


def _ecs_update_service(self: Any, service_properties: dict[str, Any]) -> Any:
    service = _original(EC2ContainerServiceBackend, "update_service")(self, service_properties)
    _clamp_service(self, service.cluster_name, service.name)
    return service


def _register_scalable_target(
    self: Any, namespace: str, r_id: str, *args: Any, **kwargs: Any
) -> Any:
    target = _original(ApplicationAutoscalingBackend, "register_scalable_target")(
        self, namespace, r_id, *args, **kwargs
    )
    if namespace == "ecs" and target.scalable_dimension == ECS_DIMENSION:
        _, cluster, service = r_id.split("/")
        _clamp_service(self.ecs_backend, cluster, service)
    return target


# -- autoscaling_suspended_launch_starts_nothing ----------------------------------------------
def _replace_group_instances(self: Any, count_needed: int, propagated_tags: Any) -> Any:
    """No instance starts while the group's Launch process is suspended (AWS: "Launch — Adds
    instances to the Auto Scaling group when the group scales out"; suspended, it does not)."""
    if "Launch" in {p["ProcessName"] for p in self.suspended_processes}:
        return None
    return _original(FakeAutoScalingGroup, "replace_autoscaling_group_instances")(
        self, count_needed, propagated_tags
    )


# -- autoscaling_instance_refreshes -------------------------------------------------------------
_REFRESHES = "_failoverd_instance_refreshes"


def _group(response: Any) -> Any:
    name = response._get_param("AutoScalingGroupName")
    group = response.autoscaling_backend.autoscaling_groups.get(name)
    if group is None:
        raise ServiceException("ValidationError", f"AutoScalingGroup name not found - {name}")
    return group


def _start_instance_refresh(self: Any) -> Any:
    from moto.core.responses import ActionResult
    from moto.moto_api._internal import mock_random

    group = _group(self)
    refreshes = getattr(group, _REFRESHES, None) or []
    if any(r["Status"] in ("Pending", "InProgress", "Cancelling") for r in refreshes):
        raise RDSClientError(
            "InstanceRefreshInProgress",
            f"An instance refresh is already in progress for {group.name}",
        )
    refresh = {
        "InstanceRefreshId": str(mock_random.uuid4()),
        "AutoScalingGroupName": group.name,
        "Status": "InProgress",
        "StatusReason": "Waiting for instances to warm up before continuing.",
        "PercentageComplete": 0,
        "InstancesToUpdate": len(group.instance_states),
    }
    setattr(group, _REFRESHES, [refresh, *refreshes])
    return ActionResult({"InstanceRefreshId": refresh["InstanceRefreshId"]})


def _describe_instance_refreshes(self: Any) -> Any:
    from moto.core.responses import ActionResult

    group = _group(self)
    return ActionResult({"InstanceRefreshes": list(getattr(group, _REFRESHES, None) or [])})


# -- sns_subject_rules ----------------------------------------------------------------------
def _sns_subject(self: Any) -> Any:
    """ "Subjects must be UTF-8 text with no line breaks or control characters, and less than
    100 characters long" (Publish, API reference); moto checks the length only."""
    subject = self._get_param("Subject")
    if subject is not None and any(ord(c) < 32 or ord(c) == 127 for c in subject):
        raise ServiceException("InvalidParameter", "Invalid parameter: Subject")
    return _original(SNSResponse, "publish")(self)


# -- sns_publish_needs_a_usable_kms_key ---------------------------------------------------------
def _sns_kms(self: Any, message: str, arn: str | None, *args: Any, **kwargs: Any) -> Any:
    """Publishing to a topic encrypted with a KMS key that does not exist, is disabled or is
    pending deletion fails (KMSNotFound, KMSDisabled, KMSInvalidState); moto publishes
    without looking at the key."""
    from moto.kms.models import kms_backends

    topic = self.topics.get(arn) if arn else None
    key = getattr(topic, "kms_master_key_id", "") if topic is not None else ""
    if key:
        kms = kms_backends[self.account_id][self.region_name]
        try:
            found = kms.keys[kms.any_id_to_key_id(key)]
        except (KeyError, TypeError, AttributeError):
            raise ServiceException("KMSNotFound", f"Invalid keyId {key}") from None
        if found.key_state == "Disabled":
            raise ServiceException("KMSDisabled", f"{found.arn} is disabled.")
        if found.key_state != "Enabled":
            raise ServiceException("KMSInvalidState", f"{found.arn} is {found.key_state}.")
    return _original(SNSBackend, "publish")(self, message, arn, *args, **kwargs)


# -- cloudwatch_datapoints_arrive_late --------------------------------------------------------
class CloudWatchDelay:
    """How late datapoints become readable (seconds after their timestamp). AWS-published
    metrics reach GetMetricData a minute or more after the period they describe; moto
    serves a datapoint the moment it is put. 0 keeps moto's behaviour (the test fixture's
    default); the sandbox sets it, and its policies declare the same ``delay``."""

    seconds: float = 0.0


CLOUDWATCH_DELAY = CloudWatchDelay()


def _cloudwatch_all_metrics(self: Any) -> Any:
    metrics = _original(CloudWatchBackend, "get_all_metrics")(self)
    delay = CLOUDWATCH_DELAY.seconds
    if delay <= 0:
        return metrics
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    horizon = now - timedelta(seconds=delay)
    naive = horizon.replace(tzinfo=None)
    return [m for m in metrics if m.timestamp <= (naive if m.timestamp.tzinfo is None else horizon)]


Patch = tuple[type, str, Callable[..., Any]]

FIXUPS: dict[str, tuple[Patch, ...]] = {
    "rds_promote_clears_source": ((RDSBackend, "promote_read_replica", _promote_read_replica),),
    "rds_promote_needs_available_replica": (
        (RDSResponse, "promote_read_replica", _promote_needs_available),
    ),
    "rds_global_source_is_writer": ((RDSBackend, "create_global_cluster", _create_global_cluster),),
    "rds_remove_from_global_any_region": (
        (RDSBackend, "remove_from_global_cluster", _remove_from_global_cluster),
    ),
    "route53_refuses_conflicting_records": (
        (Route53Backend, "change_resource_record_sets", _change_resource_record_sets),
    ),
    "ecs_scalable_target_bounds_desired_count": (
        (EC2ContainerServiceBackend, "update_service", _ecs_update_service),
        (ApplicationAutoscalingBackend, "register_scalable_target", _register_scalable_target),
    ),
    "autoscaling_suspended_launch_starts_nothing": (
        (FakeAutoScalingGroup, "replace_autoscaling_group_instances", _replace_group_instances),
    ),
    "autoscaling_instance_refreshes": (
        (AutoScalingResponse, "start_instance_refresh", _start_instance_refresh),
        (AutoScalingResponse, "describe_instance_refreshes", _describe_instance_refreshes),
    ),
    "sns_subject_rules": ((SNSResponse, "publish", _sns_subject),),
    "sns_publish_needs_a_usable_kms_key": ((SNSBackend, "publish", _sns_kms),),
    "cloudwatch_datapoints_arrive_late": (
        (CloudWatchBackend, "get_all_metrics", _cloudwatch_all_metrics),
    ),
    "rds_global_failover_and_switchover": (
        (RDSResponse, "failover_global_cluster", _failover_global_cluster),
        (RDSResponse, "switchover_global_cluster", _switchover_global_cluster),
        (RDSBackend, "describe_global_clusters", _describe_global_clusters),
    ),
}

# Route 53 for routing-control health checks and DNS in the sandbox (issue 14): the patches
# and their reasons are in moto_route53_fixups.
FIXUPS.update({name: (patch,) for name, patch in ROUTE53_PATCHES.items()})

_ORIGINALS: dict[tuple[type, str], Any] = {
    (cls, attribute): cls.__dict__.get(attribute, _MISSING)
    for patches in FIXUPS.values()
    for cls, attribute, _ in patches
}


def _set(cls: type, attribute: str, value: Any) -> None:
    if value is _MISSING:
        if attribute in cls.__dict__:
            delattr(cls, attribute)
    else:
        setattr(cls, attribute, value)


def apply_moto_fixups() -> None:
    """Patch moto's classes (affects the in-process server at once). Idempotent."""
    for patches in FIXUPS.values():
        for cls, attribute, replacement in patches:
            setattr(cls, attribute, replacement)


@contextmanager
def without_moto_fixups(*names: str) -> Iterator[None]:
    """moto's own behaviour inside the block, for the named fix-ups (default: all); the
    fix-ups as they were afterwards."""
    chosen = names or tuple(FIXUPS)
    unknown = [n for n in chosen if n not in FIXUPS]
    if unknown:
        raise KeyError(f"no such moto fix-up: {', '.join(unknown)}")
    patches = [(cls, attribute) for n in chosen for cls, attribute, _ in FIXUPS[n]]
    before = {key: key[0].__dict__.get(key[1], _MISSING) for key in patches}
    for cls, attribute in patches:
        _set(cls, attribute, _ORIGINALS[(cls, attribute)])
    try:
        yield
    finally:
        for (cls, attribute), value in before.items():
            _set(cls, attribute, value)

"""Named fix-ups of moto's RDS backend where it differs from what real AWS shows.

moto runs in this process (``ThreadedMotoServer``), so its backend classes can be patched:
the fix-ups make the emulator report what AWS reports after a change, so production
``verify`` code can stay strict. Each fix-up is named, listed in :data:`FIXUPS`, and shown
by a test (tests/integration/actions/test_moto_fixups.py) to close a real gap.

* ``rds_promote_clears_source`` — after PromoteReadReplica, AWS shows the instance with no
  ``ReadReplicaSourceDBInstanceIdentifier`` and the source no longer lists it; moto keeps
  both links.
* ``rds_global_source_is_writer`` — a global cluster created from an existing cluster
  (``SourceDBClusterIdentifier``) has that cluster as its writer (``IsWriter: true``); moto
  reports ``false``.
* ``rds_remove_from_global_any_region`` — RemoveFromGlobalCluster works in any region (the
  detached cluster's own, typically) and leaves the cluster standalone; moto keeps global
  clusters in us-east-1's backend only, so the call from another region silently does
  nothing, and the detached cluster still names its global cluster.

:func:`apply_moto_fixups` is idempotent; :func:`without_moto_fixups` restores moto's own
behaviour for a block (to show the gap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.rds.exceptions import RDSClientError
from moto.rds.models import RDSBackend, rds_backends

GLOBAL_CLUSTERS_REGION = "us-east-1"  # where moto's RDS responses keep global clusters

_ORIGINALS: dict[str, Callable[..., Any]] = {
    "promote_read_replica": RDSBackend.promote_read_replica,
    "create_global_cluster": RDSBackend.create_global_cluster,
    "remove_from_global_cluster": RDSBackend.remove_from_global_cluster,
}


def _promote_read_replica(self: Any, db_kwargs: dict[str, Any]) -> Any:
    database = self.databases[db_kwargs["db_instance_identifier"]]
    source_id = database.source_db_instance_identifier if database.is_replica else None
    result = _ORIGINALS["promote_read_replica"](self, db_kwargs)
    if source_id:
        source = self.find_db_from_id(source_id)
        for link in (result.db_instance_arn, result.db_instance_identifier):
            if link in source.replicas:
                source.replicas.remove(link)
        result.source_db_instance_identifier = None
    return result


def _create_global_cluster(self: Any, *args: Any, **kwargs: Any) -> Any:
    global_cluster = _ORIGINALS["create_global_cluster"](self, *args, **kwargs)
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


FIXUPS: dict[str, tuple[str, Callable[..., Any]]] = {
    "rds_promote_clears_source": ("promote_read_replica", _promote_read_replica),
    "rds_global_source_is_writer": ("create_global_cluster", _create_global_cluster),
    "rds_remove_from_global_any_region": (
        "remove_from_global_cluster",
        _remove_from_global_cluster,
    ),
}


def apply_moto_fixups() -> None:
    """Patch moto's backend classes (affects the in-process server at once). Idempotent."""
    for attribute, replacement in FIXUPS.values():
        setattr(RDSBackend, attribute, replacement)


@contextmanager
def without_moto_fixups() -> Iterator[None]:
    """moto's own behaviour inside the block; the fix-ups as they were afterwards."""
    before = {attribute: getattr(RDSBackend, attribute) for attribute, _ in FIXUPS.values()}
    for attribute, _ in FIXUPS.values():
        setattr(RDSBackend, attribute, _ORIGINALS[attribute])
    try:
        yield
    finally:
        for attribute, method in before.items():
            setattr(RDSBackend, attribute, method)

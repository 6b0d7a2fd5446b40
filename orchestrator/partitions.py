"""AWS partitions: which one a region belongs to, and what follows from it.

A partition (``aws``, ``aws-cn``, ``aws-us-gov``...) is a separate copy of AWS: its own ARN
prefix (``arn:aws-cn:...``), DNS suffix (``amazonaws.com.cn``) and its own home for global
services. Route 53's control plane, for example, is ``us-east-1`` in ``aws``,
``cn-northwest-1`` in ``aws-cn`` and ``us-gov-west-1`` in ``aws-us-gov``. Nothing here is
hard-coded per partition: it is read from botocore's own endpoint data
(``botocore/data/endpoints.json``: each partition's ``regionRegex``, ``regions`` and
``dnsSuffix``, and the ``credentialScope`` of Route 53's partition-wide endpoint), so a
botocore upgrade that adds a partition or region brings it along.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from botocore.loaders import create_loader  # type: ignore[import-untyped]

COMMERCIAL = "aws"


@dataclass(frozen=True, slots=True)
class Partition:
    """One AWS partition, as far as failoverd needs it."""

    name: str  # aws, aws-cn, aws-us-gov, ...
    dns_suffix: str  # amazonaws.com, amazonaws.com.cn, ...
    route53_region: str  # the region that signs (and serves) Route 53's control plane
    health_region: str | None  # the AWS Health API's home region, when the partition has one
    # The Health API's partition-wide name (a CNAME to the active regional endpoint) and
    # the regions serving it, active first: botocore lists them as the ``health`` service's
    # endpoints (``aws``: global.health.amazonaws.com, us-east-1 then us-east-2).
    health_hostname: str | None = None
    health_regions: tuple[str, ...] = ()

    def arn(self, service: str, region: str, account: str, resource: str) -> str:
        """``arn:<partition>:<service>:<region>:<account>:<resource>`` (region and account
        may be empty, as for Route 53 and IAM)."""
        return f"arn:{self.name}:{service}:{region}:{account}:{resource}"

    def endpoint(self, service: str, region: str) -> str:
        """The regional endpoint URL ``https://<service>.<region>.<dns suffix>`` (STS's
        regional endpoints, for instance)."""
        return f"https://{service}.{region}.{self.dns_suffix}"


@cache
def _endpoint_data() -> dict[str, Any]:
    data: dict[str, Any] = create_loader().load_data("endpoints")
    return data


def _global_endpoint(part: dict[str, Any], service: str) -> dict[str, Any]:
    svc = part.get("services", {}).get(service, {})
    endpoints: dict[str, Any] = svc.get("endpoints", {})
    key = svc.get("partitionEndpoint") or f"{part['partition']}-global"
    found: dict[str, Any] = endpoints.get(key, {})
    return found


def _global_region(part: dict[str, Any], service: str) -> str | None:
    """The credential-scope region of a service's partition-wide endpoint, if it has one."""
    region = _global_endpoint(part, service).get("credentialScope", {}).get("region")
    return str(region) if region else None


def _health(part: dict[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """The Health API's partition-wide host name and its regions, home region first, then
    the other regions botocore lists a regional Health endpoint for (FIPS aliases aside)."""
    home = _global_region(part, "health")
    if home is None:
        return None, ()
    hostname = _global_endpoint(part, "health").get("hostname")
    listed = part.get("services", {}).get("health", {}).get("endpoints", {})
    pattern = part.get("regionRegex") or "$^"
    others = [r for r in listed if r != home and re.match(pattern, r)]
    return (str(hostname) if hostname else None), (home, *others)


@cache
def partitions() -> tuple[Partition, ...]:
    """Every partition botocore knows, in botocore's order (``aws`` first)."""
    out = []
    for part in _endpoint_data()["partitions"]:
        regions = sorted(part.get("regions", {}))
        route53 = _global_region(part, "route53") or (regions[0] if regions else "")
        health_hostname, health_regions = _health(part)
        out.append(
            Partition(
                name=part["partition"],
                dns_suffix=part["dnsSuffix"],
                route53_region=route53,
                health_region=_global_region(part, "health"),
                health_hostname=health_hostname,
                health_regions=health_regions,
            )
        )
    return tuple(out)


@cache
def partition_of(region: str) -> Partition:
    """The partition ``region`` belongs to: listed among a partition's regions, or matching
    its ``regionRegex`` (a region newer than this botocore). ValueError otherwise."""
    data = _endpoint_data()["partitions"]
    by_name = {p.name: p for p in partitions()}
    for part in data:
        if region in part.get("regions", {}):
            return by_name[part["partition"]]
    for part in data:
        pattern = part.get("regionRegex")
        if pattern and re.match(pattern, region):
            return by_name[part["partition"]]
    raise ValueError(f"{region!r} is in no AWS partition botocore knows")


def partition_named(name: str) -> Partition:
    """The partition called ``name`` (``aws-cn``); ValueError for an unknown one."""
    for partition in partitions():
        if partition.name == name:
            return partition
    known = ", ".join(p.name for p in partitions())
    raise ValueError(f"unknown AWS partition {name!r}; expected one of: {known}")


def common_partition(regions: list[str] | tuple[str, ...]) -> Partition:
    """The one partition all ``regions`` share; ValueError naming them when they differ
    (a failover cannot cross partitions: credentials, ARNs and Route 53 all differ)."""
    found = {r: partition_of(r) for r in regions}
    names = {p.name for p in found.values()}
    if len(names) != 1:
        listed = ", ".join(f"{r} ({p.name})" for r, p in found.items())
        raise ValueError(f"regions in different AWS partitions: {listed}")
    return next(iter(found.values()))

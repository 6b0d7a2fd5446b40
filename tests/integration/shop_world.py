"""A small AWS world in moto for tests of readiness and drills: a Route 53 zone (with the
service's CNAME on the primary), and an Auto Scaling group per region."""

from __future__ import annotations

from tests.fixtures.moto_server import MotoServer

PRIMARY, STANDBY = "us-east-1", "us-west-2"
RECORD = "api.shop.example.com"

# A policy template: format with zone=<the seeded zone id>.
POLICY = """
service: shop
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
detection: {{quorum: 1}}
signals:
  - {{name: api, type: http, target: "https://{{region}}.shop.example.com/"}}
runbooks:
  failover:
    - name: scale
      action: autoscaling.set_capacity
      params: {{auto_scaling_group: "shop-{{target_region}}", desired: 4}}
    - name: dns
      action: route53.set_record
      after: [scale]
      params:
        hosted_zone_id: {zone}
        name: api.shop.example.com
        value: "{{target_region}}.shop.example.com"
"""


def seed(moto: MotoServer, *, max_size: int = 10, record: bool = False) -> str:
    """Seed the world; returns the zone id. ``record``: also point the CNAME at the primary."""
    r53 = moto.boto3_client("route53")
    zone = r53.create_hosted_zone(Name="shop.example.com", CallerReference="shop-world")
    zone_id: str = zone["HostedZone"]["Id"].split("/")[-1]
    if record:
        r53.change_resource_record_sets(
            HostedZoneId=zone_id,
            ChangeBatch={
                "Changes": [
                    {
                        "Action": "UPSERT",
                        "ResourceRecordSet": {
                            "Name": RECORD,
                            "Type": "CNAME",
                            "TTL": 60,
                            "ResourceRecords": [{"Value": f"{PRIMARY}.shop.example.com"}],
                        },
                    }
                ]
            },
        )
    for region in (PRIMARY, STANDBY):
        ec2 = moto.boto3_client("ec2", region)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        asg = moto.boto3_client("autoscaling", region)
        asg.create_launch_configuration(
            LaunchConfigurationName=f"lc-{region}", ImageId=image, InstanceType="t3.micro"
        )
        asg.create_auto_scaling_group(
            AutoScalingGroupName=f"shop-{region}",
            LaunchConfigurationName=f"lc-{region}",
            MinSize=0,
            MaxSize=max_size,
            DesiredCapacity=0,
            AvailabilityZones=[f"{region}a"],
        )
    return zone_id

"""GET /v1/readiness: the daemon's periodic readiness results, exposed like other state."""

from __future__ import annotations

from orchestrator.readiness import LagReadiness, Move, ReadinessReport, StepReadiness
from tests.unit.api.fakes import FakeControl
from tests.unit.api.test_app import api, assert_schema, openapi_doc


async def test_readiness_report_lists_steps_lag_and_control_plane_dependencies() -> None:
    move = Move("failover", "us-east-1", "us-west-2")
    report = ReadinessReport(
        steps=[
            StepReadiness(
                "webapp",
                move,
                "flip-dns",
                "route53.set_record",
                True,
                control_plane_region="us-east-1",
                static_stability=("step 'flip-dns' needs Route 53's API",),
            ),
            StepReadiness(
                "webapp",
                move,
                "scale-up",
                "autoscaling.set_capacity",
                False,
                findings=("ASG max below desired: max 2 < desired 6",),
            ),
        ],
        lag=[LagReadiness("webapp", "us-west-2", True, "lag 5s within the RPO 1m")],
    )
    control = FakeControl(readiness_reports={"webapp": report})
    async with api(control) as client:
        response = await client.get("/v1/readiness")
        assert response.status == 200
        body = await response.json()
        assert_schema(await openapi_doc(client), "/v1/readiness", "get", 200, body)
    webapp = body["services"]["webapp"]
    assert webapp["ready"] is False
    dns, scale = webapp["steps"]
    assert dns["control_plane_in_source"] is True
    assert dns["static_stability"] == ["step 'flip-dns' needs Route 53's API"]
    assert scale["static_stability"] == []
    assert scale["findings"] == ["ASG max below desired: max 2 < desired 6"]
    assert webapp["lag"] == [
        {"region": "us-west-2", "ready": True, "finding": "lag 5s within the RPO 1m"}
    ]


async def test_before_the_first_evaluation_there_is_nothing_to_report() -> None:
    async with api(FakeControl()) as client:
        response = await client.get("/v1/readiness")
        assert response.status == 200
        assert await response.json() == {"services": {}}

"""What every action shares: a step's parameters rendered for a run (its `region` included),
the region it acts in, its parameters typed, and names filled in for the IAM policy."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.actions.base import ActionFailed, StepContext, typed_params
from orchestrator.actions.render import fill_for_iam, iam_regions, render_params
from orchestrator.policy.actions import EcsSetDesiredCount, SnsPublish, Wait
from orchestrator.policy.models import Step
from orchestrator.signals.aws_clients import AwsClientConfig, AwsClients
from tests.integration.actions.step_support import SOURCE, TARGET, make_ctx

REGIONS = (SOURCE, TARGET)


def ecs_step(**params: Any) -> Step:
    return Step(
        name="fence",
        action="ecs.set_desired_count",
        params={"cluster": "web-{source_region}", "service": "{service}", "desired": 0, **params},
    )


def render(step: Step, **kw: Any) -> Any:
    run = {"service": "web", "source_region": SOURCE, "target_region": TARGET}
    return render_params(step, **run, primary_region=SOURCE, **kw)


def ctx_for(params: Any) -> StepContext:
    return make_ctx(AwsClients(AwsClientConfig(endpoint_url="http://127.0.0.1:9")), params)


@pytest.mark.parametrize(
    ("region", "acts_in"),
    [(None, TARGET), ("{source_region}", SOURCE), ("{target_region}", TARGET), (SOURCE, SOURCE)],
)
def test_a_step_acts_in_its_region_or_the_runs_target(region: str | None, acts_in: str) -> None:
    step = ecs_step(**({"region": region} if region else {}))
    params = render(step, regions=REGIONS)
    assert params == EcsSetDesiredCount(
        region=None if region is None else acts_in,
        cluster=f"web-{SOURCE}",
        service="web",
        desired=0,
    )
    assert ctx_for(params).region == acts_in


def test_a_placeholder_rendering_outside_the_policys_regions_is_refused() -> None:
    # The run's regions are not the policy's (say, a policy edited under a running run).
    with pytest.raises(ValidationError, match="region 'us-east-1' is not one of the policy"):
        render(ecs_step(region="{source_region}"), regions=("eu-west-1", TARGET))


def test_without_the_policys_regions_a_rendered_region_must_still_be_a_region() -> None:
    # What a run renders: its policy was checked when it loaded; this is the last guard.
    with pytest.raises(ValidationError, match="'web' is not an AWS region name"):
        render(ecs_step(region="{service}"))
    assert render(ecs_step(region="{source_region}")).region == SOURCE


def test_actions_without_a_region_have_no_region_but_the_target() -> None:
    params = SnsPublish(topic_arn="arn:aws:sns:us-east-1:1:t", message="m")
    assert ctx_for(params).region == TARGET


def test_typed_params_names_the_step_and_both_types() -> None:
    ctx = ctx_for(Wait(duration=1.0))
    assert typed_params(ctx, Wait) is ctx.params
    with pytest.raises(ActionFailed, match="step step: expected EcsSetDesiredCount parameters"):
        typed_params(ctx, EcsSetDesiredCount)
    with pytest.raises(ActionFailed, match=r"^expected Wait parameters, got SnsPublish$"):
        typed_params(SnsPublish(topic_arn="t", message="m"), Wait)


@pytest.mark.parametrize(
    ("region", "regions", "cluster"),
    [
        # No region: every target it may run against, {target_region} filled for each.
        (None, [SOURCE, TARGET], {SOURCE: f"c-{SOURCE}", TARGET: f"c-{TARGET}"}),
        # Its own region, known: only there; the target is not known before a run.
        (SOURCE, [SOURCE], {SOURCE: "c-*"}),
        # A region not known before a run: any region.
        ("{source_region}", ["*"], {"*": "c-*"}),
    ],
)
def test_iam_covers_the_region_the_step_acts_in(
    region: str | None, regions: list[str], cluster: dict[str, str]
) -> None:
    params = EcsSetDesiredCount(region=region, cluster="c-{target_region}", service="s", desired=0)
    assert iam_regions(params, [SOURCE, TARGET]) == regions
    assert {r: fill_for_iam(params.cluster, r, params) for r in regions} == cluster

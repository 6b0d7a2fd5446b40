"""Which failures the executor retries, and how long it waits before doing so."""

from __future__ import annotations

import random

import pytest
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    EndpointConnectionError,
)

from orchestrator.actions.base import ActionFailed, RetryableError
from orchestrator.runbook.retry import Backoff, classify


def client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "secret-looking request data"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error: ClientError = ClientError(response, "ChangeResourceRecordSets")
    return error


@pytest.mark.parametrize(
    ("exc", "retryable", "error"),
    [
        (RetryableError("route53 throttled"), True, "route53 throttled"),
        (ActionFailed("replica of the wrong source"), False, "replica of the wrong source"),
        (client_error("Throttling", 400), True, "Throttling (HTTP 400)"),
        (client_error("InternalFailure", 500), True, "InternalFailure (HTTP 500)"),
        (client_error("AccessDenied", 403), False, "AccessDenied (HTTP 403)"),
        (
            EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
            True,
            "EndpointConnectionError",
        ),
        (TimeoutError(), True, "TimeoutError"),
        (ConnectionResetError("reset by peer"), True, "ConnectionResetError"),
        (KeyError("DBInstances"), False, "unexpected error: KeyError: 'DBInstances'"),
    ],
)
def test_classify(exc: BaseException, retryable: bool, error: str) -> None:
    failure = classify(exc)
    assert (failure.retryable, failure.error) == (retryable, error)
    assert "secret-looking" not in failure.error  # AWS messages may quote request data


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.ceiling(10_000) == 4.0  # no overflow
    rng = random.Random(1)
    delays = [backoff.delay(3, rng) for _ in range(500)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert min(delays) < 0.2 and max(delays) > 1.8  # spread over the whole range


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": 0}, "base must be a positive number"),
        ({"cap": float("inf")}, "cap must be a positive number"),
        ({"base": 5.0, "cap": 1.0}, "must not be below base"),
    ],
)
def test_backoff_rejects_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)

"""What an AWS call raised -> RetryableError or ActionFailed, the one mapping all actions use."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from orchestrator.actions.base import ActionFailed, RetryableError
from orchestrator.actions.errors import aws_errors, classify, transient_as_pending


def client_error(code: str, status: int, message: str = "details") -> ClientError:
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PromoteReadReplica")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("Throttling", 400),
        ("ThrottlingException", 400),
        ("RequestLimitExceeded", 400),
        ("PriorRequestNotComplete", 400),
        ("RequestTimeout", 408),
        ("TooManyRequestsException", 429),
        ("Anything", 429),
        ("InternalFailure", 500),
        ("ServiceUnavailable", 503),
    ],
)
def test_throttling_and_server_errors_are_retryable(code: str, status: int) -> None:
    error = classify(client_error(code, status))
    assert isinstance(error, RetryableError)
    assert str(error) == f"PromoteReadReplica failed: {code}: details (HTTP {status})"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AccessDenied", 403),
        ("DBInstanceNotFound", 404),
        ("InvalidChangeBatch", 400),
        ("ValidationError", 400),
    ],
)
def test_client_errors_that_another_attempt_cannot_fix_fail(code: str, status: int) -> None:
    error = classify(client_error(code, status, "no"))
    assert isinstance(error, ActionFailed) and not error.retryable
    assert str(error) == f"PromoteReadReplica failed: {code}: no (HTTP {status})"


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
        ResponseParserError("Unable to parse response"),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
        ConnectionResetError("reset"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_no_usable_answer_is_retryable(exc: BaseException) -> None:
    error = classify(exc)
    assert isinstance(error, RetryableError)
    assert type(exc).__name__ in str(error)


def test_configuration_errors_and_bugs_fail() -> None:
    assert isinstance(classify(NoCredentialsError()), ActionFailed)
    assert isinstance(classify(ParamValidationError(report="bad")), ActionFailed)
    bug = classify(KeyError("DBInstances"))
    assert isinstance(bug, ActionFailed) and "KeyError" in str(bug)


def test_an_action_error_is_kept_as_is() -> None:
    mine = ActionFailed("refusing to promote a replica of x")
    assert classify(mine) is mine


async def test_aws_errors_converts_and_chains() -> None:
    original = client_error("Throttling", 400)
    with pytest.raises(RetryableError) as raised:
        async with aws_errors():
            raise original
    assert raised.value.__cause__ is original

    mine = ActionFailed("mine")
    with pytest.raises(ActionFailed) as kept:
        async with aws_errors():
            raise mine
    assert kept.value is mine


async def test_aws_errors_never_swallows_cancellation() -> None:
    with pytest.raises(asyncio.CancelledError):
        async with aws_errors():
            raise asyncio.CancelledError


async def test_transient_errors_while_polling_count_as_not_yet() -> None:
    outcomes: list[BaseException | tuple[bool, str]] = [
        client_error("Throttling", 400),
        (True, "done"),
    ]

    async def probe() -> tuple[bool, str]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    wrapped = transient_as_pending(probe)
    done, seen = await wrapped()
    assert not done and "Throttling" in seen
    assert await wrapped() == (True, "done")

    async def denied() -> tuple[bool, str]:
        raise client_error("AccessDenied", 403)

    with pytest.raises(ActionFailed, match="AccessDenied"):
        await transient_as_pending(denied)()

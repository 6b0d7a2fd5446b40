"""API errors: one exception type that handlers raise, rendered as ``{"error", "message"}``."""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.api.schemas import CommandResultBody, ErrorBody


class ApiError(Exception):
    """A request the API answers with a 4xx/5xx and a stable ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        leader: str | None = None,
        leader_api: str | None = None,
        details: list[str] | None = None,
        result: CommandResultBody | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(
            error=code,
            message=message,
            leader=leader,
            leader_api=leader_api,
            details=details or [],
            result=result,
        )
        self.headers = dict(headers or {})

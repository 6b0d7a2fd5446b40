"""Bearer-token authentication of mutating calls.

One shared token (from the daemon's token file). Rules: no token configured means mutating
calls are disabled (403: safer than open); a missing, malformed or wrong token is 401 with a
``WWW-Authenticate`` challenge (RFC 6750). The comparison is constant-time so response timing
does not reveal how much of a guess matched. The token itself is never logged or echoed.
"""

from __future__ import annotations

import hmac

from orchestrator.api.errors import ApiError

_REALM = 'Bearer realm="failoverd"'


class TokenAuth:
    """Checks ``Authorization`` headers against the configured token. Stateless, thread-safe."""

    def __init__(self, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the API token is empty; pass None to disable mutating calls")
        self._token = None if token is None else token.encode()

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a traceback
        return f"TokenAuth(enabled={self.enabled})"

    def check(self, authorization: str | None) -> None:
        """Return when ``authorization`` carries the token; raise :class:`ApiError` otherwise."""
        if self._token is None:
            raise ApiError(403, "forbidden", "mutating calls are disabled: no token configured")
        if not authorization:
            raise ApiError(
                401,
                "unauthorized",
                "this call needs 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": _REALM},
            )
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(
                401,
                "unauthorized",
                "the Authorization header must be 'Bearer <token>'",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_request"'},
            )
        if not hmac.compare_digest(presented.strip().encode(), self._token):
            raise ApiError(
                401,
                "unauthorized",
                "the token is not valid",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )

"""Pagination tokens of the emulators: opaque to clients, bound to the query that made them
and to the emulator's life (a token from another query or an earlier run is refused, as AWS
refuses a token it did not issue for that request)."""

from __future__ import annotations

import base64
import binascii
import json


def page_token(offset: int, digest: str, nonce: str) -> str:
    """The token of the page that starts at ``offset`` of the query hashed to ``digest``."""
    raw = json.dumps({"o": offset, "q": digest, "n": nonce}, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def token_offset(token: str, digest: str, nonce: str) -> int | None:
    """The offset ``token`` stands for, or None when it was not issued for this query and
    this emulator (the caller answers with its service's own error)."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        return None
    if (
        not isinstance(data, dict)
        or data.get("q") != digest
        or data.get("n") != nonce
        or not isinstance(data.get("o"), int)
        or isinstance(data.get("o"), bool)
        or data["o"] < 0
    ):
        return None
    offset: int = data["o"]
    return offset

"""The emulators' page tokens: a token leads back to its page only for the query and the
emulator that issued it; anything else is refused (the caller answers its service's error)."""

from __future__ import annotations

import base64

from orchestrator.sandbox.page_tokens import page_token, token_offset


def test_a_token_leads_back_to_its_page() -> None:
    assert token_offset(page_token(25, "q1", "n1"), "q1", "n1") == 25


def test_a_token_of_another_query_or_emulator_or_forged_is_refused() -> None:
    token = page_token(25, "q1", "n1")
    assert token_offset(token, "q2", "n1") is None  # another query
    assert token_offset(token, "q1", "n2") is None  # an earlier run of the emulator
    for forged in (
        "not base64 !",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"o": -1, "q": "q1", "n": "n1"}').decode(),
        base64.urlsafe_b64encode(b'{"o": true, "q": "q1", "n": "n1"}').decode(),
        base64.urlsafe_b64encode(b'{"o": "3", "q": "q1", "n": "n1"}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ):
        assert token_offset(forged, "q1", "n1") is None, forged

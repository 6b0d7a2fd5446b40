"""Logging: one JSON event per line on stderr, the standard library's loggers (aiohttp's
parser errors, asyncio, warnings) included, and no secret in any line. Run in a fresh
interpreter: configure_logging changes the process's global logging."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from orchestrator.telemetry import REDACTED, redact_processor, redact_text

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok3n-Zq9xW1"

SCRIPT = textwrap.dedent(
    f"""
    import logging, sys, warnings
    from aiohttp.http_exceptions import BadHttpMessage
    from orchestrator.telemetry import configure_logging, get_logger

    configure_logging("info", json=sys.argv[1] == "json")
    token = {TOKEN!r}
    # What aiohttp's server logs for a header with a bare CR: the raw bytes, token included.
    raw = "b'Authorization: Bearer " + token + "\\\\rX'"
    try:
        raise BadHttpMessage("Missing expected LF:\\n  " + raw)
    except BadHttpMessage as exc:
        logging.getLogger("aiohttp.server").exception(
            "Error handling request from %s", "127.0.0.1", exc_info=exc
        )
    log = get_logger("failoverd.test")
    log.info(
        "probe_failing",
        target="https://user:" + token + "@api.example.com/health?token=" + token + "&region=x",
        detail="upstream said: Authorization: Bearer " + token,
        authorization="Bearer " + token,
    )
    try:
        raise RuntimeError("header was 'authorization': 'Bearer " + token + "'")
    except RuntimeError:
        log.exception("step_crashed")
    warnings.warn("cookie=" + token)
    logging.getLogger("asyncio").error("Task exception was never retrieved\\nline two")
    print("done", file=sys.stderr)
    """
)


def run(mode: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "done"
    return lines[:-1]


def test_every_line_is_one_json_event_and_no_line_holds_the_token() -> None:
    lines = run("json")
    events: list[dict[str, Any]] = [json.loads(line) for line in lines]  # each line is JSON
    assert [e["event"] for e in events] == [
        "library_log",
        "probe_failing",
        "step_crashed",
        "library_log",
        "library_log",
    ]
    for line in lines:
        assert TOKEN not in line, line
    parser = events[0]
    assert parser["logger"] == "aiohttp.server" and parser["error"] == "BadHttpMessage"
    assert parser["message"] == "Error handling request from 127.0.0.1"
    assert "exception" not in parser  # the text quoting the header is dropped, not redacted
    probe = events[1]
    assert probe["authorization"] == REDACTED
    assert probe["target"] == "https://***@api.example.com/health?token=***&region=***"
    assert probe["detail"] == f"upstream said: Authorization: Bearer {REDACTED}"
    assert "RuntimeError" in events[2]["exception"] and REDACTED in events[2]["exception"]
    assert events[3]["logger"] == "py.warnings" and events[3]["level"] == "warning"
    assert events[4]["logger"] == "asyncio" and "\n" in events[4]["message"]


def test_console_format_is_redacted_too() -> None:
    text = "\n".join(run("console"))
    assert TOKEN not in text
    assert "probe_failing" in text and REDACTED in text


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("Bearer abc.def", f"Bearer {REDACTED}"),
        ("basic dXNlcjpwYXNz", f"basic {REDACTED}"),
        ("'Authorization': 'xyz'", f"'Authorization': '{REDACTED}'"),
        ("Proxy-Authorization=xyz", f"Proxy-Authorization={REDACTED}"),
        ("see https://a:b@h.example/p", "see https://***@h.example/p"),
        ("GET http://h/x?sig=1&t=2#f done", "GET http://h/x?sig=***&t=***#f done"),
        ("nothing secret here", "nothing secret here"),
        ("fencing token 7", "fencing token 7"),
    ],
)
def test_redact_text(text: str, redacted: str) -> None:
    assert redact_text(text) == redacted


def test_nested_values_and_objects_are_redacted_too() -> None:
    event = {
        "event": "x",
        "headers": {"Authorization": "Bearer abc", "Accept": "*/*"},
        "error": ValueError("upstream said Authorization: Bearer abc"),
        "targets": ("https://h/x?token=abc", 3),
        "count": 3,
    }
    assert redact_processor(None, "info", event) == {
        "event": "x",
        "headers": {"Authorization": REDACTED, "Accept": "*/*"},
        "error": f"upstream said Authorization: Bearer {REDACTED}",
        "targets": ["https://h/x?token=***", 3],
        "count": 3,
    }

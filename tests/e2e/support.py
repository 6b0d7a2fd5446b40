"""Driving `failoverd sandbox` as a subprocess: reading its output and its API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fixtures.binaries import require_binary

ROOT = Path(__file__).parents[2]
COMMAND = [sys.executable, "-m", "orchestrator", "sandbox"]
STOP_DEADLINE = 20.0
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _mosquitto_when_in_ci() -> None:
    # With the broker the sandbox runs the agents and quorum 2: what a user gets.
    require_binary("mosquitto", "/usr/sbin/mosquitto")


def read_until(proc: subprocess.Popen[str], pattern: str, within: float) -> re.Match[str]:
    """Read the sandbox's stdout line by line until ``pattern`` matches (deadline)."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + within
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
            continue
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"no line matching {pattern!r} within {within}s:\n" + "".join(seen[-30:]))


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=3) as response:
        return json.loads(response.read())


START_DEADLINE = 60.0


def start_sandbox() -> tuple[subprocess.Popen[str], str, str]:
    """A live sandbox on a free port: the process, its API base URL and its control URL.
    The caller stops it (SIGINT) and waits for it."""
    proc = subprocess.Popen(
        [*COMMAND, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        api = read_until(
            proc, r"sandbox: api +(http://127\.0\.0\.1:\d+)/v1/status", START_DEADLINE
        )[1]
        control = read_until(proc, r"sandbox: control +(http://127\.0\.0\.1:\d+)", 5)[1]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, api, control


def wait_for(check: Callable[[], T], what: str, within: float, log: Path | None = None) -> T:
    """Poll ``check`` until it returns something truthy (returned) or fail after ``within``
    seconds, naming ``what``, the last connection error and the tail of ``log``."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except OSError as exc:  # not listening yet, or a slow answer
            last = exc
        time.sleep(0.25)
    tail = "" if log is None else "\n" + "\n".join(log.read_text().splitlines()[-20:])
    pytest.fail(f"timed out after {within}s waiting for {what} (last error: {last!r}){tail}")


def stop(
    proc: subprocess.Popen[Any],
    *,
    sig: int = signal.SIGINT,
    name: str = "the sandbox",
    within: float = STOP_DEADLINE,
) -> int:
    """Signal ``proc`` (unless it already exited) and return its exit code; killed and the
    test failed if it does not stop within ``within`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{name} did not stop within {within}s of {signal.Signals(sig).name}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose, but only its parent (the sandbox) can reap it.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()

"""The systemd unit, sysusers and tmpfiles files, checked by systemd's own tools."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.binaries import require_binary

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "failoverd.service"
EXEC_START = "/usr/bin/failoverd"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_verifies_clean(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    # verify checks that ExecStart's binary exists. /usr/bin/failoverd exists only once the
    # package is installed, so verify a copy whose ExecStart is the failoverd this test suite
    # runs with (the venv's); everything else is byte for byte the shipped unit.
    installed = Path(sys.executable).with_name("failoverd")
    assert installed.is_file(), f"{installed} is missing: is the project installed?"
    text = UNIT.read_text(encoding="utf-8")
    assert f"ExecStart={EXEC_START} " in text
    copy = tmp_path / "failoverd.service"
    copy.write_text(text.replace(f"ExecStart={EXEC_START} ", f"ExecStart={installed} "))
    result = run(analyze, "verify", str(copy))
    assert result.returncode == 0, result.stderr
    # verify reports many problems as warnings with exit status 0; none may mention the unit.
    assert "failoverd.service" not in result.stderr, result.stderr


def test_unit_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    result = run(analyze, "security", "--offline=yes", "--no-pager", str(UNIT))
    out = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for failoverd\.service: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= 2.0, out


def test_unit_is_what_operators_expect() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecStart"] == [f"{EXEC_START} run --config /etc/failoverd/failoverd.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["User"] == ["failoverd"]
    assert s["StateDirectory"] == ["failoverd"]
    assert s["MemoryDenyWriteExecute"] == ["yes"]
    # AWS endpoints are anywhere: the unit must not fence IP addresses.
    assert "IPAddressDeny" not in s
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "min": 60, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?", value)
    assert match, value
    return float(match[1]) * units[match[2] or "s"]


def test_a_crash_loop_reaches_the_start_limit() -> None:
    s = unit_settings()
    burst = int(s["StartLimitBurst"][0])
    interval = _seconds(s["StartLimitIntervalSec"][0])
    restart = _seconds(s["RestartSec"][0])
    # A daemon that crashes at once is restarted every RestartSec: `burst` starts must fit in
    # the interval (with a generous 5 s per start), or the limit never trips.
    assert 2 <= burst <= 10
    assert burst * (restart + 5) < interval, (burst, restart, interval)
    # Bad configuration (exit 2) is not restarted at all: it would fail the same way.
    assert s["RestartPreventExitStatus"] == ["2"]
    text = UNIT.read_text(encoding="utf-8")
    unit_section = text.split("[Service]")[0]
    assert "StartLimitIntervalSec=" in unit_section and "StartLimitBurst=" in unit_section


def test_memory_and_tasks_are_bounded() -> None:
    s = unit_settings()
    assert s["MemoryMax"] == ["1G"] and s["MemoryHigh"] == ["768M"]
    assert 64 <= int(s["TasksMax"][0]) <= 512


def test_the_daemons_stack_runs_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes kills a process that maps W+X memory (a JIT, some FFI).
    Linux >= 6.3's PR_SET_MDWE enforces the same rule on one process, so the stack the
    daemon imports is loaded and exercised under it here."""
    script = textwrap.dedent(
        """
        import ctypes, mmap, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            sys.exit(77)
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            sys.exit("W+X memory was allowed: the check proves nothing")
        except OSError:
            pass
        import asyncio, ssl, sqlite3
        import aiobotocore.session, aiohttp, aiomqtt, dns.asyncresolver, yaml
        import orchestrator.cli.main, orchestrator.settings
        from orchestrator.store.sqlite import SqliteStore
        yaml.compose("a: 1", Loader=yaml.CSafeLoader)
        ssl.create_default_context()
        sqlite3.connect(":memory:").execute("select 1")
        async def main():
            async with aiohttp.ClientSession():
                pass
            aiobotocore.session.get_session().create_client("sts", region_name="us-east-1")
        asyncio.run(main())
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_sysusers_and_tmpfiles_create_the_user_and_state_folder(tmp_path: Path) -> None:
    sysusers = require_binary("systemd-sysusers")
    tmpfiles = require_binary("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("creating files owned by another user needs root")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = run(sysusers, f"--root={root}", str(SYSTEMD / "failoverd.sysusers"))
    assert result.returncode == 0, result.stderr
    passwd = (root / "etc" / "passwd").read_text(encoding="utf-8")
    entry = next(line for line in passwd.splitlines() if line.startswith("failoverd:"))
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert (home, shell) == ("/var/lib/failoverd", "/usr/sbin/nologin")
    assert int(uid) < 1000, "a system user"
    result = run(tmpfiles, f"--root={root}", "--create", str(SYSTEMD / "failoverd.tmpfiles"))
    assert result.returncode == 0, result.stderr
    state = (root / "var" / "lib" / "failoverd").stat()
    assert (state.st_uid, state.st_gid) == (int(uid), int(gid))
    assert state.st_mode & 0o777 == 0o700

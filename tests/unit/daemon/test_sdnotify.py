"""The systemd notify protocol, against a fake systemd: a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.daemon.sdnotify import Notifier, watchdog_interval


class FakeSystemd:
    """Receives notifications the way systemd's manager does (one datagram each)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)  # a missing datagram fails the test, never hangs it

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        assert data.endswith("\n")
        return dict(line.split("=", 1) for line in data.splitlines())

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture
def path_systemd() -> Iterator[tuple[FakeSystemd, str]]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sd-") as folder:
        path = os.path.join(folder, "notify")
        fake = FakeSystemd(path)
        try:
            yield fake, path
        finally:
            fake.sock.close()


@pytest.fixture
def abstract_systemd() -> Iterator[tuple[FakeSystemd, str]]:
    name = f"failoverd-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode())
    try:
        yield fake, "@" + name
    finally:
        fake.sock.close()


def test_lifecycle_messages_reach_systemd(path_systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = path_systemd
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("3 services healthy")
    assert fake.receive() == {"READY": "1", "STATUS": "3 services healthy"}
    assert notifier.watchdog()
    assert fake.receive() == {"WATCHDOG": "1"}
    assert notifier.status("leader; checkout: healthy")
    assert fake.receive() == {"STATUS": "leader; checkout: healthy"}
    assert notifier.stopping()
    assert fake.receive() == {"STOPPING": "1"}


def test_reloading_carries_the_monotonic_timestamp(
    abstract_systemd: tuple[FakeSystemd, str],
) -> None:
    fake, name = abstract_systemd
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier(name).reloading("reloading policies")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = fake.receive()
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    assert fields["STATUS"] == "reloading policies"


def test_status_cannot_inject_other_fields(path_systemd: tuple[FakeSystemd, str]) -> None:
    fake, path = path_systemd
    Notifier(path).status("policy error\nREADY=1")
    assert fake.receive() == {"STATUS": "policy error READY=1"}
    assert fake.nothing_pending()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.reloading()
    assert not notifier.stopping()


def test_a_vanished_systemd_is_reported_not_raised() -> None:
    with tempfile.TemporaryDirectory(prefix="sd-") as folder:
        assert Notifier(str(Path(folder) / "gone")).watchdog() is False


def test_a_relative_socket_path_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute path or start with @"):
        Notifier("run/notify")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected

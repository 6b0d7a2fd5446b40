"""The systemd notify protocol (sd_notify(3)), without dependencies.

A notification is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the
variable is unset and every call is a no-op, so the daemon calls these unconditionally.

Sending never blocks and never raises: the socket is non-blocking, and a notification that
cannot be delivered (systemd gone, queue full) is logged and dropped: a lost ``WATCHDOG=1``
is retried by the next tick, and failing the daemon because its supervisor is away would be
worse than the missed message.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from orchestrator.telemetry import get_logger

_log = get_logger("failoverd.sdnotify")

# systemd caps a STATUS= line in practice; a long one is cut rather than refused.
_MAX_STATUS = 1024


class Notifier:
    """Sends notifications to systemd. Thread-safe (one ``sendto`` per call); each method
    is idempotent in effect for systemd and bounded in time (non-blocking send)."""

    def __init__(self, socket_path: str | None) -> None:
        self.socket_path = socket_path or None
        self._address: str | bytes | None = None
        if self.socket_path is not None:
            if self.socket_path.startswith("@"):
                # Abstract namespace: the name starts with a NUL byte instead of the @.
                self._address = b"\0" + self.socket_path[1:].encode()
            elif self.socket_path.startswith("/"):
                self._address = self.socket_path
            else:
                raise ValueError(
                    f"NOTIFY_SOCKET must be an absolute path or start with @, "
                    f"got {self.socket_path!r}"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """The notifier for ``NOTIFY_SOCKET`` in ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (``Type=notify`` units count as started from here)."""
        return self._send({"READY": "1", "STATUS": status})

    def status(self, text: str) -> bool:
        """A one-line summary shown by ``systemctl status``."""
        return self._send({"STATUS": text})

    def watchdog(self) -> bool:
        """The loop is alive; systemd restarts the unit when these stop for ``WatchdogSec``."""
        return self._send({"WATCHDOG": "1"})

    def reloading(self, status: str | None = None) -> bool:
        """A reload started; call :meth:`ready` when it is done. ``MONOTONIC_USEC`` is what
        systemd >= 253 requires to match the reload to this message (older ones ignore it)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send({"RELOADING": "1", "MONOTONIC_USEC": str(usec), "STATUS": status})

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown started."""
        return self._send({"STOPPING": "1", "STATUS": status})

    def _send(self, fields: Mapping[str, str | None]) -> bool:
        """True when the datagram was handed to the socket (or False, logged)."""
        if self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            if value is None:
                continue
            if key == "STATUS":
                # A newline would end the field early and inject whatever follows it.
                value = " ".join(value.split())[:_MAX_STATUS]
            lines.append(f"{key}={value}")
        message = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            _log.warning(
                "sd_notify_failed",
                socket=self.socket_path,
                fields=",".join(k for k, v in fields.items() if v is not None),
                error=exc.strerror or str(exc),
            )
            return False
        return True


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC`` (sd_watchdog_enabled's
    advice), or None when the watchdog is off, not meant for this process (``WATCHDOG_PID``
    names another), or the values are malformed."""
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        _log.warning("sd_watchdog_usec_invalid", value=raw)
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            _log.warning("sd_watchdog_pid_invalid", value=owner)
            return None
    return usec / 2 / 1_000_000

"""A server on a loopback port, on the caller's event loop or on a thread of its own: what the
sandbox's AWS emulators (AWS Health, ARC Region switch) share.

A subclass gives its aiohttp application (:meth:`LoopbackServer.make_app`) and a name for
its log events and errors; this class binds (kernel-chosen port with ``port=0``), serves,
and stops, every step bounded in time. Emulators have no authentication, so the host must
be a loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from types import TracebackType
from typing import Self

from aiohttp import web

from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.loopback")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackServer:
    """``start``/``stop`` serve on the caller's loop; ``start_background``/
    ``stop_background`` (or ``with``) on a daemon thread with a loop of its own. ``stop`` and
    ``stop_background`` are idempotent."""

    what = "the server"  # for errors: "<what> is not running"
    event = "loopback_server"  # log events: <event>_started / <event>_stopped

    def __init__(self, host: str, port: int) -> None:
        if not is_loopback(host):
            # No authentication: it must never be reachable from elsewhere.
            raise ValueError(f"host must be a loopback address, got {host!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    def make_app(self) -> web.Application:
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{self.what} is not running")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """The URL to give an AWS SDK as ``endpoint_url``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Serve on the running loop. Raises OSError when the port is taken."""
        if self._runner is not None:
            raise RuntimeError(f"{self.what} is already running")
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._requested_port))
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(sock.getsockname()[1])
        log.info(f"{self.event}_started", url=self.endpoint_url)

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info(f"{self.event}_stopped", port=self._port)
        self._port = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_background(self, timeout: float = 10.0) -> None:
        """Serve from a daemon thread with a loop of its own; returns once it listens."""
        if self._thread is not None:
            raise RuntimeError(f"{self.what} is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                loop.close()

        thread = threading.Thread(target=main, name=self.event, daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"{self.what} did not start within {timeout}s")
        if failure:
            thread.join(timeout)
            raise failure[0]
        self._thread = thread

    def stop_background(self, timeout: float = 10.0) -> None:
        """Stop the thread started by :meth:`start_background` (idempotent)."""
        thread, loop = self._thread, self._thread_loop
        self._thread = self._thread_loop = None
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{self.what} did not stop within {timeout}s")

    def __enter__(self) -> Self:
        self.start_background()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_background()

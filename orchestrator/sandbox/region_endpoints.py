"""Loopback HTTP servers standing in for each region's service endpoint in the sandbox.

Each region gets one small aiohttp server answering ``GET /healthz`` with 200
``{"status":"ok"}`` while healthy. A fault mode changes what the probes see:

* ``down`` — 503 (the service is reachable but failing, as behind a load balancer);
* ``slow`` — the answer is held for :data:`SLOW_DELAY` seconds, past any sandbox probe
  timeout, so the probe times out;
* ``flap`` — alternates between a 200 and a 503, request by request;
* ``local-down`` — 503 to the sandbox daemon's own probes (its ``local`` vantage point),
  200 to everyone else (the agents): a failure only the daemon's vantage sees;
* ``up`` — healthy again.

The same port also accepts TCP connections, so a ``tcp`` signal can point at it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from orchestrator.telemetry import get_logger

log = get_logger("failoverd.sandbox.endpoints")

Mode = Literal["up", "down", "slow", "flap", "local-down"]
MODES: tuple[Mode, ...] = ("up", "down", "slow", "flap", "local-down")
SLOW_DELAY = 5.0  # seconds; well past the sandbox policy's 500 ms probe timeout
OK_BODY = '{"status":"ok"}'
PROC = "/proc"
# `python -m orchestrator run ...`: the daemon, whose probes are the `local` vantage point.
DAEMON_ARGV = ("-m", "orchestrator", "run")


def local_down_supported() -> bool:
    """Whether this host lets ``local-down`` tell the daemon's probes apart (Linux /proc)."""
    return os.path.exists(f"{PROC}/net/tcp")


def _socket_inode(peer: tuple[str, int], server_port: int) -> str | None:
    """The inode of the client end of the loopback connection ``peer`` -> ``server_port``:
    asked of the kernel by the connection's addresses (sock_diag), or, where netlink is not
    available, found in /proc/net/tcp."""
    try:
        return _inode_by_diag(peer[1], server_port)
    except OSError:
        return _inode_by_table(peer[1], server_port)


# sock_diag (linux/sock_diag.h, linux/inet_diag.h): one request names one socket by its
# addresses and the kernel answers from its hash table. /proc/net/tcp, the other way, walks
# every bucket of the table for every read (about 1 ms on an idle host) and prints a line per
# socket, TIME_WAIT ones included: at a hundred services probed every 5 s from three vantage
# points that is thousands of lines, read for each of ~60 requests a second, and the
# endpoint fell so far behind that the agents' probes timed out too (the soak's observer
# partition turned into a failover of every small service).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, seq, pid
_LOOPBACK = socket.inet_aton("127.0.0.1") + bytes(12)  # __be32[4], IPv4 in the first word
_INODE_AT = _NLMSG_HEADER.size + 68  # inet_diag_msg: 4 bytes, sockid 48, 4 words, inode


def _inode_by_diag(client_port: int, server_port: int) -> str | None:
    """The inode of the TCP socket 127.0.0.1:client_port -> 127.0.0.1:server_port; None when
    there is no such socket. OSError when sock_diag cannot be asked."""
    request = (
        struct.pack("=BBBxI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
        + struct.pack("!HH16s16s", client_port, server_port, _LOOPBACK, _LOOPBACK)
        + struct.pack("=III", 0, _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE)
    )
    header = _NLMSG_HEADER.pack(
        _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0
    )
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(header + request, (0, 0))
        answer = nl.recv(8192)
    if len(answer) < _NLMSG_HEADER.size:
        raise OSError("sock_diag: short answer")
    kind = _NLMSG_HEADER.unpack_from(answer)[1]
    if kind == _NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", answer, _NLMSG_HEADER.size)
        if -error == errno.ENOENT:
            return None  # no such connection (any more)
        raise OSError(-error, f"sock_diag: {os.strerror(-error)}")
    if kind != _SOCK_DIAG_BY_FAMILY or len(answer) < _INODE_AT + 4:
        raise OSError(f"sock_diag: unexpected answer of type {kind}")
    (inode,) = struct.unpack_from("=I", answer, _INODE_AT)
    return str(inode) if inode else None


def _inode_by_table(client_port: int, server_port: int) -> str | None:
    want_local = f"0100007F:{client_port:04X}"  # 127.0.0.1, little-endian address, port in hex
    want_remote = f"0100007F:{server_port:04X}"
    try:
        with open(f"{PROC}/net/tcp", encoding="ascii") as table:
            text = table.read()
    except OSError:
        return None
    at = text.find(f" {want_local} {want_remote} ")  # one search in C, not a parse per line
    if at < 0:
        return None
    fields = text[at : text.find("\n", at)].split()
    return fields[8] if len(fields) > 8 else None


class _DaemonPids:
    """The pids of this process's children running the daemon, looked up at most once per
    ``ttl`` seconds (listing /proc and reading every process's stat is the slow part)."""

    def __init__(self, ttl: float = 1.0) -> None:
        self._ttl = ttl
        self._at = -ttl
        self._pids: list[str] = []
        self._lock = threading.Lock()

    def get(self) -> list[str]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self._ttl:
                self._pids = _daemon_children()
                self._at = now
            return list(self._pids)


def _daemon_children() -> list[str]:
    me = str(os.getpid())
    try:
        pids = [p for p in os.listdir(PROC) if p.isdigit()]
    except OSError:
        return []
    found = []
    for pid in pids:
        try:
            with open(f"{PROC}/{pid}/stat", encoding="ascii", errors="replace") as f:
                # The command name may hold spaces: the parent pid follows its closing ')'.
                parent = f.read().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue  # the process ended, or is not ours to look at
        if parent == me and _is_daemon(pid):
            found.append(pid)
    return found


_DAEMONS = _DaemonPids()


def _is_daemon(pid: str) -> bool:
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(tuple(argv[i : i + 3]) == DAEMON_ARGV for i in range(len(argv)))


def from_daemon(peer: tuple[str, int], server_port: int) -> bool:
    """Whether the connection from ``peer`` belongs to a child of this process running the
    daemon. Blocking (reads /proc); False when it cannot tell. The sandbox's own children
    only: the agents are children too, and their probes look the same on the wire, so the
    owning process is the only honest way to tell the vantage points apart."""
    if peer[0] != "127.0.0.1":
        return False
    inode = _socket_inode(peer, server_port)
    if inode is None:
        return False
    socket_link = f"socket:[{inode}]"
    for pid in _DAEMONS.get():
        try:
            for fd in os.listdir(f"{PROC}/{pid}/fd"):
                if os.readlink(f"{PROC}/{pid}/fd/{fd}") == socket_link:
                    return True
        except OSError:
            continue  # the process ended (a restarted daemon is found within a second)
    return False


@dataclass
class RegionEndpoint:
    """One region's endpoint: its fault mode and the requests it has answered."""

    region: str
    mode: Mode = "up"
    port: int = 0
    hits: int = 0
    _flap_next_ok: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(SLOW_DELAY)
            return web.Response(text=OK_BODY, content_type="application/json")
        if mode == "flap":
            self._flap_next_ok = not self._flap_next_ok
            if self._flap_next_ok:
                return web.Response(text=OK_BODY, content_type="application/json")
            return web.Response(status=503, text='{"status":"flapping"}')
        if mode == "down":
            return web.Response(status=503, text='{"status":"down"}')
        if mode == "local-down":
            peer = request.transport.get_extra_info("peername") if request.transport else None
            if peer is not None and await asyncio.to_thread(from_daemon, peer, self.port):
                return web.Response(status=503, text='{"status":"down for local"}')
        return web.Response(text=OK_BODY, content_type="application/json")


class RegionEndpoints:
    """The servers for a set of regions on 127.0.0.1 (kernel-chosen ports).

    ``start`` and ``stop`` run on the caller's loop; ``stop`` is idempotent. ``set_mode``
    takes effect for the next request.
    """

    def __init__(self, regions: list[str]) -> None:
        if not regions:
            raise ValueError("at least one region is needed")
        self.endpoints = {region: RegionEndpoint(region) for region in regions}
        self._runners: list[web.AppRunner] = []

    async def start(self) -> None:
        for endpoint in self.endpoints.values():
            app = web.Application()
            app.router.add_get("/healthz", endpoint.handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            self._runners.append(runner)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            endpoint.port = int(runner.addresses[0][1])
            log.info("sandbox_endpoint_started", region=endpoint.region, port=endpoint.port)

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    def get(self, region: str) -> RegionEndpoint:
        try:
            return self.endpoints[region]
        except KeyError:
            known = ", ".join(sorted(self.endpoints))
            raise ValueError(f"unknown region {region!r}; the sandbox has {known}") from None

    def set_mode(self, region: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        endpoint = self.get(region)
        endpoint.mode = mode
        log.info("sandbox_endpoint_mode", region=region, mode=mode)

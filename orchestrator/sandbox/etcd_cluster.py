"""A real etcd cluster on loopback: ``/usr/bin/etcd`` members on free 127.0.0.1 ports.

For ``failoverd sandbox --instances N``, ``bench/takeover.py`` and the test fixtures
(tests/fixtures/etcd.py builds its pytest fixtures, PKI and auth helpers on this class): each
member is a process of its own (data under ``workdir/<name>``), so a caller can kill
(SIGKILL), stop (SIGTERM), freeze (SIGSTOP) or restart one and watch what quorum does. Fast
elections (100 ms heartbeat, 1 s election timeout by default) keep leader changes short on a
loaded 2-core machine without being flaky; the timings, TLS files and extra etcd flags are
parameters.

Synchronous on purpose (processes and ``urllib``): usable from a sync pytest fixture of any
scope, a script, or async code through ``asyncio.to_thread``. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ETCD = "/usr/bin/etcd"
START_DEADLINE = 30.0  # seconds for the cluster to elect a leader (cold start, 2 cores)
STOP_DEADLINE = 5.0  # after SIGTERM, before SIGKILL
HEALTH_TIMEOUT = 1.0  # per /health request


class EtcdClusterError(Exception):
    """The cluster (or a member) did not come up in time; the message says which and why."""


def etcd_binary() -> str | None:
    """The etcd server binary (Debian's ``etcd-server`` package), or None."""
    return shutil.which("etcd") or (ETCD if os.access(ETCD, os.X_OK) else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EtcdTls:
    """TLS for the members' client URLs (peers stay plain http on loopback).

    ``client_cert``/``client_key`` are what this launcher presents to its own health probes
    (the server pair when None; it carries the client-auth usage too). With
    ``client_cert_auth`` clients must show a certificate signed by ``ca_file``."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_auth: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None

    def args(self) -> list[str]:
        args = ["--cert-file", str(self.cert_file), "--key-file", str(self.key_file)]
        if self.client_cert_auth:
            args += ["--client-cert-auth", "--trusted-ca-file", str(self.ca_file)]
        return args

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(
            str(self.client_cert or self.cert_file), str(self.client_key or self.key_file)
        )
        return context


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    """``members`` etcd processes forming one cluster; ``start()``/``close()`` or ``with``."""

    workdir: Path
    members: int = 3
    binary: str = ETCD
    token: str = field(default_factory=lambda: f"failoverd-{os.getpid()}-{time.monotonic_ns()}")
    heartbeat_ms: int = 100
    election_ms: int = 1000
    tls: EtcdTls | None = None
    extra_args: tuple[str, ...] = ()  # more etcd flags for every member
    _members: dict[str, Member] = field(default_factory=dict)
    _ssl: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
        if self.tls is not None:
            self._ssl = self.tls.client_context()
        for i in range(self.members):
            name = f"etcd{i}"
            self._members[name] = Member(
                name=name,
                client_port=_free_port(),
                peer_port=_free_port(),
                data_dir=self.workdir / name,
                log_file=self.workdir / f"{name}.log",
                scheme="http" if self.tls is None else "https",
            )

    # -- what clients need ---------------------------------------------------------------
    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self._members.values())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._members)

    def member(self, name: str) -> Member:
        try:
            return self._members[name]
        except KeyError:
            raise ValueError(
                f"no member {name!r}; members are {', '.join(self._members)}"
            ) from None

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, within: float = START_DEADLINE) -> None:
        """Start every member and wait until the cluster has a leader (every member
        healthy); on failure stop what was started and raise EtcdClusterError."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for member in self._members.values():
                self.spawn(member.name)
            self.wait_healthy(self.names, within)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL after a grace); idempotent."""
        for member in self._members.values():
            self._terminate(member)

    def spawn(self, name: str) -> None:
        """Start member ``name`` (again: same ports, same data) unless it runs; no wait."""
        m = self.member(name)
        if m.running:
            return
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self._members.values())
        argv = [
            self.binary,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",  # ignored once the data dir exists (restart)
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
            *(self.tls.args() if self.tls is not None else ()),
            *self.extra_args,
        ]  # fmt: skip
        with m.log_file.open("ab") as log:
            m.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a terminal's Ctrl-C goes to the owner, which stops it
            )

    def stop(self, name: str) -> None:
        """SIGTERM one member (a clean stop; SIGKILL after a grace) and reap it."""
        self._terminate(self.member(name))

    def _terminate(self, m: Member) -> None:
        proc, m.proc = m.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a stopped member cannot handle SIGTERM
                proc.terminate()
            try:
                proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- faults --------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        """SIGKILL one member (its data stays: ``restart`` brings it back)."""
        m = self.member(name)
        proc, m.proc = m.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def freeze(self, name: str) -> None:
        """SIGSTOP one member (it stops answering without closing its connections)."""
        m = self.member(name)
        if m.proc is not None:
            m.proc.send_signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        m = self.member(name)
        if m.proc is not None:
            m.proc.send_signal(signal.SIGCONT)

    def restart(self, name: str, within: float = START_DEADLINE) -> None:
        """Start a killed member again on its data dir and wait until it is healthy (which
        needs a quorum of running members)."""
        self.spawn(name)
        self.wait_healthy((name,), within)

    # -- health --------------------------------------------------------------------------
    def healthy(self, name: str) -> bool:
        """Whether ``name`` answers /health with a leader known (a quorum is up)."""
        m = self.member(name)
        if not m.running:
            return False
        try:
            with urllib.request.urlopen(
                f"{m.client_url}/health", timeout=HEALTH_TIMEOUT, context=self._ssl
            ) as r:
                doc = json.loads(r.read())
        except (OSError, ValueError):
            return False
        return isinstance(doc, dict) and doc.get("health") == "true"

    def running(self) -> tuple[str, ...]:
        """The members whose process runs (even if stopped with SIGSTOP)."""
        return tuple(m.name for m in self._members.values() if m.running)

    def quorum_healthy(self) -> bool:
        """A quorum of members runs and every running member is healthy."""
        running = self.running()
        return len(running) > len(self._members) // 2 and all(map(self.healthy, running))

    def raft_leader(self) -> str | None:
        """The member that leads the cluster's raft group now (None: no quorum, or no
        running member answers)."""
        ids: dict[int, str] = {}
        leader = 0
        for m in self._members.values():
            if not m.running:
                continue
            request = urllib.request.Request(
                f"{m.client_url}/v3/maintenance/status",
                data=b"{}",
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(
                    request, timeout=HEALTH_TIMEOUT, context=self._ssl
                ) as r:
                    body = json.loads(r.read())
            except (OSError, ValueError):
                continue
            ids[int(body["header"]["member_id"])] = m.name
            leader = int(body.get("leader", 0)) or leader
        return ids.get(leader)

    def wait_healthy(
        self, names: Sequence[str] | None = None, within: float = START_DEADLINE
    ) -> None:
        """Wait until every member in ``names`` is healthy, or with None until
        :meth:`quorum_healthy`; raise EtcdClusterError (with a log tail) if a member exits
        or the deadline passes."""
        deadline = time.monotonic() + within
        while True:
            if names is None:
                # Started members (a crashed one fails fast below), or all if none is.
                started = [m.name for m in self._members.values() if m.proc is not None]
                waiting = [] if self.quorum_healthy() else started or list(self.names)
            else:
                waiting = [name for name in names if not self.healthy(name)]
            for name in waiting:
                m = self.member(name)
                if m.proc is not None and m.proc.poll() is not None:
                    raise EtcdClusterError(
                        f"etcd member {name} exited ({m.proc.returncode}); log {m.log_file}:\n"
                        + self.tail(name)
                    )
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise EtcdClusterError(
                    f"etcd members {', '.join(waiting)} not healthy after {within:.0f}s; log"
                    f" {self.member(waiting[0]).log_file}:\n" + self.tail(waiting[0])
                )
            time.sleep(0.05)

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.member(name).log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

"""Benchmark: how long after the leader dies another failoverd instance leads.

A real 3-member etcd cluster (``/usr/bin/etcd``) and ``--instances`` daemons (default 3) on
the etcd store, all on 127.0.0.1, with the production lease (``--ttl``, default 10 s). Each
run: find the leader (the one instance whose ``/v1/status`` says ``is_leader``), SIGKILL it,
poll the others' ``/v1/status`` every 20 ms until one says it leads: that interval is the
takeover. The killed instance is then started again (as a follower) for the next run.

What to expect: the dead leader's etcd lease expires TTL after its last renewal (renewals
come every TTL/3, so TTL x 2/3 .. TTL after the kill), etcd revokes it within ~0.5 s, and a
follower's next lease attempt (followers ask every second) takes the key: roughly TTL x 0.7
.. TTL + 1.5 s. The issue's bound for tests is TTL + 2 s.

Prints each run, the TTL, the median and the ratio takeover/TTL; the last line is
``takeover_s=<median>``. Everything it starts is stopped before exit; about 15 s of setup
plus TTL + 5 s per run.

    python bench/takeover.py [--runs 3] [--ttl 10] [--instances 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.sandbox.etcd_cluster import (  # noqa: E402 (needs ROOT on the path)
    EtcdCluster,
    EtcdClusterError,
    etcd_binary,
)

FAILOVERD = [sys.executable, "-m", "orchestrator"]
START_DEADLINE_S = 40.0  # a daemon's API up (cold imports, 2 cores, several at once)
POLL_S = 0.02
STOP_DEADLINE_S = 10.0

# One service with a loopback TCP probe (its port is closed: the region is "down", which
# does not matter here) and a runbook that touches nothing: no AWS call is ever made.
POLICY = """\
service: bench
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
mode: advisory
vantage_points: [local]
detection: {interval: 5s, timeout: 1s, consecutive_failures: 3, quorum: 1, staleness: 1m}
signals:
  - name: tcp
    type: tcp
    targets: {us-east-1: "127.0.0.1:9", us-west-2: "127.0.0.1:9"}
runbooks:
  failover:
    - name: move
      action: wait
      params: {duration: 1s}
"""


class BenchError(Exception):
    """A part of the benchmark could not run; the message says which and why."""


@dataclass
class Daemon:
    name: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    offset: int = 0  # where this start's lines begin in the (appended) log

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FAILOVERD_"))}
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        env.update(AWS_DEFAULT_REGION="us-east-1")
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*FAILOVERD, "run", "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        self.url = ""

    def wait_api(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}); log {self.log}")
            port = _api_port(self.log, self.offset)
            if port is not None:
                self.url = f"http://127.0.0.1:{port}"
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name}'s API did not come up within {START_DEADLINE_S:.0f}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def leads(self) -> bool | None:
        """Whether /v1/status says it leads (None: no answer)."""
        if not self.url or self.proc is None or self.proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(f"{self.url}/v1/status", timeout=1) as response:
                return bool(json.loads(response.read())["is_leader"])
        except (OSError, ValueError, KeyError):
            return None


def _api_port(log: Path, offset: int) -> int | None:
    """The port of this start's ``api_listening`` event (the log is appended across runs)."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        with contextlib.suppress(ValueError, AttributeError):
            record = json.loads(line)
            if record.get("event") == "api_listening":
                for address in record.get("addresses", []):
                    host, port = address.strip("()").replace("'", "").split(",")[:2]
                    if host.strip() == "127.0.0.1":
                        return int(port)
    return None


def write_configs(workdir: Path, endpoints: tuple[str, ...], ttl: float, n: int) -> list[Daemon]:
    policies = workdir / "policies"
    policies.mkdir()
    (policies / "bench.yaml").write_text(POLICY)
    daemons = []
    for i in range(1, n + 1):
        name = f"bench-{i}"
        config = workdir / f"{name}.yaml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "node_id": name,
                    "policies": [str(policies)],
                    "state": {"backend": "etcd", "etcd": {"endpoints": list(endpoints)}},
                    "leader": {"ttl": f"{ttl:g}s"},
                    "aws": {"endpoint_url": "http://127.0.0.1:9"},  # never AWS itself
                    "http": {"bind": "127.0.0.1", "port": 0},
                    "log": {"format": "json", "level": "info"},
                }
            )
        )
        daemons.append(Daemon(name, config, workdir / f"{name}.log"))
    return daemons


def wait_leader(daemons: list[Daemon], within: float, exclude: Daemon | None = None) -> Daemon:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for d in daemons:
            if d is not exclude and d.leads():
                return d
        time.sleep(POLL_S)
    raise BenchError(f"no instance led within {within:.0f}s")


def takeover_once(daemons: list[Daemon], ttl: float) -> tuple[float, str, str]:
    """SIGKILL the leader; seconds until another leads; the old and new leader's names."""
    old = wait_leader(daemons, 3 * ttl + START_DEADLINE_S)
    # Every other instance up and answering, so the poll below sees the new leader at once.
    for d in daemons:
        if d is not old and d.leads() is None:
            raise BenchError(f"{d.name} does not answer before the kill")
    old.kill()
    killed = time.monotonic()
    new = wait_leader(daemons, 3 * ttl + 10, exclude=old)
    took = time.monotonic() - killed
    old.start()  # back as a follower for the next run
    old.wait_api()
    return took, old.name, new.name


def runs(daemons: list[Daemon], count: int, ttl: float) -> list[float]:
    for d in daemons:
        d.start()
    for d in daemons:
        d.wait_api()
    print(f"instances: {', '.join(f'{d.name} {d.url}' for d in daemons)}", flush=True)
    times = []
    for i in range(count):
        took, old, new = takeover_once(daemons, ttl)
        times.append(took)
        print(
            f"run {i + 1}: SIGKILL {old}; {new} leads after takeover_s={took:.2f}"
            f" ({took / ttl:.2f} x TTL)",
            flush=True,
        )
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="leader kills (default 3)")
    parser.add_argument("--ttl", type=float, default=10.0, help="lease TTL, s (default 10)")
    parser.add_argument("--instances", type=int, default=3, help="daemons (default 3)")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 50:
        parser.error(f"--runs must be 1..50, got {args.runs}")
    if not 2 <= args.ttl <= 60:
        parser.error(f"--ttl must be 2..60 seconds, got {args.ttl}")
    if not 2 <= args.instances <= 5:
        parser.error(f"--instances must be 2..5, got {args.instances}")
    binary = etcd_binary()
    if binary is None:
        print("takeover: etcd is not installed (apt-get install etcd-server)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="fo-takeover-"))
    try:
        with EtcdCluster(workdir / "etcd", binary=binary) as etcd:
            print(f"etcd: 3 members {','.join(etcd.endpoints)}", flush=True)
            daemons = write_configs(workdir, etcd.endpoints, args.ttl, args.instances)
            try:
                times = runs(daemons, args.runs, args.ttl)
            finally:  # before etcd stops: no daemon sees its store vanish
                for d in daemons:
                    d.stop()
    except (BenchError, EtcdClusterError) as exc:
        print(f"takeover: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    median = statistics.median(times)
    print(
        f"lease ttl_s={args.ttl:g} (renewed every {args.ttl / 3:.2f}s; the leader stops"
        f" acting {args.ttl * 0.8:.1f}s after its last renewal)"
    )
    print(f"takeover/ttl={median / args.ttl:.2f} (bound for tests: TTL + 2 s)")
    print(f"takeover_s={median:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

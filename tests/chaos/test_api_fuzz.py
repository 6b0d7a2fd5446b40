"""API fuzz against a live daemon: malformed headers, bodies, encodings, methods and paths,
the token smuggled into every place it should not be, slow clients and clients hanging up,
over raw sockets (a client library refuses most of this). Not one answer is a 5xx, no line
of the daemon's log is a traceback or anything but one JSON event, and the token is in no
line at all (docs/reliability.md, "Input fuzz")."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.fixtures.clock import eventually
from tests.fixtures.controller import policy_text
from tests.fixtures.daemon import RUN, DaemonProcess
from tests.fixtures.secrets import write_secret

TOKEN = "fuzz-T0ken-9c1e5d7a2b"
REQUESTS = 500
PARALLEL = 16
SLOW_CLIENTS = 6
PATHS = [
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/status",
    "/v1/services/shop",
    "/v1/services/nope",
    "/v1/runs/x",
    "/v1/runs/x/report",
    "/v1/audit?limit=5",
    "/v1/readiness",
    "/v1/openapi.json",
    "/v1/pause",
    "/v1/services/shop/pause",
    "/v1/services/shop/resume",
    "/v1/services/shop/approve",
    "/v1/services/shop/failover",
]
COMMANDS = [p for p in PATHS if p.endswith(("pause", "resume", "approve", "failover"))]


def _junk_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def _json_body(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b'{"reason": "fuzz"}',
            b'{"reason": "' + TOKEN.encode() + b'"}',  # the token pasted into a reason
            b'{"reason": "a", "reason": "b"}',
            b'{"reason": "x", "force": NaN}',
            b'{"reason": "x", "to": ' + b"9" * 5000 + b"}",
            b"[" * 3000 + b"]" * 3000,
            b'{"reason": "\xff\xfe"}',
            b'{"reason": ' + json.dumps("\u202e\x00\ud83d").encode() + b"}",
            b'{"reason": "x", "to": "mars-1"}',
            b'{"reason": "x", "by": "' + b"b" * 5000 + b'"}',
            b"null",
            b"[]",
            b"",
            b"{",
            _junk_bytes(rng, rng.randrange(1, 300)),
            b'{"reason": "' + b"x" * 70_000 + b'"}',
        ]
    )


def _auth(rng: random.Random) -> bytes:
    token = TOKEN.encode()
    return rng.choice(
        [
            b"Bearer " + token,
            b"Bearer " + token + b"\r",
            b"Bearer " + token[:8] + b"\n" + token[8:],
            b"Bearer " + token + b"\x00",
            b"Bearer " + token + b"\xe9",
            b"Bearer \xff\xfe" + token,
            b"Basic " + token,
            b"bearer  " + token + b"  ",
            b"Token " + token,
            token,
            b"Bearer " + b"x" * 9000,
            b"Bearer wrong-token",
            b"",
        ]
    )


def clean_request(rng: random.Random) -> bytes:
    """A request well formed as HTTP, wrong (or right) only where the API must judge it: the
    token, the body, its declared type, the route."""
    token = TOKEN.encode()
    path = rng.choice(PATHS).encode()
    method = b"POST" if path.decode() in COMMANDS or rng.random() < 0.2 else b"GET"
    auth = rng.choice(
        [b"Bearer " + token] * 4
        + [b"Bearer wrong-token", b"Basic " + token, b"Token " + token, token, b"Bearer "]
    )
    body = _json_body(rng) if method == b"POST" else b""
    content_type = rng.choice(
        [b"application/json"] * 6 + [b"text/plain", b"application/x-www-form-urlencoded"]
    )
    headers = [b"Host: 127.0.0.1", b"Content-Type: " + content_type, b"Connection: close"]
    if rng.random() < 0.9:
        headers.append(b"Authorization: " + auth)
    headers.append(b"Content-Length: %d" % len(body))
    return method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def request(rng: random.Random) -> bytes:
    """One raw request, malformed in one or more ways."""
    method = rng.choice([b"GET", b"GET", b"POST", b"POST", b"POST", b"POST", b"PUT", b"HEAD"])
    if rng.random() < 0.05:
        method = rng.choice([b"DELETE", b"OPTIONS", b"BREW", b"G\x00T", b"\xff"])
    path = rng.choice(PATHS).encode()
    if rng.random() < 0.15:
        path = rng.choice(
            [
                b"/v1/services/" + b"%00%ff%2e%2e/" * 20,
                b"/v1/runs/" + b"r" * 9000,
                b"/../../etc/passwd",
                b"/v1/status?token=" + TOKEN.encode(),
                "/v1/services/é/pause".encode(),
                b"*",
                b"http://evil.example/v1/status",
            ]
        )
    version = rng.choice([b"HTTP/1.1"] * 16 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"HTXP/1"])
    headers: list[bytes] = []
    host = rng.choice(
        [b"127.0.0.1"] * 6 + [b"localhost", b"127.0.0.1:1", b"evil.example", b"", None]
    )
    if host is not None:
        headers.append(b"Host: " + host)
    if rng.random() < 0.8:
        headers.append(b"Authorization: " + _auth(rng))
    if rng.random() < 0.2:
        headers.append(
            rng.choice([b"X-Api-Key: ", b"Cookie: session=", b"Proxy-Authorization: Bearer "])
            + TOKEN.encode()
        )
    body = _json_body(rng) if method == b"POST" or rng.random() < 0.1 else b""
    content_type = rng.choice(
        [b"application/json"] * 5
        + [
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"application/json; charset=latin-1",
            b"\xff",
        ]
    )
    headers.append(b"Content-Type: " + content_type)
    framing = rng.randrange(20)
    if framing == 0:  # chunked, sometimes broken
        chunks = body[: len(body) // 2], body[len(body) // 2 :]
        wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
        if rng.random() < 0.5:
            wire = rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nabc", b"-1\r\n\r\n", wire[:-3]])
        headers.append(b"Transfer-Encoding: chunked")
        body = wire
    elif framing == 1:  # a length that lies
        headers.append(b"Content-Length: %d" % max(0, len(body) + rng.choice([-5, 7, 10**6])))
    elif framing == 2:
        headers.append(
            rng.choice([b"Content-Length: -1", b"Content-Length: 1e3", b"Content-Length: 2, 3"])
        )
    elif framing == 3:
        headers += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
    elif framing == 4:
        headers += [b"Content-Length: %d" % len(body), b"Content-Encoding: gzip"]
    else:
        headers.append(b"Content-Length: %d" % len(body))
    if rng.random() < 0.1:  # hostile header lines
        headers.append(
            rng.choice(
                [
                    b"X-Long: " + b"a" * 9000,
                    b"X-Nul: a\x00b",
                    b"X-Bare-Cr: a\rb",
                    b"X-Latin: caf\xe9",
                    b"Bad Header: x",
                    b": no-name",
                    b"X-Folded: a\r\n folded",
                    *([b"X-Many: 1"] * 200),
                ]
            )
        )
    rng.shuffle(headers)
    if rng.random() < 0.1:
        headers.append(b"Connection: keep-alive")
    else:
        headers.append(b"Connection: close")
    raw = (
        method + b" " + path + b" " + version + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body
    )
    if rng.random() < 0.05:  # a second request pipelined behind the first
        raw += b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    return raw


async def exchange(port: int, raw: bytes, rng: random.Random) -> list[int]:
    """Send ``raw`` (sometimes hanging up half-way) and return the status of every answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        cut = rng.random()
        if cut < 0.08:  # hang up mid-request, now and then with a reset
            writer.write(raw[: rng.randrange(1, max(2, len(raw)))])
            await writer.drain()
            if rng.random() < 0.5:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return []
        writer.write(raw)
        await writer.drain()
        try:
            async with asyncio.timeout(5):
                answer = await reader.read()
        except TimeoutError:
            answer = b""  # a lying Content-Length: the server waits for the rest; we leave
        return [
            int(line.split()[1]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.")
        ]
    except (ConnectionError, OSError):
        return []
    finally:
        writer.close()


async def slow_client(port: int, rng: random.Random) -> list[int]:
    """A valid command trickled a few bytes at a time, or abandoned half-way."""
    raw = (
        b"POST /v1/services/shop/pause HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 18\r\nConnection: close"
        + b'\r\n\r\n{"reason": "slow"}'
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        stop_at = len(raw) if rng.random() < 0.5 else rng.randrange(len(raw))
        for i in range(0, stop_at, 7):
            writer.write(raw[i : min(i + 7, stop_at)])
            await writer.drain()
            await asyncio.sleep(0.02)  # the client's pace is what is under test
        if stop_at < len(raw):
            return []
        async with asyncio.timeout(10):
            answer = await reader.read()
        return [int(answer.split()[1])] if answer.startswith(b"HTTP/1.") else []
    except (ConnectionError, OSError):
        return []
    finally:
        writer.close()


async def _status_of(api: str, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(api + path) as resp:
        return resp.status


async def test_a_live_daemon_answers_hostile_requests_without_a_5xx_or_a_leak(
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "shop.yaml").write_text(policy_text(interval="1s", timeout="500ms", staleness="1m"))
    token = write_secret(tmp_path / "token", TOKEN + "\r\n")
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        f"node_id: fuzz\npolicies: [{policies}]\nstate: {{path: {tmp_path / 'state.db'}}}\n"
        f"http: {{port: 0, token_file: {token}}}\nlog: {{format: json, level: debug}}\n"
    )
    rng = random.Random(1302)
    async with DaemonProcess.start([*RUN, "--config", str(config)]) as daemon:
        api = await daemon.listening()
        await eventually(lambda: bool(daemon.events("daemon_ready")), "daemon_ready", 30)
        port = int(api.rsplit(":", 1)[1])
        gate = asyncio.Semaphore(PARALLEL)
        statuses: list[int] = []

        async def one(make: Callable[[], bytes], seed: int) -> None:
            async with gate:
                statuses.extend(await exchange(port, make(), random.Random(seed)))

        slow = [
            asyncio.create_task(slow_client(port, random.Random(i))) for i in range(SLOW_CLIENTS)
        ]
        makers = [clean_request, request]
        await asyncio.gather(*(one(lambda r=rng: r.choice(makers)(r), i) for i in range(REQUESTS)))
        for task in slow:
            statuses.extend(await task)
        assert daemon.proc.returncode is None, daemon.tail()
        assert await _status_of(api, "/healthz") == 200
        assert await _status_of(api, "/readyz") == 200
        async with aiohttp.ClientSession() as http, http.get(api + "/metrics") as resp:
            metrics = await resp.text()
    assert daemon.returncode == 0, daemon.tail()
    assert len(statuses) > REQUESTS // 2, "most requests got an answer"
    assert {s for s in statuses if s >= 500} == set(), sorted(set(statuses))
    assert {202, 400, 401, 404, 413, 415, 421} <= set(statuses), sorted(set(statuses))
    five_hundreds = [
        line
        for line in metrics.splitlines()
        if line.startswith("failoverd_api_requests_total{") and 'status="5' in line
    ]
    assert five_hundreds == []
    assert not daemon.events("api_unhandled_error")
    lines = [line for line in daemon.lines if line]
    assert not [line for line in lines if "Traceback" in line]
    assert all(line.startswith("{") and json.loads(line) for line in lines), "one event per line"
    assert not [line for line in lines if TOKEN in line or TOKEN[:8] + "\\n" in line]

"""Operator commands of the ``failoverd`` CLI: ``status``, ``audit``, ``report``,
``failover``, ``switchover``, ``failback``, ``approve``, ``pause``, ``resume``, ``abort`` —
clients of a running daemon's HTTP API.

The API address comes from ``--api`` or ``FAILOVERD_API`` (default http://127.0.0.1:8080);
the bearer token for commands from ``--token-file`` or ``FAILOVERD_TOKEN_FILE`` (the token
alone, or one ``label:token`` line). Output is a human table, or the API's JSON with
``--json``. A command sent to a follower is refused with 409 naming the leader and its API
address; the CLI sends it once more, to that address, and says so on stderr.

Exit codes: 0 done; 1 refused (by the engine, not the leader, wrong or missing token) or not
ready; 2 usage or connection error (bad flags, unknown service or region, unreadable token
file, the API unreachable or failing).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from orchestrator.api.auth import TokenFileError, parse_tokens
from orchestrator.api.client import (
    DEFAULT_API,
    DEFAULT_TIMEOUT,
    ApiClient,
    ApiRefused,
    ApiUnreachable,
    validate_base_url,
)

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

API_ENV = "FAILOVERD_API"
TOKEN_FILE_ENV = "FAILOVERD_TOKEN_FILE"

MUTATING = ("failover", "switchover", "failback", "approve", "pause", "resume", "abort")
OPERATOR_COMMANDS = ("status", "audit", "report", *MUTATING)
AUDIT_MAX_LIMIT = 1000
POLICY_VERSION_SHORT = 8

_EPILOG = (
    "Exit codes: 0 done; 1 refused or not ready; 2 usage or connection error."
    f" Environment: {API_ENV} (API address), {TOKEN_FILE_ENV} (token file)."
)


_DESCRIPTIONS = {
    "abort": "Abort the service's running run: its steps in flight are cancelled (an"
    " arc.region_switch step cancels its Region switch execution), steps not started are"
    " skipped, and the run ends as failed with 'aborted by WHO: REASON'. What a step had"
    " done may have taken effect. The service then stays failed in its active region, with"
    " nothing automatic, until an operator acts: 'resume' hands it back to the engine"
    " (which acts on what it sees then), or a failover/switchover/failback. Refused (exit"
    " 1) when no run is running.",
}


class UsageError(Exception):
    """Bad flags or configuration: exit 2 with the message."""


def _reason(text: str) -> str:
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("the reason must not be empty")
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= AUDIT_MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 1 to {AUDIT_MAX_LIMIT}, got {text}")
    return value


def _common(p: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    p.add_argument(
        "--api",
        default=None,
        help=f"the daemon's API address (default: ${API_ENV} or {DEFAULT_API})",
    )
    if json_output:
        p.add_argument("--json", action="store_true", help="print the API's JSON (for scripts)")
    p.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the API (default {DEFAULT_TIMEOUT:g})",
    )


def _mutating(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument(
        "--token-file",
        default=None,
        help=f"file holding the API bearer token (default: ${TOKEN_FILE_ENV})",
    )
    p.add_argument("--reason", required=True, type=_reason, help="why (journaled; required)")
    p.add_argument(
        "--by",
        default=None,
        help="your name, journaled beside your token's label (default: your user name)",
    )


def add_operator_parsers(subparsers: Any) -> None:
    """Add the operator commands to the ``failoverd`` sub-command parsers."""
    s = subparsers.add_parser(
        "status",
        help="show every service, or one service in detail, from a running daemon",
        description="Without SERVICE: one line per service (active region, phase, reasons)."
        " With SERVICE: each region's verdict with its vantage points, the RTO, replication"
        " lag and the current run. Exit 1 when the daemon is not ready.",
        epilog=_EPILOG,
        allow_abbrev=False,
    )
    s.add_argument("service", nargs="?", help="a service name")
    _common(s)
    s.set_defaults(operator="status")

    times = (
        "TIME is an RFC 3339 time (2026-11-26T16:00:00Z; no offset means UTC), epoch seconds,"
        " a duration ago (30m, 2h, 1d) or 'now'; the daemon reads it against its own clock."
    )
    a = subparsers.add_parser(
        "audit",
        help="show the audit log: decision changes, operator commands, runs and steps",
        description="The journal, oldest first: each decision change of the leader (with its"
        " reasons and the evidence), each operator command (who, what, why), each run and"
        " step attempt, each with the policy version in force. Shows the newest --limit"
        " entries of the window. " + times,
        epilog=_EPILOG,
        allow_abbrev=False,
    )
    a.add_argument("--service", default=None, help="one service only")
    a.add_argument("--since", default=None, metavar="TIME", help="entries at or after TIME")
    a.add_argument("--until", default=None, metavar="TIME", help="entries at or before TIME")
    a.add_argument(
        "--limit",
        type=_limit,
        default=None,
        help=f"the newest N entries (1 to {AUDIT_MAX_LIMIT}; default: the API's, 100)",
    )
    a.add_argument(
        "-v", "--verbose", action="store_true", help="also print each entry's detail (JSON)"
    )
    _common(a)
    a.set_defaults(operator="audit")

    r = subparsers.add_parser(
        "report",
        help="print a run's post-incident report (Markdown)",
        description="The post-incident report of a run, as Markdown: what started it and why"
        " (the evidence at decision time), a timeline from detection, each step's attempts"
        " and duration, and the RTO and RPO achieved against the policy's.",
        epilog=_EPILOG,
        allow_abbrev=False,
    )
    r.add_argument("run_id", metavar="RUN_ID", help="a run id (see `failoverd audit`)")
    r.add_argument("-o", "--output", default=None, help="write the report to this file")
    _common(r, json_output=False)
    r.set_defaults(operator="report", json=False)

    helps = {
        "failover": "move a service to a standby region now",
        "switchover": "planned move of a service to another region (both healthy)",
        "failback": "move a service back to its primary region",
        "approve": "approve a run waiting at an approval gate",
        "pause": "pause automation for one service, or for all (the global brake)",
        "resume": "resume automation for a service (acknowledges a failed run)",
        "abort": "abort the service's running run: cancel its steps in flight, fail it",
    }
    for name in MUTATING:
        # No abbreviations: `failback --to X` must not be read as `--token-file X`.
        p = subparsers.add_parser(
            name,
            help=helps[name],
            description=_DESCRIPTIONS.get(name, helps[name]),
            epilog=_EPILOG,
            allow_abbrev=False,
        )
        if name == "pause":
            p.add_argument("service", nargs="?", help="a service name (none: every service)")
        else:
            p.add_argument("service", help="a service name")
        if name in ("failover", "switchover"):
            p.add_argument("--to", default=None, help="target region (default: engine's choice)")
        if name == "failover":
            p.add_argument(
                "--force", action="store_true", help="allow a target region that is not healthy"
            )
        _mutating(p)
        p.set_defaults(operator=name)


def run_operator(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the operator command parsed into ``args``; returns the exit code."""
    out = out if out is not None else sys.stdout
    try:
        base = args.api or os.environ.get(API_ENV) or DEFAULT_API
        token = _read_token(args) if args.operator in MUTATING else None
        client = ApiClient(base, token=token, timeout=args.timeout)
    except (UsageError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        return asyncio.run(_dispatch(client, args, out))
    except ApiUnreachable as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ApiRefused as exc:
        if args.json:
            _print_json(exc.body, out)
        return _fail(_refusal(exc), _exit_for(exc))


def _read_token(args: argparse.Namespace) -> str | None:
    path = args.token_file or os.environ.get(TOKEN_FILE_ENV)
    if not path:
        return None  # the API answers 401/403, with a hint below
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the token file {path}: {exc}") from None
    if not text.strip():
        raise UsageError(f"the token file {path} is empty")
    try:
        tokens = parse_tokens(text, path)
    except TokenFileError as exc:
        raise UsageError(f"the token file {exc}") from None
    if len(tokens) != 1:
        raise UsageError(
            f"the token file {path} holds {len(tokens)} tokens ({', '.join(sorted(tokens))});"
            " give the CLI a file with your own token only"
        )
    return next(iter(tokens.values()))


def _exit_for(exc: ApiRefused) -> int:
    if exc.status in (401, 403, 409, 503):
        return EXIT_REFUSED
    return EXIT_USAGE


def _refusal(exc: ApiRefused) -> str:
    if exc.code == "not_leader":
        where = f" at {exc.body['leader_api']}" if exc.body.get("leader_api") else ""
        leader = exc.body.get("leader") or "unknown"
        return f"refused: {exc.message} (leader: {leader}{where})"
    if exc.status == 401:
        return f"refused: {exc.message}; pass --token-file or set {TOKEN_FILE_ENV}"
    if exc.status in (403, 409):
        return f"refused: {exc.message}"
    details = exc.body.get("details") or []
    extra = "".join(f"\n  {d}" for d in details if d not in exc.message)
    return f"{exc.message}{extra}"


def _fail(message: str, code: int) -> int:
    print(f"failoverd: {message}", file=sys.stderr)
    return code


def _print_json(body: Any, out: TextIO) -> None:
    out.write(json.dumps(body, indent=2, sort_keys=True) + "\n")


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return None  # no user name (a container without passwd entry): the token's label


async def _dispatch(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    async with client as api:
        if args.operator == "status":
            return await _status(api, args, out)
        if args.operator == "audit":
            return await _audit(api, args, out)
        if args.operator == "report":
            return await _report(api, args, out)
        try:
            body = await _send(api, args)
        except ApiRefused as exc:
            leader_api = _leader_api(api, exc)
            if leader_api is None:
                raise
            leader = exc.body.get("leader") or "the leader"
            print(
                f"failoverd: {api.base_url} does not lead; sending the command to {leader}"
                f" at {leader_api}",
                file=sys.stderr,
            )
            body = await _send(api.at(leader_api), args)  # once: a second 409 is an answer
    if args.json:
        _print_json(body, out)
    else:
        run = f" (run {body['run_id']})" if body.get("run_id") else ""
        out.write(f"accepted: {body.get('message', '')}{run}\n")
    return EXIT_OK


async def _send(api: ApiClient, args: argparse.Namespace) -> dict[str, Any]:
    by = args.by or _user()
    if args.operator == "pause" and args.service is None:
        return await api.pause_all(reason=args.reason, by=by)
    return await api.command(
        args.service,
        args.operator,
        reason=args.reason,
        to=getattr(args, "to", None),
        force=getattr(args, "force", False),
        by=by,
    )


def _leader_api(api: ApiClient, exc: ApiRefused) -> str | None:
    """Where a follower's 409 says the leader's API is, if it is another usable address."""
    if exc.code != "not_leader":
        return None
    raw = exc.body.get("leader_api")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        url = validate_base_url(raw)
    except ValueError:
        return None
    return None if url == api.base_url else url


async def _status(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    ready, readiness = await api.readiness()
    if args.service:
        body = await api.service(args.service)
        if args.json:
            _print_json({**body, "readiness": readiness}, out)
        else:
            out.write(render_service(body, dots=_dots(out)))
    else:
        body = await api.status()
        if args.json:
            _print_json({**body, "readiness": readiness}, out)
        else:
            out.write(render_status(body, _dots(out)))
    if not ready:
        problems = "; ".join(readiness.get("problems") or ["no reason given"])
        return _fail(f"the daemon is not ready: {problems}", EXIT_REFUSED)
    return EXIT_OK


async def _audit(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body = await api.audit(
        service=args.service, since=args.since, until=args.until, limit=args.limit
    )
    if args.json:
        _print_json(body, out)
    else:
        out.write(render_audit(body, verbose=args.verbose))
    return EXIT_OK


async def _report(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    text = await api.report(args.run_id)
    if args.output is None:
        out.write(text)
        return EXIT_OK
    try:
        await asyncio.to_thread(Path(args.output).write_text, text, encoding="utf-8")
    except OSError as exc:
        return _fail(f"cannot write the report to {args.output}: {exc}", EXIT_USAGE)
    out.write(f"wrote the report of run {args.run_id} to {args.output}\n")
    return EXIT_OK


# --- rendering ----------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _codes(reasons: Sequence[dict[str, Any]]) -> str:
    return ", ".join(r["code"] for r in reasons) or "-"


def render_status(body: dict[str, Any], glyphs: dict[str, str] | None = None) -> str:
    sep = (glyphs or UNICODE_GLYPHS)["sep"]
    leader = body.get("leader") or "unknown"
    policies = str(body["policy_version"])
    acting = body.get("leader_policy_version")
    if acting and acting != policies:
        policies += f" (DIFFERS from the leader's {acting})"
    head = f"node {body['node_id']} {sep} leader {leader} {sep} policies {policies}\n"
    rows = [
        (
            s["name"],
            s["mode"],
            s["active_region"],
            s["phase"],
            "yes" if s["paused"] else "no",
            f"{s['run_id']} {s['run_status']}" if s.get("run_id") else "-",
            _codes(s["reasons"]),
        )
        for s in body["services"]
    ]
    headers = ("SERVICE", "MODE", "ACTIVE", "PHASE", "PAUSED", "RUN", "REASONS")
    return head + table(headers, rows)


# Vantage marks and separators; ASCII where the output cannot encode the others (a C locale
# terminal), so that printing a status never fails on a glyph.
UNICODE_GLYPHS = {"passing": "●", "failing": "✗", "unknown": "?", "sep": "·", "arrow": "→"}
ASCII_GLYPHS = {"passing": "+", "failing": "x", "unknown": "?", "sep": "|", "arrow": "->"}


def _dots(out: TextIO) -> dict[str, str]:
    encoding = getattr(out, "encoding", None)
    if encoding is None:
        return UNICODE_GLYPHS  # an in-memory text buffer: no encoding step
    try:
        "".join(UNICODE_GLYPHS.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_GLYPHS
    return UNICODE_GLYPHS


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 120:
        return f"{sign}{value:.0f}s"
    if value < 7200:
        return f"{sign}{value / 60:.1f}m"
    return f"{sign}{value / 3600:.1f}h"


def render_service(body: dict[str, Any], dots: dict[str, str] | None = None) -> str:
    dots = dots or UNICODE_GLYPHS
    sep, arrow = dots["sep"], dots["arrow"]
    lines = [
        f"{body['service']} ({body['mode']}) {sep} active {body['active_region']}"
        f" (primary {body['primary']}) {sep} phase {body['phase']}"
        + (f" {sep} PAUSED" if body["paused"] else "")
    ]
    if body.get("state_problem"):
        lines.append(f"  STATE: {body['state_problem']}")
    for r in body["reasons"]:
        lines.append(f"  why: {r['code']}: {r['text']}")
    rto = body["rto"]
    if rto["remaining"] is None:
        lines.append(f"  RTO: {_secs(rto['budget'])} budget, not running (nothing detected)")
    else:
        state = (
            "OVERRUN by " + _secs(-rto["remaining"])
            if rto["remaining"] < 0
            else (_secs(rto["remaining"]) + " left")
        )
        lines.append(
            f"  RTO: {state} of {_secs(rto['budget'])} ({_secs(rto['elapsed'])} since detection)"
        )
    for lag in body["lag"]:
        if lag["seconds"] is None:
            verdict = "unknown"
        else:
            verdict = _secs(lag["seconds"]) + (" ok" if lag["within_rpo"] else " ABOVE RPO")
        lines.append(
            f"  lag: {lag['region']} {verdict} (RPO {_secs(body['rpo'])},"
            f" measured {_secs(lag['age'])} ago)"
        )
    decision = body.get("decision")
    if decision is not None:
        target = f" {arrow} {decision['target']}" if decision.get("target") else ""
        lines.append(f"  decision: {decision['action']}{target}")
    out = "\n".join(lines) + "\n\n"
    rows = []
    for v in body["verdicts"]:
        marks = "  ".join(f"{dots.get(x['view'], '?')} {x['vantage']}" for x in v["vantages"])
        rows.append((v["region"], v["verdict"], f"{len(v['failing'])}/{v['quorum']}", marks))
    out += table(("REGION", "VERDICT", "FAILING/QUORUM", "VANTAGES"), rows)
    legend = "  ".join(f"{dots[k]} {k}" for k in ("passing", "failing", "unknown"))
    out += f"legend: {legend}\n"
    run = body.get("run")
    if run is not None:
        out += (
            f"\nrun {run['run_id']}: {run['kind']} {run['source']} {arrow} {run['target']},"
            f" {run['status']}, RTO {_secs(run['rto_remaining'])} left\n"
        )
        if run.get("error"):
            out += f"  error: {run['error']}\n"
        steps = [
            (
                s["name"],
                s["action"],
                s["status"],
                str(len(s["attempts"])),
                _secs(s["duration"]),
                s["error"] or "",
            )
            for s in run["steps"]
        ]
        out += table(("STEP", "ACTION", "STATUS", "ATTEMPTS", "DURATION", "ERROR"), steps, "  ")
    return out


def _short_time(entry: dict[str, Any]) -> str:
    text = str(entry.get("time", ""))
    return text[:19].replace("T", " ") if len(text) >= 19 else text


def render_audit(body: dict[str, Any], *, verbose: bool = False) -> str:
    """The audit log as a table: time (UTC), service, entry, policy version, what and why."""
    entries = body.get("entries") or []
    if not entries:
        return "no audit entries in this window\n"
    rows = []
    for e in entries:
        what = " ".join(str(e.get("summary", "")).split())  # one line, whatever was journaled
        codes = [r["code"] for r in e.get("reasons") or []]
        if codes:
            what += f" [{', '.join(codes)}]"
        if e.get("outcome"):
            what += " -> " + " ".join(str(e["outcome"]).split())
        rows.append(
            (
                _short_time(e),
                e["service"],
                e["entry"],
                str(e.get("policy_version", ""))[:POLICY_VERSION_SHORT] or "-",
                what,
            )
        )
    text = table(("TIME (UTC)", "SERVICE", "ENTRY", "POLICY", "WHAT AND WHY"), rows)
    if verbose:
        details = []
        for e in entries:
            detail = json.dumps(e.get("detail") or {}, sort_keys=True)
            details.append(f"{_short_time(e)} {e['service']} {e['entry']}: {detail}")
        text += "\n" + "\n".join(details) + "\n"
    shown = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    if len(entries) >= int(body.get("limit") or 0) > 0:
        shown += " (the limit: older entries may exist; raise --limit or narrow --since)"
    return text + shown + "\n"

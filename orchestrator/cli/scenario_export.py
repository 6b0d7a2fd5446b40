"""``failoverd scenario export``: a recorded incident as a scenario file.

Reads the flight recorder's folder of this instance (from the settings: ``--config``, as
``failoverd run`` does; or ``--folder``) and writes a scenario in the documented format whose
expectations are what the daemon decided; ``failoverd test`` replays it, ``failoverd diff``
replays it under another version of the policy. Keep such files below the policy, in its
``tests/`` folder (``policies/webapp/tests/incidents/2026-11-26-use1.yaml``): then ``validate``
skips them, and ``test`` and ``diff`` run them with the policy's own tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.audit import TIME_HINT, parse_time
from orchestrator.engine.scenario_loader import SCENARIO_LIMITS
from orchestrator.incident_export import (
    ExportError,
    read_recording,
    recorded_services,
    to_scenario,
    window_for,
)
from orchestrator.policy.loader import load_policy_file, load_policy_set
from orchestrator.policy.yamlsource import SourceErrors

EXIT_OK = 0
EXIT_UNUSABLE = 2


def add_scenario_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "scenario", help="scenario files from what the daemon recorded"
    )
    sub = p.add_subparsers(dest="scenario_command", required=True, metavar="COMMAND")
    e = sub.add_parser(
        "export",
        help="write a recorded incident as a scenario file",
        description="Write what the flight recorder kept of a service as a scenario file"
        " (SCENARIOS.md) whose expectations are what the daemon decided. The window: --since"
        " and --until; or the incident holding --run; or else the latest incident, from"
        " flight_recorder.lead before it until it ended. Exit 2 when nothing usable is"
        " recorded.",
    )
    e.add_argument("--service", required=True, help="the service")
    e.add_argument("--since", metavar="TIME", help=f"start of the window: {TIME_HINT}")
    e.add_argument(
        "--until", metavar="TIME", help="end of the window (default: the incident's end or now)"
    )
    e.add_argument("--run", metavar="RUN_ID", help="the incident holding this run")
    e.add_argument("-o", "--output", metavar="FILE", help="write here (default: standard output)")
    e.add_argument(
        "--config",
        default=None,
        help="the daemon's settings (default: $FAILOVERD_CONFIG, else"
        " /etc/failoverd/failoverd.yaml)",
    )
    e.add_argument(
        "--folder", help="the recorder's folder of one instance (default: from the settings)"
    )
    e.add_argument(
        "--policy",
        help="the policy file the scenario names (default: the service's, from the settings)",
    )
    return p


def run_scenario_command(args: argparse.Namespace) -> int:
    try:
        return _export(args)
    except ExportError as exc:
        print(f"failoverd scenario export: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE


def _export(args: argparse.Namespace) -> int:
    from orchestrator.settings import load_settings

    path = args.config or os.environ.get("FAILOVERD_CONFIG") or None
    try:
        settings = load_settings(path, os.environ)
    except (SourceErrors, ValueError) as exc:
        errors = exc.errors if isinstance(exc, SourceErrors) else [exc]
        raise ExportError("the settings: " + "; ".join(str(e) for e in errors)) from None
    recorder = settings.flight_recorder
    folder = Path(args.folder) if args.folder else recorder.folder(settings.state, settings.node_id)
    service = args.service
    if service not in recorded_services(folder):
        there = ", ".join(recorded_services(folder)) or "none"
        raise ExportError(f"nothing recorded for {service!r} in {folder} (recorded: {there})")
    now = time.time()
    try:
        since = None if args.since is None else parse_time(args.since, now)
        until = None if args.until is None else parse_time(args.until, now)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    start, end = window_for(
        folder, service, lead=recorder.lead, now=now, run_id=args.run, since=since, until=until
    )
    if end <= start:
        raise ExportError("--until must come after --since")
    policy_file = _policy_file(args.policy, settings.policies, service)
    try:
        policy = load_policy_file(policy_file)
    except SourceErrors as exc:
        raise ExportError("; ".join(str(e) for e in exc.errors)) from None
    if policy.service != service:
        raise ExportError(f"{policy_file} is the policy of {policy.service!r}, not {service!r}")
    recording = read_recording(folder, service, start, end)
    where = Path(args.output).resolve().parent if args.output else Path.cwd()
    reference = os.path.relpath(policy_file.resolve(), where)
    text = yaml.safe_dump(to_scenario(recording, policy, reference), sort_keys=False, width=96)
    size = len(text.encode("utf-8"))
    if size > SCENARIO_LIMITS.max_bytes:
        raise ExportError(
            f"the scenario would be {size} bytes, more than `failoverd test` reads"
            f" ({SCENARIO_LIMITS.max_bytes}); export a shorter window (--since/--until)"
        )
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(
            f"wrote {args.output}: {service} from {recording.since:.0f} to {recording.until:.0f}"
            f" ({len(recording.records)} records)",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _policy_file(given: str | None, paths: list[Path], service: str) -> Path:
    if given:
        return Path(given)
    try:
        policies = load_policy_set(paths)
    except SourceErrors as exc:
        raise ExportError(
            "the settings' policies have errors (name the file with --policy): "
            + "; ".join(str(e) for e in exc.errors[:3])
        ) from None
    file = policies.files.get(service)
    if file is None:
        raise ExportError(
            f"no policy for {service!r} in {', '.join(map(str, paths))}; use --policy"
        )
    return Path(file)

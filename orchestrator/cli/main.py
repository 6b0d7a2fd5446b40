"""The ``failoverd`` command.

Exit codes: 0 success; 1 invalid policies (validate), failed scenarios (test), not ready
(readiness), or a refused operator command; 2 a file that cannot be used (an invalid
scenario file, a missing path), bad command-line usage, or an unreachable API.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import __version__
from orchestrator.policy.durations import DurationError, parse_duration
from orchestrator.policy.models import Policy
from orchestrator.policy.yamlsource import SourceErrors

if TYPE_CHECKING:
    from orchestrator.signals.aws_clients import AwsClients

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNUSABLE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="failoverd",
        description="Multi-region failover orchestrator for AWS.",
        epilog="Exit codes: 0 ok; 1 invalid policies, failed scenarios, not ready, or a command"
        " refused; 2 unusable input (bad file, option, or connection).",
    )
    p.add_argument("--version", action="version", version=f"failoverd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser(
        "validate",
        help="check policy files; print every error with file, line and field",
        description="Check policy files and print every error as FILE:LINE:COL: FIELD: MESSAGE,"
        " then a warning for each failover step that needs the region being left or a global"
        " control plane in us-east-1 (Route 53's API, IAM, global STS, CloudFront,"
        " Organizations): an error under guards.data_plane_only unless the step has"
        " on_failure: continue. Exit 1 when any file has errors.",
    )
    v.add_argument(
        "paths", nargs="*", default=["policies"], help="files or folders (default: policies)"
    )

    s = sub.add_parser(
        "schema",
        help="print the JSON Schema of policy files",
        description="Print the JSON Schema of policy files (generated from the models).",
    )
    s.add_argument("-o", "--output", help="write to this file instead of standard output")
    s.add_argument(
        "--markdown",
        action="store_true",
        help="print the policy reference (Markdown) instead of the JSON Schema",
    )

    t = sub.add_parser(
        "test",
        help="run scenario files (policy tests) on a virtual clock",
        description="Run scenario files (see SCENARIOS.md): one PASS/FAIL line per scenario,"
        " a diff for each failure, and 'N passed, N failed'. Folders are searched for files"
        " with a top-level `scenario:` key. Exit 0 all pass, 1 one fails, 2 a file is invalid.",
    )
    t.add_argument("paths", nargs="+", help="scenario files or folders")
    t.add_argument("-v", "--verbose", action="store_true", help="print each scenario's timeline")

    e = sub.add_parser(
        "explain",
        help="explain what the engine sees and decides at a moment of a scenario",
        description="Run a scenario up to --at and explain, in words, each region's verdict"
        " with its evidence, the phase, the decision and its reasons.",
    )
    e.add_argument("scenario", help="a scenario file")
    e.add_argument("--at", required=True, help="the moment, e.g. 5m or 2m30s")

    r = sub.add_parser(
        "readiness",
        help="run every runbook step's read-only check against AWS and report",
        description="For every move the policies could make (failover to each standby, failback,"
        " switchover), render each step's parameters and run its action's read-only check."
        " Reports what is ready, what is missing, and steps that depend on the control plane of"
        " the region being evacuated. Exit 1 when something is not ready or could not be"
        " checked. AWS credentials come from the standard chain.",
    )
    r.add_argument(
        "--policy",
        action="append",
        dest="policies",
        metavar="PATH",
        help="policy file or folder; repeatable (default: $FAILOVERD_POLICIES, else policies)",
    )
    r.add_argument(
        "--endpoint-url",
        help="send every AWS call here (an emulator; default: $AWS_ENDPOINT_URL, else AWS)",
    )
    r.add_argument(
        "--config",
        metavar="PATH",
        help="the daemon's settings file: its `aws` section (timeouts, attempts, endpoint) is"
        " used, as FAILOVERD_AWS__* variables are (default: $FAILOVERD_CONFIG, else"
        " /etc/failoverd/failoverd.yaml when it exists)",
    )
    r.add_argument("--json", action="store_true", help="machine-readable output")

    i = sub.add_parser(
        "iam-policy",
        help="print the least-privilege IAM policy for the configured signals and actions",
        description="Print an IAM policy document (JSON) covering exactly the API calls the"
        " policies' signals and runbook actions make, with resource ARNs where AWS supports"
        " them. When policies name IAM roles to act as (aws.role_arn), print both halves:"
        ' {"tooling_identity": ..., "roles": {ARN: {"policy": ...}}}.',
    )
    i.add_argument(
        "--policy",
        action="append",
        dest="policies",
        metavar="PATH",
        help="policy file or folder; repeatable (default: $FAILOVERD_POLICIES, else policies)",
    )
    i.add_argument(
        "--principal",
        metavar="ARN",
        help="the tooling identity's ARN (the role or user failoverd runs as): with roles in"
        " the policies, each role's trust policy is printed for it",
    )

    from orchestrator.agent import add_agent_parser
    from orchestrator.cli.operator import add_operator_parsers
    from orchestrator.daemon.main import add_run_parser
    from orchestrator.drills import add_drill_parser
    from orchestrator.sandbox.runner import add_sandbox_parser

    add_run_parser(sub)
    add_sandbox_parser(sub)
    add_agent_parser(sub)
    add_drill_parser(sub)
    add_operator_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "operator", None):
            from orchestrator.cli.operator import run_operator

            return run_operator(args)
        if args.command == "run":
            from orchestrator.daemon.main import run_daemon

            return run_daemon(args)
        if args.command == "validate":
            return cmd_validate(args.paths)
        if args.command == "schema":
            return cmd_schema(args.output, args.markdown)
        if args.command == "test":
            return cmd_test(args.paths, args.verbose)
        if args.command == "explain":
            return cmd_explain(args.scenario, args.at)
        if args.command == "readiness":
            return cmd_readiness(
                args.policies or _env_policies(), args.endpoint_url, args.json, args.config
            )
        if args.command == "iam-policy":
            return cmd_iam_policy(args.policies or _env_policies(), args.principal)
        if args.command == "sandbox":
            from orchestrator.sandbox.runner import run_sandbox

            return run_sandbox(args)
        if args.command == "drill":
            from orchestrator.drills import run_drill

            return run_drill(args)
        if args.command == "agent":
            from orchestrator.agent import run_agent

            return run_agent(args)
    except BrokenPipeError:  # `failoverd test ... | head`
        return EXIT_OK
    return EXIT_UNUSABLE  # pragma: no cover - argparse requires a command


def _env_policies() -> list[str]:
    import os

    from orchestrator.settings import policy_paths_from_env

    return policy_paths_from_env(os.environ)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_validate(paths: list[str]) -> int:
    from orchestrator.policy.loader import load_policy_set

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        _err(f"failoverd: no such file or folder: {', '.join(missing)}")
        return EXIT_UNUSABLE
    try:
        policies = load_policy_set(paths)
    except SourceErrors as exc:
        for error in exc.errors:
            print(error)
        print(f"{len(exc.errors)} error(s)")
        return EXIT_FAILED
    from dataclasses import replace

    from orchestrator.static_stability import located

    # Static stability (DESIGN principle 5): failover steps that need the region being left
    # or a global control plane; errors under guards.data_plane_only, warnings otherwise.
    unstable, warnings = located(policies)
    for warning in warnings:
        print(replace(warning, message=f"warning: {warning.message}"))
    if unstable:
        for error in unstable:
            print(error)
        print(f"{len(unstable)} error(s)")
        return EXIT_FAILED
    names = ", ".join(sorted(policies.policies))
    print(f"{len(policies)} policy file(s) valid ({names}); policy set version {policies.version}")
    if warnings:
        print(f"{len(warnings)} warning(s): failover steps that are not statically stable")
    return EXIT_OK


def cmd_schema(output: str | None, markdown: bool = False) -> int:
    from orchestrator.policy.docs import policy_reference
    from orchestrator.policy.schema import policy_schema_text

    text = policy_reference() if markdown else policy_schema_text()
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_test(paths: list[str], verbose: bool) -> int:
    from orchestrator.engine.expectations import check
    from orchestrator.engine.report import format_failure, timeline_text
    from orchestrator.engine.scenario_loader import load_scenario, scenario_files
    from orchestrator.engine.simulator import Simulation

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        _err(f"failoverd: no such file or folder: {', '.join(missing)}")
        return EXIT_UNUSABLE
    files = scenario_files(paths)
    passed = failed = invalid = 0
    for f in files:
        try:
            loaded = load_scenario(f)
        except SourceErrors as exc:
            invalid += 1
            print(f"INVALID {f}")
            for error in exc.errors:
                print(f"    {error}")
            continue
        result = Simulation(loaded.scenario, loaded.policy, loaded.policy_version).run()
        failures = check(result)
        name = loaded.scenario.scenario
        if failures:
            failed += 1
            print(f"FAIL {name}  ({f})")
            for failure in failures:
                print("\n".join(format_failure(failure)))
        else:
            passed += 1
            print(f"PASS {name}")
        if verbose:
            print("\n".join(f"    | {line}" for line in timeline_text(result)))
    tail = f", {invalid} invalid" if invalid else ""
    print(f"{passed} passed, {failed} failed{tail}")
    if not files:
        _err("failoverd: no scenario files found (files with a top-level `scenario:` key)")
        return EXIT_UNUSABLE
    if invalid:
        return EXIT_UNUSABLE
    return EXIT_FAILED if failed else EXIT_OK


def cmd_explain(path: str, at: str) -> int:
    from orchestrator.engine.report import explain
    from orchestrator.engine.scenario_loader import load_scenario
    from orchestrator.engine.simulator import Simulation

    try:
        moment = parse_duration(at)
    except DurationError as exc:
        _err(f"failoverd: --at: {exc}")
        return EXIT_UNUSABLE
    try:
        loaded = load_scenario(path)
    except SourceErrors as exc:
        for error in exc.errors:
            _err(str(error))
        return EXIT_UNUSABLE
    if moment > loaded.scenario.duration:
        _err(f"failoverd: --at {at} is after the scenario's end")
        return EXIT_UNUSABLE
    result = Simulation(loaded.scenario, loaded.policy, loaded.policy_version).run(until=moment)
    print(explain(result, moment))
    return EXIT_OK


def _load_policies(paths: list[str]) -> list[Policy] | None:
    from orchestrator.policy.loader import load_policy_set

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        _err(f"failoverd: no such file or folder: {', '.join(missing)}")
        return None
    try:
        return list(load_policy_set(paths))
    except SourceErrors as exc:
        for error in exc.errors:
            _err(str(error))
        return None


def cli_aws_clients(config: str | None, endpoint_url: str | None) -> AwsClients | None:
    """The AWS clients a CLI command uses: built from the daemon's settings (``config``, else
    $FAILOVERD_CONFIG, else the default file when it exists) like the daemon's own, with
    ``--endpoint-url`` winning; None (the errors printed) when the settings are unusable."""
    import os

    from orchestrator.signals.aws_clients import AwsClients

    try:
        return AwsClients.from_config_file(
            config or os.environ.get("FAILOVERD_CONFIG"), os.environ, endpoint_url=endpoint_url
        )
    except SourceErrors as exc:
        for error in exc.errors:
            _err(str(error))
    except ValueError as exc:  # an endpoint URL the client factory refuses
        _err(f"failoverd: {exc}")
    return None


def cmd_readiness(
    paths: list[str], endpoint_url: str | None, as_json: bool, config: str | None = None
) -> int:
    import asyncio
    import dataclasses
    import json

    from orchestrator.readiness import format_report, readiness

    policies = _load_policies(paths)
    if policies is None:
        return EXIT_UNUSABLE
    clients = cli_aws_clients(config, endpoint_url)
    if clients is None:
        return EXIT_UNUSABLE
    report = asyncio.run(readiness(policies, clients))
    if as_json:
        print(json.dumps([dataclasses.asdict(s) for s in report.steps], indent=2))
    else:
        print(format_report(report))
    return EXIT_OK if report.ready else EXIT_FAILED


def cmd_iam_policy(paths: list[str], principal: str | None = None) -> int:
    from orchestrator.iam import iam_policy_text

    policies = _load_policies(paths)
    if policies is None:
        return EXIT_UNUSABLE
    sys.stdout.write(iam_policy_text(policies, principal))
    return EXIT_OK

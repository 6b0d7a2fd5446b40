"""``failoverd diff OLD NEW [SCENARIO_PATH...]``: what a policy change does to known incidents.

OLD and NEW are each a policy file, a folder of policies, or a git revision (an existing path
wins over a revision of the same name). A revision's policies are read from the repository's
objects with ``git ls-tree`` and ``git cat-file`` (the folder ``--policies-path``, default
``policies``) into a temporary folder: nothing is checked out, the work tree and the index
are left alone.

Every scenario below either version's policies (the policies' own tests, recorded incidents
exported into ``tests/``), and every SCENARIO_PATH given, runs under the old and the new
policy of its service (a scenario's service is its ``service:`` key, else the service of the
policy it names). For each, the first moment the decisions differ, the runs each version
started, and whether the scenario's expectations still hold; then ``N scenarios, M changed,
K now failing``. Exit 0 when nothing changed, 1 when decisions changed, 2 on unusable input
(an unknown revision, invalid policies, an unreadable scenario).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from orchestrator.engine.diff import (
    Outcome,
    ScenarioDiff,
    Status,
    Summary,
    compare_results,
    summarize,
)
from orchestrator.engine.expectations import Failure, check
from orchestrator.engine.report import format_failure
from orchestrator.engine.scenario_loader import (
    ScenarioDocument,
    bind,
    own_policy,
    read_scenario,
    scenario_files,
)
from orchestrator.engine.simulator import Simulation, SimulationResult
from orchestrator.policy.loader import PolicySet, load_policy_set
from orchestrator.policy.models import Policy
from orchestrator.policy.yamlsource import SourceErrors

EXIT_SAME = 0
EXIT_CHANGED = 1
EXIT_UNUSABLE = 2
GIT_TIMEOUT = 60.0


class DiffInputError(Exception):
    """OLD, NEW or a scenario path that cannot be used; the message says which and why."""


# -- the two versions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One version of the policies: where its files are and how to name them."""

    label: str  # as given on the command line
    kind: str  # "file", "folder" or "git"
    root: Path  # scenarios are looked for below it
    policies: PolicySet
    commit: str | None = None
    real_root: str = ""  # how ``root`` is named to people (``HEAD:policies``)

    def show(self, path: Path | str) -> str:
        text = str(path)
        if self.kind == "git":
            root = str(self.root)
            if text.startswith(root):
                return f"{self.label}:{self.real_root}{text[len(root) :]}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "ref": self.label,
            "kind": self.kind,
            "commit": self.commit,
            "policy_version": self.policies.version,
            "services": sorted(self.policies.policies),
        }

    def text(self) -> str:
        where = {
            "git": f"git {self.commit[:12] if self.commit else '?'}, {self.real_root}/",
            "file": "file",
            "folder": "folder",
        }[self.kind]
        return f"{self.label} ({where}), policy set {self.policies.version}"


def _git(args: Sequence[str], cwd: Path, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            input=stdin,
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise DiffInputError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise DiffInputError(
            f"git {' '.join(args[:2])} took longer than {GIT_TIMEOUT:g}s"
        ) from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise DiffInputError(f"git {' '.join(args[:2])}: {message}")
    return done.stdout


def read_revision(revision: str, folder: str, dest: Path, cwd: Path) -> str:
    """Write the files below ``folder`` at ``revision`` into ``dest`` (same layout) from the
    repository's objects; return the commit. Symbolic links and submodules are left out."""
    try:
        top = Path(_git(["rev-parse", "--show-toplevel"], cwd).decode().strip())
    except DiffInputError:
        raise DiffInputError(
            f"{revision!r} is neither a file or folder nor a git revision (not in a git repository)"
        ) from None
    try:
        commit = (
            _git(
                ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"],
                top,
            )
            .decode()
            .strip()
        )
    except DiffInputError:
        raise DiffInputError(
            f"{revision!r} is neither a file or folder nor a revision of the repository at {top}"
        ) from None
    listing = _git(["ls-tree", "-r", "-z", "--full-tree", commit, "--", folder], top)
    blobs: list[tuple[str, str]] = []
    for item in listing.split(b"\0"):
        if not item:
            continue
        meta, _, raw_name = item.partition(b"\t")
        mode, kind, obj = meta.decode().split()
        if kind == "blob" and mode != "120000":
            blobs.append((obj, raw_name.decode("utf-8", errors="surrogateescape")))
    if not blobs:
        raise DiffInputError(f"{revision} ({commit[:12]}) has no files below {folder}/")
    batch = _git(["cat-file", "--batch"], top, stdin="".join(f"{o}\n" for o, _ in blobs).encode())
    offset = 0
    base = dest.resolve()
    for obj, name in blobs:
        header_end = batch.index(b"\n", offset)
        header = batch[offset:header_end].decode().split()
        if len(header) != 3 or header[0] != obj:
            raise DiffInputError(f"git cat-file: unexpected answer for {name}: {header}")
        size = int(header[2])
        body = batch[header_end + 1 : header_end + 1 + size]
        offset = header_end + 1 + size + 1  # the content is followed by a newline
        target = (base / name).resolve()
        if base not in target.parents:
            raise DiffInputError(f"{revision}: refusing a path outside {folder}/: {name!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    return commit


def open_side(arg: str, *, folder: str, workdir: Path, cwd: Path) -> Side:
    """A policy file, a folder, or a git revision, with its policies loaded (every error of
    every file in one :class:`DiffInputError`)."""
    path = Path(arg)
    if path.exists():
        kind = "folder" if path.is_dir() else "file"
        root = path if path.is_dir() else path.parent
        return Side(arg, kind, root, _load(arg, [path], lambda p: p))
    dest = workdir / f"rev{len(list(workdir.iterdir()))}"
    dest.mkdir()
    inside = folder.strip("/") or "."
    commit = read_revision(arg, inside, dest, cwd)
    root = dest / inside
    unloaded = Side(arg, "git", root, PolicySet({}, ""), commit, inside)  # to name its files
    return Side(arg, "git", root, _load(arg, [root], unloaded.show), commit, inside)


def _load(label: str, paths: list[Path], show: Callable[[str], str]) -> PolicySet:
    try:
        return load_policy_set(paths)
    except SourceErrors as exc:
        lines = "\n".join(
            f"  {show(e.file)}:{e.line}:{e.column}: {e.path}: {e.message}"
            if e.line
            else f"  {show(e.file)}: {e.message}"
            for e in exc.errors
        )
        raise DiffInputError(f"{label}: the policies have errors:\n{lines}") from None


# -- running -------------------------------------------------------------------------------------


@dataclass
class DiffReport:
    old: Side
    new: Side
    diffs: list[ScenarioDiff]
    summary: Summary
    unusable: list[str] = field(default_factory=list)  # scenario files that cannot be read

    @property
    def exit_code(self) -> int:
        if self.unusable:
            return EXIT_UNUSABLE
        return EXIT_CHANGED if self.summary.changed else EXIT_SAME

    def as_dict(self) -> dict[str, Any]:
        return {
            "old": self.old.as_dict(),
            "new": self.new.as_dict(),
            "scenarios": [d.as_dict() for d in self.diffs],
            "unusable": self.unusable,
            "summary": self.summary.as_dict(),
        }


def _scenarios(old: Side, new: Side, extra: Sequence[str]) -> list[tuple[str, Path, Side | None]]:
    """(shown name, file, the side it comes from): both versions' scenarios by their path
    below the policies (the new copy when both have one), then the paths given."""
    found: dict[str, tuple[Path, Side]] = {}
    for side in (old, new):
        for f in scenario_files([str(side.root)]):
            found[f.relative_to(side.root).as_posix()] = (f, side)
    out: list[tuple[str, Path, Side | None]] = [
        (side.show(f), f, side) for f, side in (found[k] for k in sorted(found))
    ]
    seen = {f.resolve() for _, f, _ in out}
    for f in scenario_files(list(extra)):
        if f.resolve() not in seen:
            seen.add(f.resolve())
            out.append((str(f), f, None))
    return out


@dataclass
class _Run:
    result: SimulationResult | None = None
    failures: list[Failure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        if self.result is None:
            return Outcome.INVALID
        return Outcome.FAIL if self.failures else Outcome.PASS


def _run(doc: ScenarioDocument, policy: Policy, version: str, show: Callable[[str], str]) -> _Run:
    try:
        bound = bind(doc, policy)
    except SourceErrors as exc:
        return _Run(
            problems=[f"{show(e.file)}:{e.line}: {e.path}: {e.message}" for e in exc.errors]
        )
    result = Simulation(bound.scenario, policy, version).run()
    return _Run(result, check(result))


def diff_sides(old: Side, new: Side, extra: Sequence[str] = ()) -> DiffReport:
    """Run every scenario under both sides (the pure comparison is engine/diff.py)."""
    diffs: list[ScenarioDiff] = []
    unusable: list[str] = []
    skipped = 0
    services: dict[str, str] = {}  # the policy a scenario names -> its service
    for shown, path, side in _scenarios(old, new, extra):
        show = side.show if side is not None else str
        try:
            doc = read_scenario(path)
            service = doc.scenario.service or _service_of(doc, services)
        except SourceErrors as exc:
            unusable.extend(
                f"{show(e.file)}:{e.line}:{e.column}: {e.path}: {e.message}" for e in exc.errors
            )
            continue
        before = old.policies.policies.get(service)
        after = new.policies.policies.get(service)
        name = doc.scenario.scenario
        if before is None and after is None:
            skipped += 1
            continue
        if before is None or after is None:
            assert before is not None or after is not None
            ran = _run(doc, after or before, "", show)  # type: ignore[arg-type]
            added = before is None
            diffs.append(
                ScenarioDiff(
                    shown,
                    name,
                    service,
                    Status.ADDED if added else Status.REMOVED,
                    old_outcome=Outcome.ABSENT if added else ran.outcome,
                    new_outcome=ran.outcome if added else Outcome.ABSENT,
                    new_failures=tuple(ran.failures) if added else (),
                    problems=tuple(ran.problems),
                )
            )
            continue
        a = _run(doc, before, old.policies.version, show)
        b = a if before == after else _run(doc, after, new.policies.version, show)
        if a.result is None and b.result is None:
            unusable.extend(f"{shown}: {p}" for p in a.problems)
            continue
        if a.result is None or b.result is None:
            diffs.append(
                ScenarioDiff(
                    shown,
                    name,
                    service,
                    Status.CHANGED,
                    old_outcome=a.outcome,
                    new_outcome=b.outcome,
                    new_failures=tuple(b.failures),
                    problems=tuple(
                        [*(f"old: {p}" for p in a.problems), *(f"new: {p}" for p in b.problems)]
                    ),
                )
            )
            continue
        diffs.append(
            compare_results(shown, name, service, a.result, b.result, a.failures, b.failures)
        )
    return DiffReport(old, new, diffs, summarize(diffs, skipped), unusable)


def _service_of(doc: ScenarioDocument, known: dict[str, str]) -> str:
    key = doc.scenario.policy
    if isinstance(key, str):
        key = os.path.normpath(Path(doc.file).parent / key)
        if key in known:
            return known[key]
    service = own_policy(doc).service
    if isinstance(key, str):
        known[key] = service
    return service


def run_diff(
    old: str,
    new: str,
    scenario_paths: Sequence[str] = (),
    *,
    folder: str = "policies",
    cwd: Path | None = None,
) -> DiffReport:
    """Open both versions and diff them; :class:`DiffInputError` on unusable input."""
    missing = [p for p in scenario_paths if not Path(p).exists()]
    if missing:
        raise DiffInputError(f"no such file or folder: {', '.join(missing)}")
    here = cwd or Path.cwd()
    with tempfile.TemporaryDirectory(prefix="failoverd-diff-") as tmp:
        workdir = Path(tmp)
        before = open_side(old, folder=folder, workdir=workdir, cwd=here)
        after = open_side(new, folder=folder, workdir=workdir, cwd=here)
        return diff_sides(before, after, scenario_paths)


# -- output --------------------------------------------------------------------------------


def render(report: DiffReport, *, verbose: bool = False) -> str:
    lines = [f"old: {report.old.text()}", f"new: {report.new.text()}"]
    for d in report.diffs:
        if not d.changed and not d.failing and not verbose:
            continue
        tag = {"same": "SAME", "changed": "CHANGED", "added": "ADDED", "removed": "REMOVED"}.get(
            str(d.status), str(d.status).upper()
        )
        lines.append(f"{tag} {d.name}  ({d.file})")
        if d.difference is not None:
            diff = d.difference
            lines.append(f"    first difference at {diff.as_dict()['at_text']}")
            lines.append(f"      old: {diff.old.text() if diff.old else '-'}")
            lines.append(f"      new: {diff.new.text() if diff.new else '-'}")
        if d.old_runs != d.new_runs:
            lines.append("    runs")
            for which, runs in (("old", d.old_runs), ("new", d.new_runs)):
                shown = [r.text() for r in runs] or ["none"]
                lines.append(f"      {which}: {shown[0]}")
                lines.extend(f"           {r}" for r in shown[1:])
        lines.extend(f"    {p}" for p in d.problems)
        verdict = {
            Outcome.PASS: "pass",
            Outcome.FAIL: "FAIL",
            Outcome.INVALID: "INVALID",
            Outcome.ABSENT: "no policy",
        }
        lines.append(f"    expectations: {verdict[d.old_outcome]} -> {verdict[d.new_outcome]}")
        for failure in d.new_failures:
            lines.extend(f"    {line}" for line in format_failure(failure))
    for problem in report.unusable:
        lines.append(f"INVALID {problem}")
    lines.append(report.summary.text())
    return "\n".join(lines)


def add_diff_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "diff",
        help="replay scenarios against two versions of the policies and show what changes",
        description="Replay scenarios (the policies' own tests, recorded incidents kept below"
        " them, and the SCENARIO_PATHs given) against two versions of the policies. OLD and"
        " NEW are policy files, folders or git revisions (read from the repository's objects,"
        " no checkout: `failoverd diff main HEAD`). For each scenario whose decisions differ:"
        " the first moment they differ and whether its expectations still hold; last line"
        " `N scenarios, M changed, K now failing`. Exit 0 nothing changed, 1 decisions"
        " changed, 2 unusable input.",
    )
    p.add_argument("old", metavar="OLD", help="policy file, folder or git revision")
    p.add_argument("new", metavar="NEW", help="policy file, folder or git revision")
    p.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO_PATH", help="more scenario files or folders"
    )
    p.add_argument(
        "--policies-path",
        default="policies",
        metavar="FOLDER",
        help="for a git revision: the folder of the policies in the repository (default: policies)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (for CI)")
    p.add_argument("-v", "--verbose", action="store_true", help="list unchanged scenarios too")
    return p


def run_diff_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        report = run_diff(args.old, args.new, args.scenarios, folder=args.policies_path)
    except DiffInputError as exc:
        print(f"failoverd diff: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.json:
        json.dump(report.as_dict(), out, indent=2)
        out.write("\n")
    else:
        print(render(report, verbose=args.verbose), file=out)
    return report.exit_code

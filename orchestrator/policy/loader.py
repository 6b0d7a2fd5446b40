"""Reading policy files into a validated, versioned :class:`PolicySet`.

All problems of all files are collected and raised together as :class:`SourceErrors`, each
naming file, line, column, field path and what was expected. A policy set is all or nothing:
the daemon swaps in a new set only when every file in it is valid.
"""

from __future__ import annotations

import hashlib
import subprocess
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.policy.checks import check_policy
from orchestrator.policy.durations import FROM_FILE
from orchestrator.policy.models import Policy
from orchestrator.policy.salvage import salvage
from orchestrator.policy.yamlsource import (
    Limits,
    LoadedYaml,
    SourceError,
    SourceErrors,
    capped,
    load_yaml_file,
    load_yaml_text,
    short,
)

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class PolicySet:
    """The policies in force, by service name, with the version every decision records."""

    policies: Mapping[str, Policy]
    version: str
    files: Mapping[str, str] = field(default_factory=dict)  # service -> file

    def __iter__(self) -> typing.Iterator[Policy]:
        return iter(self.policies.values())

    def __len__(self) -> int:
        return len(self.policies)


def validate_model(model: type[M], loaded: LoadedYaml) -> M:
    """Validate YAML data against a pydantic model, turning its errors into located ones."""
    try:
        return model.model_validate(loaded.data, context={FROM_FILE: True})
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            loc = tuple(e["loc"])
            if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "type")  # point at the `type:` line, not the item's first
            errors.append(loaded.error(loc, _message(model, e)))
        raise SourceErrors(sort_errors(errors)) from None


def sort_errors(errors: list[SourceError]) -> list[SourceError]:
    """In file and line order, the way an author reads and fixes them. Errors on the same
    place (a value no member of a union accepts) are merged into one, alternatives joined."""
    merged: dict[tuple[str, int, int, str], list[str]] = {}
    for e in errors:
        messages = merged.setdefault((e.file, e.line, e.column, e.path), [])
        if e.message not in messages:
            messages.append(e.message)
    out = [
        SourceError(file, line, col, path, "; or ".join(messages))
        for (file, line, col, path), messages in merged.items()
    ]
    return sorted(out, key=lambda e: (e.file, e.line, e.column))


def parse_policy(loaded: LoadedYaml) -> Policy:
    """The policy in ``loaded``, or :class:`SourceErrors` with every field and cross-field
    error (the cross-field checks run on what did parse, see :mod:`.salvage`). Nothing else
    escapes: an error this module did not foresee is reported as one, at the file's top."""
    if not isinstance(loaded.data, dict):
        raise SourceErrors(
            [loaded.error((), "expected a mapping with a `service:` key at the top")]
        )
    try:
        try:
            policy = validate_model(Policy, loaded)
        except SourceErrors as exc:
            found = [*exc.errors, *_salvaged_problems(loaded)]
            raise SourceErrors(capped(sort_errors(found), Limits().max_errors)) from None
        problems = check_policy(policy)
    except SourceErrors:
        raise
    except Exception as exc:  # a bug of ours; the file still gets a located answer
        message = f"could not be checked ({type(exc).__name__}); please report this file"
        raise SourceErrors([loaded.error((), message)]) from None
    if problems:
        errors = sort_errors([loaded.error(path, msg) for path, msg in problems])
        raise SourceErrors(capped(errors, Limits().max_errors))
    return policy


def _salvaged_problems(loaded: LoadedYaml) -> list[SourceError]:
    """Cross-field problems of the part of an invalid policy that did parse."""
    found = salvage(loaded.data)
    if found is None:
        return []
    policy, damage = found
    return [loaded.error(damage.to_file(path), msg) for path, msg in check_policy(policy, damage)]


def load_policy_file(path: str | Path) -> Policy:
    return parse_policy(load_yaml_file(path))


def load_policy_text(text: str, file: str = "<policy>") -> Policy:
    return parse_policy(load_yaml_text(text, file))


def policy_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into the policy files below them (``*.yaml``/``*.yml``), skipping
    scenario folders (``tests/``) and hidden folders."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
                rel = f.relative_to(p).parts
                if any(part == "tests" or part.startswith(".") for part in rel[:-1]):
                    continue
                out.append(f)
        else:
            out.append(p)
    return out


def load_policy_set(paths: Iterable[str | Path]) -> PolicySet:
    """Load every policy under ``paths``; raise :class:`SourceErrors` listing every error."""
    paths = list(paths)
    try:
        files = policy_files(paths)
    except OSError as exc:
        where = str(exc.filename or ", ".join(str(p) for p in paths))
        reason = exc.strerror or type(exc).__name__
        raise SourceErrors([SourceError(where, 0, 0, "", f"cannot list: {reason}")]) from None
    errors: list[SourceError] = []
    policies: dict[str, Policy] = {}
    origin: dict[str, str] = {}
    digest = hashlib.sha256()
    if not files:
        where = ", ".join(str(p) for p in paths) or "(nothing)"
        raise SourceErrors([SourceError(where, 0, 0, "", "no policy files (*.yaml) found")])
    for f in sorted(files):  # the version must not depend on the order paths were given
        try:
            loaded = load_yaml_file(f)
            policy = parse_policy(loaded)
        except SourceErrors as exc:
            errors.extend(exc.errors)
            continue
        if policy.service in policies:
            line, col = loaded.locate(("service",))
            errors.append(
                SourceError(
                    str(f),
                    line,
                    col,
                    "service",
                    f"service {policy.service!r} is already defined in {origin[policy.service]}",
                )
            )
            continue
        policies[policy.service] = policy
        origin[policy.service] = str(f)
        digest.update(str(f.name).encode() + b"\0" + loaded.text.encode() + b"\0")
    if errors:
        raise SourceErrors(errors)
    version = digest.hexdigest()[:12]
    commit = git_commit(files[0].parent)
    if commit:
        version = f"{version}+g{commit[:10]}"
    return PolicySet(policies=policies, version=version, files=origin)


def policy_version(policies: Iterable[Policy]) -> str:
    """A content version for in-memory policies (scenarios with inline policies)."""
    digest = hashlib.sha256()
    for p in sorted(policies, key=lambda p: p.service):
        digest.update(p.model_dump_json().encode())
    return digest.hexdigest()[:12]


def git_commit(folder: Path) -> str | None:
    """The commit of the work tree holding ``folder``, when it is one and git is there."""
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


# ---------------------------------------------------------------------------------------
# Error messages: say what was expected, in the policy author's words.


def _message(model: type[BaseModel], err: Any) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown key {short(loc[-1])}{hint}"
    if kind == "missing":
        return "missing required key"
    if kind == "union_tag_not_found":
        expected = ", ".join(_union_tags(model, loc))
        return f"missing `type`; expected one of: {expected}" if expected else "missing `type`"
    if kind == "union_tag_invalid":
        return f"unknown type {err['ctx'].get('tag')!r}; expected one of: {_tags(err)}"
    if kind == "string_pattern_mismatch":
        return f"{short(err['input'])} does not match {err['ctx']['pattern']}"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in ("value_error", "union_tag_invalid", "union_tag_not_found"):
        value = err.get("input")
        if not isinstance(value, dict | list):
            msg = f"{msg} (got {short(value)})"
    return msg


def _tags(err: Any) -> str:
    ctx = err.get("ctx") or {}
    return str(ctx.get("expected_tags", "")).replace("'", "")


def _union_tags(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The `type` values a tagged union at ``loc`` accepts."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    current = _strip(current)
    tags: list[str] = []
    for member in typing.get_args(current):
        if isinstance(member, type) and issubclass(member, BaseModel):
            field_ = member.model_fields.get("type")
            if field_ is not None:
                tags.extend(str(t) for t in typing.get_args(field_.annotation))
    return tags


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at ``loc`` (walking lists, dicts and tagged unions)."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    current = _strip(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _step(tp: Any, part: Any) -> Any:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        # pydantic puts the tag of a discriminated union in the loc: it selects the member.
        for member in args:
            if isinstance(member, type) and issubclass(member, BaseModel):
                field_ = member.model_fields.get("type")
                if field_ is not None and part in typing.get_args(field_.annotation):
                    return member
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        f = tp.model_fields.get(part) if isinstance(part, str) else None
        return f.annotation if f else None
    if origin in (list, tuple) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _strip(tp: Any) -> Any:
    """Strip Annotated and Optional wrappers."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp

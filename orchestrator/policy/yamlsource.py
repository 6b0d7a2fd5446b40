"""YAML loading that remembers where every value came from.

PyYAML's composed node graph carries a start mark for each node; we build plain Python data
from it and, beside it, a map from the data path (``("signals", 0, "url")``) to the line and
column, so that any later error (pydantic's or a cross-field check's) can name ``file:line``.
Duplicate keys are errors here because YAML itself silently keeps the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

try:  # The C loader is several times faster; fall back when libyaml is missing.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on the build of PyYAML
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class SourceError:
    """One problem in a source file, with the place and the data path it concerns."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SourceErrors(Exception):
    """Raised with every error found in one or more files."""

    def __init__(self, errors: list[SourceError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass
class LoadedYaml:
    file: str
    data: Any
    lines: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    text: str = ""
    prefix: Path_ = ()  # where this data sits in its file (an inline policy in a scenario)

    def locate(self, path: Path_) -> tuple[int, int]:
        """Line and column of the deepest known prefix of ``path`` (pydantic adds loc parts,
        such as union tags, that are not in the data, so unknown segments are skipped)."""
        best = self.lines.get((), (1, 1))
        prefix: list[str | int] = []
        for part in path:
            candidate = (*prefix, part)
            if candidate in self.lines:
                prefix.append(part)
                best = self.lines[candidate]
        last_line = max(1, self.text.count("\n") + (0 if self.text.endswith("\n") else 1))
        return (min(best[0], last_line), best[1])

    def data_path(self, path: Path_) -> Path_:
        """``path`` as the author wrote it: without the parts pydantic adds that are not in
        the data (a tagged union's tag, ``[key]`` for a bad mapping key)."""
        kept: list[str | int] = []
        node: Any = self.data
        for part in path:
            if part == "[key]":
                continue
            # pydantic names the member of a plain union it tried: `literal['a','b']`,
            # `list[str]`, `Flap`. Not something the author wrote.
            if (
                isinstance(part, str)
                and not (isinstance(node, dict) and part in node)
                and ("[" in part or (part[:1].isupper() and node is not None))
            ):
                continue
            if (
                isinstance(node, dict)
                and isinstance(part, str)
                and part not in node
                and node.get("type") == part
            ):
                continue  # the union member pydantic chose by `type:`
            kept.append(part)
            if isinstance(node, dict) and isinstance(part, str):
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
            else:
                node = None
        return tuple(kept)

    def error(self, path: Path_, message: str) -> SourceError:
        line, column = self.locate(path)
        shown = format_path((*self.prefix, *self.data_path(path)))
        return SourceError(self.file, line, column, shown, message)


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml_text(text: str, file: str) -> LoadedYaml:
    """Parse one YAML document; raise :class:`SourceErrors` on syntax errors, duplicate keys,
    or non-string mapping keys."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or str(exc)
        raise SourceErrors([SourceError(file, line, col, "", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SourceErrors([SourceError(file, 0, 0, "", f"invalid YAML: {exc}")]) from None
    loaded = LoadedYaml(file=file, data=None, text=text)
    if node is None:
        raise SourceErrors([SourceError(file, 1, 1, "", "the file is empty; expected a mapping")])
    errors: list[SourceError] = []
    loaded.data = _build(node, (), loaded, errors)
    if errors:
        raise SourceErrors(errors)
    return loaded


def load_yaml_file(path: str | Path) -> LoadedYaml:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceErrors(
            [SourceError(str(p), 0, 0, "", f"cannot read: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError:
        raise SourceErrors([SourceError(str(p), 0, 0, "", "not UTF-8 text")]) from None
    return load_yaml_text(text, str(p))


def _build(node: yaml.Node, path: Path_, out: LoadedYaml, errors: list[SourceError]) -> Any:
    out.lines[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                errors.append(
                    SourceError(
                        out.file,
                        line,
                        col,
                        format_path(path),
                        "YAML merge keys (<<) are not supported; write the keys out",
                    )
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                errors.append(
                    SourceError(
                        out.file,
                        line,
                        col,
                        format_path(path),
                        f"a {kind} cannot be a key; keys are plain strings",
                    )
                )
                continue
            key = _scalar(key_node)
            if not isinstance(key, str):
                errors.append(
                    SourceError(
                        out.file,
                        line,
                        col,
                        format_path(path),
                        f"key {key!r} must be a string (quote it)",
                    )
                )
                continue
            if key in result:
                errors.append(
                    SourceError(
                        out.file, line, col, format_path((*path, key)), f"duplicate key {key!r}"
                    )
                )
                continue
            result[key] = _build(value_node, (*path, key), out, errors)
            # Point errors about an entry at its key: a nested block starts a line later.
            out.lines[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), out, errors) for i, item in enumerate(node.value)]
    return _scalar(node)


_SCALARS = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return _SCALARS.construct_object(node)
    return None

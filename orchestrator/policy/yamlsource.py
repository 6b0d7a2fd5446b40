"""YAML loading that remembers where every value came from.

PyYAML's composed node graph carries a start mark for each node; we build plain Python data
from it and, beside it, a map from the data path (``("signals", 0, "url")``) to the line and
column, so that any later error (pydantic's or a cross-field check's) can name ``file:line``.
Duplicate keys are errors here because YAML itself silently keeps the last one.
"""

from __future__ import annotations

import dataclasses
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
import yaml.constructor
import yaml.reader
import yaml.resolver

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


def load_yaml_text(text: str, file: str, limits: Limits | None = None) -> LoadedYaml:
    """Parse one YAML document; raise :class:`SourceErrors` on syntax errors, duplicate keys,
    non-string mapping keys, values that are not plain data, or input beyond ``limits``.
    Nothing else escapes: whatever the text holds, the result is data or located errors."""
    limits = limits or Limits()
    if len(text) > limits.max_bytes:
        raise SourceErrors([_too_large(file, len(text), limits)])
    builder = _Builder(file, text, limits)
    try:
        builder.run()
    except _Fatal as fatal:
        builder.errors.append(fatal.error)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "not valid YAML"
        builder.errors.append(SourceError(file, line, col, "", f"invalid YAML: {problem}"))
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        builder.errors.append(SourceError(file, line, col, "", f"invalid YAML: {exc.reason}"))
    except yaml.YAMLError as exc:  # pragma: no cover - every YAMLError PyYAML raises is one above
        builder.errors.append(SourceError(file, 1, 1, "", f"invalid YAML: {type(exc).__name__}"))
    if builder.errors:
        raise SourceErrors(capped(builder.errors, limits.max_errors))
    if not builder.documents:
        raise SourceErrors([SourceError(file, 1, 1, "", "the file is empty; expected a mapping")])
    return builder.loaded


def load_yaml_file(path: str | Path, limits: Limits | None = None) -> LoadedYaml:
    """Read and parse ``path``: a regular file of at most ``limits.max_bytes`` of UTF-8."""
    limits = limits or Limits()
    p = Path(path)
    try:
        # Refuse FIFOs and devices before opening: reading one could block or never end.
        if not stat.S_ISREG(p.stat().st_mode):
            raise SourceErrors([SourceError(str(p), 0, 0, "", "not a regular file")])
        with p.open("rb") as f:
            raw = f.read(limits.max_bytes + 1)
    except OSError as exc:
        raise SourceErrors(
            [SourceError(str(p), 0, 0, "", f"cannot read: {exc.strerror or type(exc).__name__}")]
        ) from None
    if len(raw) > limits.max_bytes:
        raise SourceErrors([_too_large(str(p), len(raw), limits)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _position(raw.decode("utf-8", "replace"), exc.start)
        raise SourceErrors([SourceError(str(p), line, col, "", "not UTF-8 text")]) from None
    return load_yaml_text(text, str(p), limits)


def capped(errors: list[SourceError], limit: int) -> list[SourceError]:
    """The first ``limit`` errors, and one more saying how many were left out: a file of
    junk must not turn into a million log lines."""
    if len(errors) <= limit:
        return errors
    last = errors[limit - 1]
    more = SourceError(last.file, 0, 0, "", f"... and {len(errors) - limit} more error(s)")
    return [*errors[:limit], more]


def short(value: object, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, for error messages (a value may be huge)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for repr (sys.int_max_str_digits)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------
# Building plain data from PyYAML's event stream.
#
# Not yaml.compose(): its node graph is built in one C call that holds the GIL throughout
# (a thread loading a hostile file would stall the event loop), it recurses (deep nesting is
# a RecursionError), and a recursive alias makes a cyclic graph. Events come one at a time,
# so the stack below is explicit, every limit is checked as the data grows, and aliases are
# charged for what they expand to without being copied.


@dataclass(frozen=True)
class Limits:
    """What one file may hold. A policy is a few hundred nodes and a few KB: the defaults
    leave ample room for real files and none for a bomb."""

    # libyaml reads a scalar in one call that holds the GIL: ~10 ms for 256 KiB, ~40 ms for
    # 1 MiB (the event loop waits that long while a reload thread reads one).
    max_bytes: int = 256 * 1024
    max_nodes: int = 20_000  # values built, each alias counted as what it expands to
    max_depth: int = 64
    max_errors: int = 50


_MERGE = "tag:yaml.org,2002:merge"
_TAG = "tag:yaml.org,2002:"
_INT_DIGITS = 70  # longer than any 64-bit integer in any base YAML allows, underscores aside
_INT_BOUND = 2**63


class _Fatal(Exception):
    """Stops building: a limit is exceeded, or the structure cannot go on."""

    def __init__(self, error: SourceError) -> None:
        super().__init__(str(error))
        self.error = error


class _InProgress:
    """An anchor whose node is still being built: an alias to it is recursive."""


_IN_PROGRESS = _InProgress()


@dataclass
class _Built:
    """A finished node: its value, where it starts, and what it weighs."""

    value: Any
    line: int
    column: int
    kind: str  # "scalar", "list", "mapping"
    nodes: int
    height: int
    tag: str | None = None


@dataclass
class _Frame:
    kind: str  # "list" or "mapping"
    path: Path_ | None  # None: a collection used as a key (its content is never kept)
    value: Any
    line: int
    column: int
    anchor: str | None
    nodes: int = 1
    height: int = 1
    key: str | None = None  # the key whose value comes next
    key_line: int = 0
    key_column: int = 0
    awaiting_value: bool = False


class _Builder:
    def __init__(self, file: str, text: str, limits: Limits) -> None:
        self.file = file
        self.text = text
        self.limits = limits
        self.loaded = LoadedYaml(file=file, data=None, text=text)
        self.errors: list[SourceError] = []
        self.documents = 0
        self.nodes = 0
        self.anchors: dict[str, _Built | _InProgress] = {}
        self.stack: list[_Frame] = []
        # One resolver and constructor per load: PyYAML's constructor remembers every node
        # it built, so a shared one keeps every scalar of every reload alive.
        self.resolver = yaml.resolver.Resolver()
        self.constructor = yaml.constructor.SafeConstructor()

    def run(self) -> None:
        parser = _Loader(self.text)
        try:
            while parser.check_event():
                self.event(parser.get_event())
        finally:
            parser.dispose()

    def fatal(self, line: int, column: int, path: Path_ | None, message: str) -> _Fatal:
        path = path or ()
        shown = format_path(path[:8]) + ("..." if len(path) > 8 else "")
        return _Fatal(SourceError(self.file, line, column, shown, message))

    def event(self, event: Any) -> None:  # a yaml.Event; its marks are C or Python ones
        mark: Any = event.start_mark
        line, column = mark.line + 1, mark.column + 1
        if isinstance(event, yaml.DocumentStartEvent):
            if self.documents:
                raise self.fatal(line, column, None, "invalid YAML: expected a single document")
            self.documents += 1
        elif isinstance(event, yaml.ScalarEvent):
            self.count(line, column)
            self.anchor(event.anchor, line, column)
            tag = event.tag
            if tag is None or tag == "!":
                tag = self.resolver.resolve(  # type: ignore[no-untyped-call]
                    yaml.ScalarNode, event.value, event.implicit
                )
            end: Any = event.end_mark
            node = yaml.ScalarNode(tag, event.value, mark, end, event.style)
            value = self.scalar(node, line, column)
            self.add(_Built(value, line, column, "scalar", 1, 1, tag), event.anchor)
        elif isinstance(event, yaml.AliasEvent):
            self.alias(str(event.anchor), line, column)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            self.count(line, column)
            path = self.child_path()
            if len(self.stack) + 1 > self.limits.max_depth:
                raise self.fatal(
                    line, column, path, f"nested deeper than {self.limits.max_depth} levels"
                )
            self.anchor(event.anchor, line, column)
            kind = "list" if isinstance(event, yaml.SequenceStartEvent) else "mapping"
            if event.tag not in (None, "!", _TAG + ("seq" if kind == "list" else "map")):
                self.unsupported(event.tag, line, column)
            container: Any = [] if kind == "list" else {}
            if path is not None:
                self.loaded.lines[path] = (line, column)
            self.stack.append(_Frame(kind, path, container, line, column, event.anchor))
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            frame = self.stack.pop()
            built = _Built(
                frame.value, frame.line, frame.column, frame.kind, frame.nodes, frame.height
            )
            self.add(built, frame.anchor)

    def count(self, line: int, column: int, nodes: int = 1) -> None:
        self.nodes += nodes
        if self.nodes > self.limits.max_nodes:
            raise self.fatal(
                line,
                column,
                self.child_path(),
                f"more than {self.limits.max_nodes} values (aliases count as what they"
                " repeat); a policy is a few hundred",
            )

    def anchor(self, name: str | None, line: int, column: int) -> None:
        if name is None:
            return
        if name in self.anchors:
            raise self.fatal(line, column, self.child_path(), f"duplicate anchor &{name}")
        self.anchors[name] = _IN_PROGRESS

    def alias(self, name: str, line: int, column: int) -> None:
        target = self.anchors.get(name)
        path = self.child_path()
        if target is None:
            raise self.fatal(line, column, path, f"alias *{name} names no anchor before it")
        if isinstance(target, _InProgress):
            raise self.fatal(line, column, path, f"recursive alias: *{name} is inside &{name}")
        self.count(line, column, target.nodes)
        if len(self.stack) + target.height > self.limits.max_depth:
            raise self.fatal(
                line, column, path, f"nested deeper than {self.limits.max_depth} levels"
            )
        # The value is shared, not copied: its weight is charged above, and nothing
        # downstream mutates loaded data.
        self.add(dataclasses.replace(target, line=line, column=column), None)

    def child_path(self) -> Path_ | None:
        """Where the next node goes in the data (None: inside or as a key)."""
        if not self.stack:
            return ()
        parent = self.stack[-1]
        if parent.path is None:
            return None
        if parent.kind == "list":
            return (*parent.path, len(parent.value))
        if parent.awaiting_value:
            return None if parent.key is None else (*parent.path, parent.key)
        return None  # a key

    def add(self, built: _Built, anchor: str | None) -> None:
        if anchor is not None:
            self.anchors[anchor] = built
        if not self.stack:
            self.loaded.data = built.value
            return
        parent = self.stack[-1]
        parent.nodes += built.nodes
        parent.height = max(parent.height, built.height + 1)
        if parent.kind == "list":
            if parent.path is not None:  # a collection item was placed when it started
                where = (built.line, built.column)
                self.loaded.lines.setdefault((*parent.path, len(parent.value)), where)
            parent.value.append(built.value)
        elif parent.awaiting_value:
            parent.awaiting_value = False
            if parent.key is not None:
                parent.value[parent.key] = built.value
                if parent.path is not None:
                    # Point errors about an entry at its key: a block starts a line later.
                    where = (parent.key_line, parent.key_column)
                    self.loaded.lines[(*parent.path, parent.key)] = where
        else:
            parent.awaiting_value = True
            parent.key = self.key(parent, built)
            parent.key_line, parent.key_column = built.line, built.column

    def key(self, parent: _Frame, built: _Built) -> str | None:
        """The key ``built`` stands for, or None (and an error) when it cannot be one."""
        if parent.path is None:
            return None  # inside a key that is itself refused
        where = format_path(parent.path)
        if built.kind != "scalar":
            kind = "list" if built.kind == "list" else "mapping"
            message = f"a {kind} cannot be a key; keys are plain strings"
        elif built.tag == _MERGE:
            message = "YAML merge keys (<<) are not supported; write the keys out"
        elif not isinstance(built.value, str):
            message = f"key {short(built.value)} must be a string (quote it)"
        elif built.value in parent.value:
            key = built.value
            self.errors.append(
                SourceError(
                    self.file,
                    built.line,
                    built.column,
                    format_path((*parent.path, key)),
                    f"duplicate key {short(key)}",
                )
            )
            return None
        else:
            return str(built.value)
        self.errors.append(SourceError(self.file, built.line, built.column, where, message))
        return None

    def scalar(self, node: yaml.ScalarNode, line: int, column: int) -> Any:
        """The value of a scalar: null, bool, int, float or str. Timestamps stay the text
        written (no field takes a date); anything else is an error where it stands."""
        tag = node.tag
        c = self.constructor
        try:
            if tag == _MERGE:
                return "<<"
            if tag == _TAG + "str" or tag == _TAG + "timestamp":
                return node.value
            if tag == _TAG + "null":
                return c.construct_yaml_null(node)
            if tag == _TAG + "bool":
                return c.construct_yaml_bool(node)
            if tag == _TAG + "int":
                if len(node.value.replace("_", "")) > _INT_DIGITS:
                    raise ValueError("too many digits")
                integer = c.construct_yaml_int(node)
                if not -_INT_BOUND < integer < _INT_BOUND:
                    raise ValueError("out of the 64-bit range")
                return integer
            if tag == _TAG + "float":
                real = c.construct_yaml_float(node)
                if not math.isfinite(real):
                    raise ValueError("not a finite number")
                return real
        except (ValueError, KeyError, IndexError, OverflowError, yaml.YAMLError) as exc:
            kind = tag.removeprefix(_TAG)
            reason = str(exc).splitlines()[0] if isinstance(exc, ValueError) else ""
            detail = f": {reason}" if reason and len(reason) < 80 else ""
            self.error_here(line, column, f"cannot read {short(node.value)} as {kind}{detail}")
            return None
        self.unsupported(tag, line, column)
        return None

    def unsupported(self, tag: str, line: int, column: int) -> None:
        self.error_here(
            line,
            column,
            f"unsupported YAML tag {short(tag.removeprefix(_TAG), 40)}; plain values only"
            " (strings, numbers, booleans, null, lists and mappings)",
        )

    def error_here(self, line: int, column: int, message: str) -> None:
        """An error about the node about to be placed (its path in the data)."""
        path = format_path(self.child_path() or ())
        self.errors.append(SourceError(self.file, line, column, path, message))


def _too_large(file: str, size: int, limits: Limits) -> SourceError:
    return SourceError(
        file, 1, 1, "", f"too large ({size} bytes); at most {limits.max_bytes} bytes are read"
    )


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of character ``index`` of ``text``."""
    index = max(0, min(index, len(text)))
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1

"""What did parse: a valid policy cut out of an invalid one, for the cross-field checks.

``failoverd validate`` must show every problem of a file in one run, but the cross-field
checks (``after`` naming a missing step, quorum above the vantage points, replication
regions) need a whole :class:`Policy`. So, when validation fails, the parts pydantic refused
are taken out (a bad field falls back to its default, a bad list item or mapping entry is
dropped), a few required top-level fields get a stand-in, and validation is tried again
until it passes. Every part taken out or stood in for is *damaged*: the checks skip rules
that read damaged data (they would report what the removal caused, not what the author
wrote), and list indices are mapped back to the file's, so a problem is shown where it is.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from orchestrator.policy.checks import Damage
from orchestrator.policy.durations import FROM_FILE
from orchestrator.policy.models import Policy
from orchestrator.policy.yamlsource import LoadedYaml, Path_

MAX_ROUNDS = 8  # each round removes everything pydantic reported; nesting is shallow
# Stand-ins for required fields that no check can do without; marked damaged like removals.
_STEP = {"name": "salvaged", "action": "wait", "params": {"duration": "1s"}}
_STANDINS: Mapping[Path_, Any] = {
    ("service",): "salvaged",
    ("rto",): "1h",
    ("rpo",): "0s",
    ("signals",): [{"name": "salvaged", "type": "tcp", "target": "salvaged:1"}],
    ("runbooks",): {"failover": [_STEP]},
    ("runbooks", "failover"): [_STEP],
}


def salvage(data: Any) -> tuple[Policy, Damage] | None:
    """The valid part of ``data`` (a policy's YAML data) and what was damaged to get it;
    None when nothing usable is left (no regions, a top level that is not a mapping)."""
    if not isinstance(data, dict):
        return None
    work = _Work(data)
    for _ in range(MAX_ROUNDS):
        try:
            policy = Policy.model_validate(work.data, context={FROM_FILE: True})
        except ValidationError as exc:
            if not work.cut(exc):
                return None
            continue
        except Exception:  # a validator that raises something else: give up, quietly
            return None
        return policy, work.damage()
    return None


class _Work:
    """The data being cut, and the way back from its list indices to the file's."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.file_data = data
        self.data = copy.deepcopy(data)
        self.view = LoadedYaml(file="", data=self.data)
        self.damaged: set[Path_] = set()
        # id() of each list in ``data`` -> the original index of each of its items.
        self.origin: dict[int, list[int]] = {}
        self._index(self.data)

    def _index(self, node: Any) -> None:
        if isinstance(node, list):
            self.origin[id(node)] = list(range(len(node)))
            for item in node:
                self._index(item)
        elif isinstance(node, dict):
            for value in node.values():
                self._index(value)

    def original(self, path: Path_) -> Path_:
        """``path`` in the current data as a path in the file's data."""
        out: list[str | int] = []
        node: Any = self.data
        for part in path:
            if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                out.append(self.origin[id(node)][part])
                node = node[part]
            elif isinstance(node, dict) and isinstance(part, str):
                out.append(part)
                node = node.get(part)
            else:
                out.append(part)
                node = None
        return tuple(out)

    def cut(self, exc: ValidationError) -> bool:
        """Take out (or stand in for) every part ``exc`` names. False when that would
        leave nothing to check."""
        targets: set[Path_] = set()
        standins: dict[Path_, Any] = {}
        for err in exc.errors():
            path = self.view.data_path(tuple(err["loc"]))
            if err["type"] == "missing":
                if path in _STANDINS:
                    standins[path] = _STANDINS[path]
                    continue
                path = path[:-1]
            path = self._existing(path)
            if path in _STANDINS:
                standins[path] = _STANDINS[path]
            elif not path:
                return False  # the top level itself, or a required field without stand-in
            else:
                targets.add(path)
        if not targets and not standins:
            return False
        # An ancestor's removal (or stand-in) covers its descendants'.
        covers = [*targets, *standins]
        kept = {t for t in targets if not any(t[: len(o)] == o and t != o for o in covers)}
        kept -= set(standins)
        for path, value in standins.items():
            self.damaged.add(self.original(path))
            self._set(path, copy.deepcopy(value))
        # List items last index first, so that the indices of the others stay right.
        for path in sorted(kept, key=_descending, reverse=True):
            self.damaged.add(self.original(path))
            self._remove(path)
        return True

    def _existing(self, path: Path_) -> Path_:
        """The longest prefix of ``path`` present in the data."""
        node: Any = self.data
        for i, part in enumerate(path):
            present = (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            )
            if not present:
                return path[:i]
            node = node[part]
        return path

    def _parent(self, path: Path_) -> Any:
        node: Any = self.data
        for part in path[:-1]:
            node = node[part]
        return node

    def _set(self, path: Path_, value: Any) -> None:
        parent = self._parent(path)
        if isinstance(parent, dict):
            parent[path[-1]] = value
            self._index(value)

    def _remove(self, path: Path_) -> None:
        parent = self._parent(path)
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif isinstance(parent, list) and isinstance(path[-1], int):
            del parent[path[-1]]
            del self.origin[id(parent)][path[-1]]

    def damage(self) -> Damage:
        names = {
            book: frozenset(
                step["name"]
                for step in steps
                if isinstance(step, dict) and isinstance(step.get("name"), str)
            )
            for book, steps in _books(self.file_data).items()
        }
        return Damage(damaged=frozenset(self.damaged), to_file=self.original, step_names=names)


def _books(data: Any) -> dict[str, list[Any]]:
    runbooks = data.get("runbooks") if isinstance(data, dict) else None
    if not isinstance(runbooks, dict):
        return {}
    return {k: v for k, v in runbooks.items() if isinstance(k, str) and isinstance(v, list)}


def _descending(path: Path_) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders list indices numerically and keys as text."""
    return tuple((0, p) if isinstance(p, int) else (1, p) for p in path)

"""Malformed policy files, each invalid by construction, for the policy fuzz rows.

Three families, as a careless or hostile author would write them:

* **structural**: an example policy (``policies/*/*.yaml``) with one to three mutations, each
  of which alone makes it invalid: a required key deleted, an unknown key added to a model,
  a typed field given a wrong type or an out-of-range value, a cross-field rule broken
  (``after`` to a missing step, quorum above the vantage points, a stray ``{``), a YAML
  construct the loader refuses (duplicate key, merge key, a second document, a tab);
* **junk**: text that is not a policy at all: random bytes, YAML punctuation, an example
  cut before its runbooks, invalid UTF-8, control characters;
* **attacks**: alias bombs, recursive aliases, deep nesting, too many values, files over
  the size limit, integers of thousands of digits, durations of centuries.

``corpus(seed, n)`` is deterministic for a seed; ``MUTATIONS`` and ``mutate`` serve the
hypothesis test, which draws its own choices.
"""

from __future__ import annotations

import copy
import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.policy.yamlsource import Limits

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "policies").glob("*/*.yaml"))
REQUIRED = ("service", "regions", "rto", "rpo", "signals", "runbooks")
MODEL_MAPPINGS = ("", "detection", "guards", "guards.failback", "runbooks", "replication")


@dataclass(frozen=True)
class Case:
    name: str  # family-kind-number: where a failure points
    content: bytes


@functools.cache
def texts() -> tuple[str, ...]:
    return tuple(p.read_text(encoding="utf-8") for p in EXAMPLES)


@functools.cache
def _parsed() -> tuple[dict[str, Any], ...]:
    return tuple(yaml.load(text, Loader=yaml.CSafeLoader) for text in texts())


def examples() -> list[dict[str, Any]]:
    """The example policies as data (fresh copies: mutations change them)."""
    return copy.deepcopy(list(_parsed()))


def dump(data: Any) -> str:
    return yaml.dump(
        data,
        Dumper=yaml.CSafeDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )


def _failover(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The failover steps, made present again when an earlier mutation took them out (this
    mutation's own change keeps the policy invalid)."""
    runbooks = d.get("runbooks")
    if not isinstance(runbooks, dict):
        runbooks = d["runbooks"] = {}
    steps = runbooks.get("failover")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        steps = runbooks["failover"] = [
            {"name": "move", "action": "wait", "params": {"duration": "1s"}}
        ]
    return steps


def _signals(d: dict[str, Any]) -> list[dict[str, Any]]:
    signals = d.get("signals")
    if (
        not isinstance(signals, list)
        or not signals
        or not all(isinstance(s, dict) for s in signals)
    ):
        signals = d["signals"] = [{"name": "api", "type": "http", "target": "https://{region}.x/"}]
    return signals


def _mapping(d: dict[str, Any], path: str) -> dict[str, Any]:
    target = d
    for part in filter(None, path.split(".")):
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    return target


# --- structural mutations: (data, rng) -> data, or text edits (text, rng) -> text -----------
def _delete_required(d: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    del d[rng.choice([k for k in REQUIRED if k in d])]
    return d


def _unknown_key(d: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    where = rng.choice([*MODEL_MAPPINGS, "signal", "step"])
    if where == "signal":
        target = rng.choice(_signals(d))
    elif where == "step":
        target = rng.choice(_failover(d))
    else:
        target = _mapping(d, where)
    key = rng.choice(["colour", "retrys", "Timeout", "x" * 300, "\u00e9t\u00e9", "on-failure"])
    target[key] = 1
    return d


_WRONG: list[tuple[str, list[Any]]] = [
    ("rto", ["soon", 900, 9.5, [], {"a": 1}, None, True, "400d", "99999999999999999999d"]),
    ("rpo", ["-1s", "1 m", {"x": "y"}, "1" * 5000 + "s"]),
    ("regions", ["us-east-1", [], ["us-east-1"], ["mars-1", "us-east-1"], [1, 2], {"a": 1}]),
    ("service", ["Web App", "", 42, "x" * 100, ["webapp"]]),
    ("mode", ["sometimes", 1, None]),
    ("vantage_points", [[], "local", ["Local Agent"], [None]]),
    ("detection.quorum", [0, -3, "many", 2.5, 10**30]),
    ("detection.consecutive_failures", [0, 101, "three"]),
    ("detection.interval", ["0s", "10", 10, "10 s", "-1s"]),
    ("detection.failure_ratio", [1.5, 0, "half"]),
    ("guards.on_lag_unknown", ["panic", 3]),
    ("guards.max_failovers", [{"count": 0, "window": "1d"}, {"count": 2}, 5]),
    ("signals", [[], "api", {"name": "x"}, [None], [{"type": "http"}]]),
    ("runbooks", [{}, [], {"failover": []}, {"failover": [{"name": "x"}]}]),
]


def _wrong_type(d: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    path, values = rng.choice(_WRONG)
    parents, _, last = path.rpartition(".")
    _mapping(d, parents)[last] = copy.deepcopy(rng.choice(values))
    return d


def _step_field(d: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    step = rng.choice(_failover(d))
    key, value = rng.choice(
        [
            ("action", "rds.promote"),
            ("action", 7),
            ("timeout", "forever"),
            ("timeout", "0s"),
            ("retries", -1),
            ("retries", 50),
            ("on_failure", "explode"),
            ("after", "promote-db"),
            ("name", "Flip DNS"),
            ("params", ["not", "a", "mapping"]),
        ]
    )
    step[key] = value
    return d


def _signal_field(d: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    signal = rng.choice(_signals(d))
    key, value = rng.choice(
        [
            ("type", "htp"),
            ("name", "API Probe"),
            ("timeout", "5 minutes"),
            ("vantage", ["nowhere"]),
            ("targets", {"mars-1": "x"}),
            ("expect_status", [700]),
            ("body_regex", "(unclosed"),
            ("services", []),
            ("alarms", "none"),
        ]
    )
    signal[key] = value
    if key == "type":
        signal.pop("vantage", None)
    return d


def _cross_field(d: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    steps = _failover(d)
    kind = rng.randrange(7)
    if kind == 0:
        rng.choice(steps)["after"] = ["no-such-step"]
    elif kind == 1:
        steps.append(copy.deepcopy(steps[0]))  # the same name twice
    elif kind == 2:
        _mapping(d, "detection")["quorum"] = 40
    elif kind == 3:
        steps.append(
            {"name": "bad-brace", "action": "wait", "params": {"duration": "{target_region"}}
        )
    elif kind == 4:
        steps.append(
            {
                "name": "bad-ph",
                "action": "sns.publish",
                "params": {"topic_arn": "arn:{nope}", "message": "m"},
            }
        )
    elif kind == 5:
        detection = _mapping(d, "detection")
        detection["interval"], detection["staleness"] = "30s", "10s"
    else:
        first, second = steps[0].get("name", "a"), steps[-1].get("name", "b")
        steps[0]["after"] = [second]
        steps[-1]["after"] = [first]
        if first == second:
            steps[0]["after"] = [first]
    return d


DATA_MUTATIONS: list[Callable[[dict[str, Any], random.Random], dict[str, Any]]] = [
    _delete_required,
    _unknown_key,
    _wrong_type,
    _step_field,
    _signal_field,
    _cross_field,
]


def _duplicate_key(text: str, rng: random.Random) -> str:
    """A top-level key of the text written once more (whatever other mutations removed)."""
    keys = re.findall(r"^([A-Za-z_][\w-]*):", text, re.MULTILINE)
    return text + f"{rng.choice(keys)}: again\n" if keys else text + "a: 1\na: 2\n"


def _merge_key(text: str, rng: random.Random) -> str:
    return "base: &base {interval: 10s}\n" + text.replace(
        "detection:\n", "detection:\n  <<: *base\n", 1
    )


def _second_document(text: str, rng: random.Random) -> str:
    return text + "---\nservice: other\n"


def _tab(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    indented = [i for i, line in enumerate(lines) if line.startswith("  ")]
    i = rng.choice(indented)
    lines[i] = "\t" + lines[i].lstrip(" ")
    return "".join(lines)


def _non_string_key(text: str, rng: random.Random) -> str:
    return text + rng.choice(["1: one\n", "true: yes\n", "? [a, b]\n: c\n", "null: x\n"])


TEXT_MUTATIONS: list[Callable[[str, random.Random], str]] = [
    _duplicate_key,
    _merge_key,
    _second_document,
    _tab,
    _non_string_key,
]
MUTATIONS = len(DATA_MUTATIONS) + len(TEXT_MUTATIONS)


def mutate(base: dict[str, Any], choices: list[int], rng: random.Random) -> str:
    """``base`` with the mutations numbered ``choices`` (data ones first, then text ones)."""
    data = copy.deepcopy(base)
    data = data if isinstance(data, dict) else {}
    for i in [c for c in choices if c < len(DATA_MUTATIONS)]:
        data = DATA_MUTATIONS[i](data, rng)
    text = dump(data)
    for i in [c for c in choices if c >= len(DATA_MUTATIONS)]:
        text = TEXT_MUTATIONS[i - len(DATA_MUTATIONS)](text, rng)
    return text


# --- junk --------------------------------------------------------------------------------
_PUNCTUATION = "{}[]:,-?&*!|>'\"%@`#\n \t"


def junk(rng: random.Random, kind: int) -> bytes:
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
    if kind == 1:
        return "".join(rng.choice(_PUNCTUATION) for _ in range(rng.randrange(1, 500))).encode()
    if kind == 2:  # an example cut before its runbooks (which every example ends with)
        text = rng.choice(texts())
        return text[: rng.randrange(0, text.index("\nrunbooks:"))].encode()
    if kind == 3:  # an example with its bytes flipped here and there (often not UTF-8)
        raw = bytearray(rng.choice(texts()).encode())
        for _ in range(rng.randrange(1, 20)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        raw[rng.randrange(len(raw))] = 0xFF  # at least one byte that is never UTF-8
        return bytes(raw)
    if kind == 4:  # control characters where YAML allows none
        text = rng.choice(texts())
        at = rng.randrange(len(text))
        return (text[:at] + rng.choice("\x00\x07\x1b\x7f\ufffe") + text[at:]).encode()
    return rng.choice(["", "\n", "# nothing\n", "[]", "- a\n- b\n", "just words", "42"]).encode()


JUNK_KINDS = 6


# --- attacks -------------------------------------------------------------------------------
def bomb(levels: int, width: int = 9) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def attacks() -> list[Case]:
    limit = Limits()
    big = "service: big\nregions: [us-east-1, us-west-2]\n"
    cases = {
        "bomb-333-bytes": bomb(6),
        "bomb-4k": bomb(9, 20),
        "bomb-in-params": "service: s\nrunbooks:\n  failover:\n    - name: x\n      action: wait\n"
        "      params: {" + ", ".join(bomb(7).splitlines()) + "}\n",
        "recursive-alias": "service: &s [*s]\n",
        "recursive-mapping": "a: &a {b: *a}\n",
        "deep-lists": "service: " + "[" * 900 + "]" * 900 + "\n",
        "deep-mappings": "a: " + "{b: " * 200 + "1" + "}" * 200 + "\n",
        "too-many-keys": big + "".join(f"k{i}: {i}\n" for i in range(limit.max_nodes + 10)),
        "too-many-items": big + "signals: [" + "1, " * (limit.max_nodes + 10) + "1]\n",
        "over-size": "# " + "x" * limit.max_bytes + "\n",
        "long-scalar": big + "description: " + "a" * (limit.max_bytes - 200) + "\n",
        "digits-5000": big + "rto: " + "9" * 5000 + "\n",
        "hex-digits": big + "rpo: 0x" + "f" * 3000 + "\n",
        "sexagesimal": big + "rpo: 1" + ":5" * 10000 + "\n",
        "century": dump({**examples()[0], "rto": "36500d"}),
        "float-inf": dump(examples()[0]).replace("rpo:", "rpo: .inf\nx_rpo:", 1),
        "python-tag": "service: !!python/object/apply:os.system [id]\n",
        "binary-tag": "service: !!binary aGVsbG8=\n",
        "many-errors": "".join(f"service: {i}\n" for i in range(2000)),
        "many-anchors": "".join(f"a{i}: &x{i} {i}\n" for i in range(3000))
        + "b: ["
        + ", ".join(f"*x{i}" for i in range(3000))
        + "]\n",
    }
    return [Case(f"attack-{name}", text.encode()) for name, text in cases.items()]


def corpus(seed: int, structural: int, junk_count: int) -> list[Case]:
    """The attacks, ``structural`` mutated examples and ``junk_count`` junk files."""
    rng = random.Random(seed)
    bases = examples()
    out = attacks()
    for i in range(structural):
        choices = rng.sample(range(MUTATIONS), rng.randint(1, 3))
        text = mutate(rng.choice(bases), choices, rng)
        out.append(Case(f"structural-{'+'.join(map(str, sorted(choices)))}-{i}", text.encode()))
    for i in range(junk_count):
        kind = rng.randrange(JUNK_KINDS)
        out.append(Case(f"junk-{kind}-{i}", junk(rng, kind)))
    return out

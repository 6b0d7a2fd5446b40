"""Durations as policy authors write them: ``30s``, ``5m``, ``1h``, ``1m30s``, ``250ms``.

Inside the program a duration is a float number of seconds (base units, cheap to compare in
the engine's hot path); on the way out it is formatted back into the same notation.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, ValidationInfo, WithJsonSchema

_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
# Units largest first, each at most once: `1m30s`, not `30s1m` or `1h1h`.
DURATION_PATTERN = r"^(?=\d)(\d+d)?(\d+h)?(\d+m(?!s))?(\d+s)?(\d+ms)?$"
_WHOLE = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_HINT = "a duration such as 500ms, 30s, 5m, 1h or 1m30s"
# No setting or policy field means more than a year; beyond it a typo (`30000000d`) would
# become a timer that never fires, or a number too large to convert.
MAX_DURATION = 366 * 86400.0
MAX_DURATION_TEXT = "366d"


class DurationError(ValueError):
    """A string that is not a duration."""


def parse_duration(value: object) -> float:
    """Parse ``1m30s`` into 90.0 seconds; raise :class:`DurationError` with a hint otherwise."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise DurationError(f"expected {DURATION_HINT} (a string with a unit), got {value!r}")
    text = value
    if len(text) > 64 or not _WHOLE.match(text):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise DurationError(f"expected {DURATION_HINT}, got {shown!r}")
    parts = _PART.findall(text)
    if any(len(n) > 12 for n, _ in parts):
        raise DurationError(f"{text[:40]!r} is longer than {MAX_DURATION_TEXT}")
    return _bounded(sum(int(n) * _UNIT_SECONDS[unit] for n, unit in parts), text)


def _bounded(seconds: float, shown: object) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise DurationError(f"{shown!r} is longer than {MAX_DURATION_TEXT}, the longest allowed")
    return seconds


def format_duration(seconds: float) -> str:
    """Format seconds the way they are written in policies: ``90.0`` -> ``1m30s``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    total_ms = round(seconds * 1000)
    if total_ms == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, total_ms = divmod(total_ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def _validate(value: Any, info: ValidationInfo) -> float:
    context = info.context or {}
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not context.get(FROM_FILE)
    ):
        # Models built in Python (defaults, tests) pass seconds; files must name a unit.
        return _bounded(float(value), value)
    return parse_duration(value)


FROM_FILE = "from_file"
"""Validation context key: set when data comes from a file, where numbers are rejected."""

Duration = Annotated[
    float,
    BeforeValidator(_validate),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "5m"]}),
]
"""A pydantic field type: written as ``30s``, held as seconds (float)."""

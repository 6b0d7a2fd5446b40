"""Durations as policy authors write them (``30s``, ``5m``, ``1h``), held as float seconds."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from orchestrator.policy.durations import (
    DURATION_PATTERN,
    FROM_FILE,
    MAX_DURATION,
    MAX_DURATION_TEXT,
    Duration,
    DurationError,
    format_duration,
    parse_duration,
)

HINT_WORDS = ("500ms", "30s", "5m", "1h", "1m30s")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1d", 86400.0),
        ("0s", 0.0),
        ("1h30m15s", 5415.0),
        ("2m500ms", 120.5),
    ],
)
def test_parses_policy_notation_into_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["30", "5 m", "-5s", "", "1.5s", "30S", "5min", "s", "m30s", "30 s"],
)
def test_rejects_strings_that_are_not_durations_naming_the_expected_format(value: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(value)
    message = str(info.value)
    for word in HINT_WORDS:
        assert word in message
    assert repr(value) in message, "the message should quote what was written"


@pytest.mark.parametrize("value", [30, 0, 1.5, None, True, ["30s"]])
def test_rejects_non_strings_asking_for_a_unit(value: object) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(value)
    message = str(info.value)
    assert "a string with a unit" in message
    assert "30s" in message
    assert repr(value) in message


@pytest.mark.parametrize("value", ["367d", "8800h", "99999999999999d", "1" * 5000 + "s", "1d" * 40])
def test_durations_longer_than_a_year_or_absurdly_written_are_refused(value: str) -> None:
    # Unbounded, `99999999999999d` made a timer that never fires, and 5,000 digits an
    # exception that was not a DurationError.
    with pytest.raises(DurationError) as info:
        parse_duration(value)
    assert len(str(info.value)) < 200


def test_a_year_is_the_longest_duration() -> None:
    assert parse_duration(MAX_DURATION_TEXT) == MAX_DURATION == parse_duration("366d")


def test_seconds_given_in_python_are_bounded_too() -> None:
    class Model(BaseModel):
        d: Duration

    assert Model(d=60).d == 60.0
    for bad in (MAX_DURATION + 1, float("inf"), float("nan")):
        with pytest.raises(ValidationError):
            Model(d=bad)


def test_duration_error_is_a_value_error() -> None:
    # pydantic turns ValueError raised in validators into a located validation error.
    assert issubclass(DurationError, ValueError)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (90.0, "1m30s"),
        (0.5, "500ms"),
        (0.0, "0s"),
        (3600.0, "1h"),
        (3661.5, "1h1m1s500ms"),
        (30.0, "30s"),
        (86400.0, "24h"),
        (-5.0, "-5s"),
    ],
)
def test_formats_seconds_in_policy_notation(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["500ms", "30s", "5m", "1h", "1m30s", "2h15m", "1h1m1s1ms"])
def test_canonical_durations_round_trip_unchanged(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize("text", ["1d", "90s", "120m", "1500ms", "0m"])
def test_non_canonical_durations_round_trip_to_the_same_value(text: str) -> None:
    assert parse_duration(format_duration(parse_duration(text))) == pytest.approx(
        parse_duration(text)
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10 * 86_400_000))
def test_any_whole_millisecond_value_round_trips(ms: int) -> None:
    text = format_duration(ms / 1000)
    assert re.fullmatch(DURATION_PATTERN, text), text
    assert round(parse_duration(text) * 1000) == ms


@pytest.mark.parametrize(
    "text", ["500ms", "30s", "5m", "1h", "1m30s", "1d", "30", "5 m", "-5s", "", "1.5s", "30S"]
)
def test_schema_pattern_accepts_exactly_what_the_parser_accepts(text: str) -> None:
    # The JSON Schema (editors) and the loader must agree on what a duration is.
    try:
        parse_duration(text)
        parsed = True
    except DurationError:
        parsed = False
    assert bool(re.fullmatch(DURATION_PATTERN, text)) is parsed


class _Timed(BaseModel):
    every: Duration


def test_pydantic_field_reads_notation_and_writes_it_back() -> None:
    model = _Timed.model_validate({"every": "1m30s"})
    assert model.every == 90.0
    assert model.model_dump(mode="json") == {"every": "1m30s"}
    assert _Timed.model_validate(model.model_dump(mode="json")) == model


def test_pydantic_field_rejects_a_bare_number_from_a_file_with_the_hint() -> None:
    with pytest.raises(ValidationError) as info:
        _Timed.model_validate({"every": 30}, context={FROM_FILE: True})
    (error,) = info.value.errors()
    assert error["loc"] == ("every",)
    assert "a string with a unit" in error["msg"]


def test_models_built_in_python_take_seconds() -> None:
    # Defaults and programmatic construction pass seconds; only files must name a unit.
    assert _Timed(every=30).every == 30.0
    assert _Timed.model_validate({"every": 2.5}).every == 2.5


def test_json_schema_of_a_duration_is_a_patterned_string() -> None:
    schema = _Timed.model_json_schema()["properties"]["every"]
    assert schema["type"] == "string"
    assert schema["pattern"] == DURATION_PATTERN

"""YAML loading that remembers the line and column of every value, so errors name file:line."""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path

import pytest

from orchestrator.policy.yamlsource import (
    Limits,
    LoadedYaml,
    SourceError,
    SourceErrors,
    format_path,
    load_yaml_file,
    load_yaml_text,
)

from .conftest import ROOT, where

NESTED = """\
# a comment line
service: shop
detection:
  interval: 10s
  quorum: 2
signals:
  - name: api
    type: http
    target: https://api.example.com
  - name: db
    type: tcp
    vantage: [local, agent-eu]
replication:
  sources:
    us-west-2: {type: rds_replica_lag, db_instance: db-usw2}
"""


def _errors(text: str, file: str = "p.yaml") -> list[SourceError]:
    with pytest.raises(SourceErrors) as info:
        load_yaml_text(text, file)
    return info.value.errors


@pytest.fixture
def nested() -> LoadedYaml:
    return load_yaml_text(NESTED, "p.yaml")


def test_builds_plain_data(nested: LoadedYaml) -> None:
    assert nested.data["detection"] == {"interval": "10s", "quorum": 2}
    assert nested.data["signals"][1]["vantage"] == ["local", "agent-eu"]
    assert nested.text == NESTED
    assert nested.file == "p.yaml"


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        (("service",), r"^(service):"),
        (("detection", "quorum"), r"^  (quorum): 2"),
        (("signals", 0), r"^  - (name): api"),
        (("signals", 0, "target"), r"^    (target):"),
        (("signals", 1), r"^  - (name): db"),
        (("signals", 1, "type"), r"^    (type): tcp"),
        (("signals", 1, "vantage", 1), r"(agent-eu)\]"),
        (("replication", "sources", "us-west-2", "db_instance"), r"(db_instance):"),
    ],
)
def test_locates_nested_keys_list_items_and_flow_values(
    nested: LoadedYaml, path: tuple[str | int, ...], pattern: str
) -> None:
    assert nested.locate(path) == where(NESTED, pattern)


def test_a_key_holding_a_nested_block_is_located_at_the_key_not_the_block(
    nested: LoadedYaml,
) -> None:
    # An error about `detection` must point at `detection:`, not at its first child.
    assert nested.locate(("detection",)) == where(NESTED, r"^(detection):")
    assert nested.locate(("signals",)) == where(NESTED, r"^(signals):")


def test_locate_skips_segments_pydantic_adds_such_as_union_tags(nested: LoadedYaml) -> None:
    # pydantic reports ("signals", 0, "http", "target") for a field of a tagged union member.
    assert nested.locate(("signals", 0, "http", "target")) == where(NESTED, r"^    (target):")
    assert nested.locate(
        ("replication", "sources", "us-west-2", "rds_replica_lag", "db_instance")
    ) == where(NESTED, r"(db_instance):")


def test_locate_of_a_missing_key_falls_back_to_its_deepest_present_parent(
    nested: LoadedYaml,
) -> None:
    assert nested.locate(("detection", "staleness")) == where(NESTED, r"^(detection):")
    assert nested.locate(("signals", 1, "tcp", "timeout")) == where(NESTED, r"^  - (name): db")
    assert nested.locate(("nothing", "here")) == nested.locate(())


def test_data_path_drops_tag_segments_and_keeps_a_missing_last_key(nested: LoadedYaml) -> None:
    assert nested.data_path(("signals", 0, "http", "target")) == ("signals", 0, "target")
    assert nested.data_path(("signals", 1, "tcp", "timeout")) == ("signals", 1, "timeout")
    assert nested.data_path(("detection", "staleness")) == ("detection", "staleness")
    assert nested.data_path(()) == ()


def test_error_combines_location_and_data_path(nested: LoadedYaml) -> None:
    error = nested.error(("signals", 0, "http", "target"), "bad target")
    line, column = where(NESTED, r"^    (target):")
    assert error == SourceError("p.yaml", line, column, "signals[0].target", "bad target")


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("service",), "service"),
        (("signals", 0, "name"), "signals[0].name"),
        (("runbooks", "failover", 2, "after", 0), "runbooks.failover[2].after[0]"),
        ((0,), "[0]"),
        ((), ""),
    ],
)
def test_format_path(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text


def test_source_error_prints_as_file_line_column_path_message() -> None:
    assert str(SourceError("a.yaml", 3, 5, "rto", "bad")) == "a.yaml:3:5: rto: bad"
    assert str(SourceError("a.yaml", 3, 5, "", "bad")) == "a.yaml:3:5: bad"
    # No line known (an unreadable file): the file alone.
    assert str(SourceError("a.yaml", 0, 0, "", "cannot read")) == "a.yaml: cannot read"


def test_source_errors_carries_every_error_and_prints_them_all() -> None:
    errors = [SourceError("a.yaml", 1, 1, "x", "one"), SourceError("b.yaml", 2, 1, "", "two")]
    exc = SourceErrors(errors)
    assert exc.errors == errors
    assert str(exc).splitlines() == ["a.yaml:1:1: x: one", "b.yaml:2:1: two"]


# ---------------------------------------------------------------------------------------
# Duplicate and non-string keys


def test_duplicate_top_level_key_is_an_error_at_the_second_key() -> None:
    text = "service: a\nrto: 5m\nservice: b\n"
    (error,) = _errors(text)
    assert (error.line, error.column) == where(text, r"^(service): b")
    assert error.path == "service"
    assert error.message == "duplicate key 'service'"


def test_duplicate_nested_key_is_an_error_at_the_second_key() -> None:
    text = "detection:\n  interval: 10s\n  quorum: 2\n  interval: 20s\n"
    (error,) = _errors(text, "x.yaml")
    assert error.file == "x.yaml"
    assert (error.line, error.column) == where(text, r"^  (interval): 20s")
    assert error.path == "detection.interval"
    assert "duplicate key 'interval'" in error.message


def test_duplicate_key_inside_a_list_item() -> None:
    text = "signals:\n  - name: a\n    type: http\n  - name: b\n    name: c\n"
    (error,) = _errors(text)
    assert (error.line, error.column) == where(text, r"^    (name): c")
    assert error.path == "signals[1].name"


def test_every_duplicate_key_is_reported() -> None:
    text = "a: 1\nb:\n  c: 1\n  c: 2\na: 3\n"
    errors = _errors(text)
    assert [(e.path, e.line) for e in errors] == [
        ("b.c", where(text, r"^  (c): 2")[0]),
        ("a", where(text, r"^(a): 3")[0]),
    ]


@pytest.mark.parametrize(("key", "shown"), [("1", "1"), ("true", "True"), ("2.5", "2.5")])
def test_non_string_keys_are_errors(key: str, shown: str) -> None:
    text = f"detection:\n  interval: 10s\n  {key}: x\n"
    (error,) = _errors(text)
    assert (error.line, error.column) == where(text, rf"^  ({key}): x")
    assert error.path == "detection"
    assert error.message == f"key {shown} must be a string (quote it)"


def test_non_scalar_key_message_describes_the_key() -> None:
    text = "detection:\n  ? [a, b]\n  : 1\n"
    (error,) = _errors(text)
    assert error.line == 2
    assert error.message == "a list cannot be a key; keys are plain strings"


def test_merge_keys_are_rejected() -> None:
    text = "base: &b {interval: 10s}\ndetection:\n  <<: *b\n"
    (error,) = _errors(text)
    assert error.path == "detection"
    assert (error.line, error.column) == where(text, r"^  (<<):")
    assert "merge keys (<<) are not supported" in error.message


def test_merge_key_error_points_at_the_merge_key() -> None:
    text = "base: &b {interval: 10s}\ndetection:\n  quorum: 2\n  <<: *b\n"
    (error,) = _errors(text)
    assert (error.line, error.column) == where(text, r"^  (<<):")


# ---------------------------------------------------------------------------------------
# Invalid, empty and unreadable input


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ("service: a\nrto: b: c\n", (2, 7)),  # mapping values are not allowed here
        ("service: a\ndetection:\n\tinterval: 10s\n", (3, 1)),  # a tab indents
        ("service: a\nregions: [us-east-1\nrto: 5m\n", (3, 4)),  # unclosed flow sequence
        ("service: a\n---\nservice: b\n", (2, 1)),  # a second document
    ],
)
def test_invalid_yaml_reports_the_line(text: str, location: tuple[int, int]) -> None:
    (error,) = _errors(text, "bad.yaml")
    assert (error.file, error.line, error.column) == ("bad.yaml", *location)
    assert error.message.startswith("invalid YAML: ")
    assert error.path == ""


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_an_error_asking_for_a_mapping(text: str) -> None:
    (error,) = _errors(text, "empty.yaml")
    assert (error.file, error.line) == ("empty.yaml", 1)
    assert "empty" in error.message
    assert "mapping" in error.message


def test_anchors_and_aliases_resolve_to_the_same_values() -> None:
    loaded = load_yaml_text("a: &x [1, 2]\nb: *x\n", "p.yaml")
    assert loaded.data == {"a": [1, 2], "b": [1, 2]}


def test_load_yaml_file_reads_the_file_and_names_it(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("service: shop\nrto: 5m\n", encoding="utf-8")
    loaded = load_yaml_file(f)
    assert (loaded.file, loaded.data) == (str(f), {"service": "shop", "rto": "5m"})
    assert loaded.locate(("rto",)) == (2, 1)


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("service: shop\nservice: shop\n", encoding="utf-8")
    (error,) = _errors_of_file(f)
    assert (error.file, error.line, error.column) == (str(f), 2, 1)


def test_missing_file_cannot_be_read(tmp_path: Path) -> None:
    f = tmp_path / "absent.yaml"
    (error,) = _errors_of_file(f)
    assert (error.file, error.line) == (str(f), 0)
    assert "cannot read" in error.message


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("service: caf\xe9\n".encode("latin-1"))
    (error,) = _errors_of_file(f)
    assert error.file == str(f)
    assert "not UTF-8" in error.message


def _errors_of_file(path: Path) -> list[SourceError]:
    with pytest.raises(SourceErrors) as info:
        load_yaml_file(path)
    return info.value.errors


# ---------------------------------------------------------------------------------------
# Hostile input: whatever a file holds, the answer is data or located errors, quickly.


def _bomb(levels: int) -> str:
    """A billion-laughs file: each level lists the one above nine times (9**levels values)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_integer_of_5000_digits_is_a_located_error() -> None:
    text = "service: shop\nrto: " + "1" * 5000 + "\n"
    (error,) = _errors(text)
    assert (error.line, error.column, error.path) == (2, 6, "rto")
    assert "too many digits" in error.message


def test_a_hexadecimal_integer_beyond_64_bits_is_a_located_error() -> None:
    # Python converts any hex length, but repr() of it fails past 4300 digits.
    (error,) = _errors("retries: 0x" + "f" * 20 + "\n")
    assert (error.line, error.path) == (1, "retries")
    assert "64-bit" in error.message


def test_a_recursive_alias_is_a_located_error() -> None:
    (error,) = _errors("service: &s [*s]\n")
    assert (error.line, error.column) == (1, 14)
    assert error.message == "recursive alias: *s is inside &s"


def test_an_alias_bomb_is_refused_by_the_value_budget() -> None:
    text = _bomb(6)  # 333 bytes, 531,441 values once expanded
    assert len(text) < 400
    (error,) = _errors(text)
    assert error.line == 5  # where the budget ran out, not at the end of the expansion
    assert "more than 20000 values" in error.message


def test_aliases_within_the_budget_still_work() -> None:
    loaded = load_yaml_text(_bomb(3), "p.yaml")  # 9**3 = 729 values
    assert len(loaded.data["l2"]) == 9 and loaded.data["l2"][0][0] == ["x"] * 9


def test_an_alias_to_an_unknown_anchor_and_a_reused_anchor_are_errors() -> None:
    (error,) = _errors("a: *nowhere\n")
    assert (error.line, error.column, error.path) == (1, 4, "a")
    assert "names no anchor" in error.message
    (error,) = _errors("a: &x 1\nb: &x 2\n")
    assert (error.line, error.path) == (2, "b")
    assert "duplicate anchor &x" in error.message


def test_deep_nesting_is_refused_at_the_depth_limit() -> None:
    text = "a: " + "[" * 200 + "]" * 200 + "\n"
    (error,) = _errors(text)
    assert error.line == 1
    assert "nested deeper than 64 levels" in error.message


def test_a_limit_may_be_lowered_per_load() -> None:
    with pytest.raises(SourceErrors) as info:
        load_yaml_text("a: [1, 2, 3, 4]\n", "p.yaml", Limits(max_nodes=4))
    assert "more than 4 values" in info.value.errors[0].message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("!!python/object/apply:os.system [id]", "unsupported YAML tag 'python/object"),
        ("!!binary aGVsbG8=", "unsupported YAML tag 'binary'"),
        ("!custom x", "unsupported YAML tag '!custom'"),
        ("!!float abc", "cannot read 'abc' as float"),
        ("!!int abc", "cannot read 'abc' as int"),
        ("!!bool maybe", "cannot read 'maybe' as bool"),
        (".nan", "not a finite number"),
        ("-.inf", "not a finite number"),
    ],
)
def test_values_that_are_not_plain_data_are_located_errors(value: str, words: str) -> None:
    (error,) = _errors(f"service: shop\ndescription: {value}\n")
    assert (error.line, error.column, error.path) == (2, 14, "description")
    assert words in error.message


def test_dates_stay_the_text_written() -> None:
    # No field takes a date; a timestamp must not become a datetime that no field accepts
    # (nor an invalid one, `2001-13-45`, an exception).
    loaded = load_yaml_text("a: 2001-12-14\nb: !!timestamp 2001-13-45\n", "p.yaml")
    assert loaded.data == {"a": "2001-12-14", "b": "2001-13-45"}


def test_invalid_characters_are_located() -> None:
    (error,) = _errors("service: shop\nrto: 5m\x07\n")
    assert (error.line, error.column) == (2, 8)
    assert error.message == "invalid YAML: control characters are not allowed"


def test_a_file_over_the_size_limit_is_refused_without_parsing(tmp_path: Path) -> None:
    f = tmp_path / "huge.yaml"
    f.write_bytes(b"# " + b"x" * Limits().max_bytes + b"\n")
    (error,) = _errors_of_file(f)
    assert error.file == str(f)
    assert "too large" in error.message and str(Limits().max_bytes) in error.message


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer comes: the loader must not open it.
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    (error,) = _errors_of_file(fifo)
    assert error.message == "not a regular file"


def test_a_flood_of_errors_is_capped_with_a_count() -> None:
    text = "a: 1\n" + "a: 2\n" * 500
    errors = _errors(text)
    assert len(errors) == Limits().max_errors + 1
    assert errors[-1].message == f"... and {500 - Limits().max_errors} more error(s)"


def test_loading_keeps_nothing_alive_between_loads() -> None:
    # PyYAML's constructor remembers every node it built; one shared across loads kept every
    # scalar of every reload (+13.5 MB over 200 reloads of the example policies).
    text = (ROOT / "policies" / "ledger" / "ledger.yaml").read_text(encoding="utf-8")
    load_yaml_text(text, "p.yaml")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(50):
            load_yaml_text(text, "p.yaml")
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 256 * 1024, f"{grown} bytes kept after 50 loads"

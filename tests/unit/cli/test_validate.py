"""`failoverd validate` and `failoverd schema`, run in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.cli.main import EXIT_FAILED, EXIT_OK, EXIT_UNUSABLE, main
from orchestrator.policy.schema import policy_schema_text
from tests.fixtures.daemon import failoverd

ROOT = Path(__file__).resolve().parents[3]
ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<msg>.+)$")

# A small valid policy (independent of the examples, which change as they are improved).
POLICY = """\
service: shop
regions: [us-east-1, us-west-2]
rto: 15m
rpo: 1m
vantage_points: [local, agent-eu]
detection:
  interval: 10s
  quorum: 2
  staleness: 45s
signals:
  - name: api
    type: http
    target: https://api.{region}.example.com/healthz
replication:
  sources:
    us-west-2: {type: rds_replica_lag, db_instance: db-usw2}
runbooks:
  failover:
    - name: promote
      action: rds.promote_read_replica
      params: {db_instance: db-usw2}
"""


def _policy(tmp_path: Path, name: str = "shop.yaml", **replace: tuple[str, str]) -> Path:
    """POLICY written into tmp_path with textual edits (keyword=(old, new))."""
    text = POLICY
    for old, new in replace.values():
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(path: Path, line_text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines.count(line_text) == 1, line_text
    return lines.index(line_text) + 1


def test_valid_policies_exit_0_with_the_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _policy(tmp_path)
    _policy(tmp_path, "other.yaml", svc=("service: shop", "service: other"))
    assert main(["validate", str(tmp_path)]) == EXIT_OK
    out, err = capsys.readouterr()
    match = re.fullmatch(
        r"2 policy file\(s\) valid \(other, shop\); policy set version"
        r" (?P<v>[0-9a-f]{12}(\+g[0-9a-f]{10})?)\n",
        out,
    )
    assert match, out
    assert err == ""


def test_the_example_policies_validate_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # `failoverd validate` with no path reads ./policies
    assert main(["validate"]) == EXIT_OK
    out = capsys.readouterr().out
    match = re.search(
        r"^(\d+) policy file\(s\) valid \((.+)\); policy set version [0-9a-f]{12}\S*$",
        out,
        re.MULTILINE,
    )
    assert match, out
    # Besides: a warning for each failover step that is not statically stable.
    others = [line for line in out.splitlines() if line != match[0]]
    assert all(": warning: " in line or line.endswith("not statically stable") for line in others)
    names = match[2].split(", ")
    assert "webapp" in names
    assert int(match[1]) == len(names)


def test_invalid_policies_exit_1_printing_every_error_with_file_line_and_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two files: one with two cross-field errors, one with a field error.
    rules = _policy(
        tmp_path,
        "a.yaml",
        quorum=("  quorum: 2", "  quorum: 3"),
        stale=("  staleness: 45s", "  staleness: 10s"),
    )
    field = _policy(
        tmp_path,
        "b.yaml",
        svc=("service: shop", "service: other"),
        rto=("rto: 15m", "rto: 15"),
    )
    assert main(["validate", str(tmp_path)]) == EXIT_FAILED
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "3 error(s)"
    errors = [ERROR_LINE.match(line) for line in out[:-1]]
    assert all(errors), out
    found = {(m["file"], int(m["line"]), int(m["col"]), m["path"]): m["msg"] for m in errors if m}
    assert sorted(found) == [
        (str(rules), _line_of(rules, "  quorum: 3"), 3, "detection.quorum"),
        (str(rules), _line_of(rules, "  staleness: 10s"), 3, "detection.staleness"),
        (str(field), _line_of(field, "rto: 15"), 1, "rto"),
    ]
    messages = {key[3]: msg for key, msg in found.items()}
    assert "quorum 3 is larger than the 2 vantage point(s)" in messages["detection.quorum"]
    assert "must be longer than the interval" in messages["detection.staleness"]
    assert "expected a duration such as 500ms, 30s, 5m" in messages["rto"]


def test_invalid_yaml_is_reported_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: x\nservice: y\n", encoding="utf-8")
    assert main(["validate", str(bad)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert out == f"{bad}:2:1: service: duplicate key 'service'\n1 error(s)\n"


def test_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _policy(tmp_path)
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(tmp_path), str(missing)]) == EXIT_UNUSABLE
    out, err = capsys.readouterr()
    assert out == ""
    assert str(missing) in err
    assert "no such file or folder" in err


def test_folder_without_policies_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path)]) == EXIT_FAILED
    assert "no policy files" in capsys.readouterr().out


def test_schema_to_a_file_writes_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "schema.json"
    assert main(["schema", "-o", str(target)]) == EXIT_OK
    assert capsys.readouterr().out == ""
    text = target.read_text(encoding="utf-8")
    assert text == policy_schema_text()
    assert json.loads(text)["title"] == "failoverd policy"


def test_schema_to_stdout_is_the_same_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == EXIT_OK
    assert capsys.readouterr().out == policy_schema_text()


def test_schema_written_by_the_cli_matches_the_committed_file(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    main(["schema", "--output", str(target)])
    committed = (ROOT / "policies" / "schema.json").read_text(encoding="utf-8")
    assert target.read_text(encoding="utf-8") == committed, "run `make schema`"


def test_field_and_cross_field_errors_of_one_file_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _policy(
        tmp_path,
        typo=("      action: rds.promote_read_replica", "      acton: rds.promote_read_replica"),
        quorum=("  quorum: 2", "  quorum: 3"),
    )
    assert main(["validate", str(path)]) == EXIT_FAILED
    out = capsys.readouterr().out.splitlines()
    paths = [m["path"] for m in map(ERROR_LINE.match, out[:-1]) if m]
    assert paths == [
        "detection.quorum",
        "runbooks.failover[0].action",
        "runbooks.failover[0].acton",
    ]


HOSTILE = {
    "digits.yaml": "service: shop\nrto: " + "9" * 5000 + "\n",
    "recursive.yaml": "service: &s [*s]\n",
    "bomb.yaml": "a: &a [x,x,x,x,x,x,x,x,x]\n"
    + "".join(
        f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n"
        for p, n in zip("abcdef", "bcdefg", strict=True)
    ),
    "deep.yaml": "service: " + "[" * 500 + "]" * 500 + "\n",
    "tags.yaml": "service: !!python/object/apply:os.system [id]\nrto: !!binary aGk=\n",
    "nan.yaml": POLICY.replace("rpo: 1m", "rpo: .nan"),
    "duration.yaml": POLICY.replace("rto: 15m", "rto: 99999999999999999999d"),
    "control.yaml": "service: shop\x00\n",
    "latin1.yaml": "service: caf\xe9\n",
}


def test_validate_answers_hostile_files_with_located_errors_never_a_traceback(
    tmp_path: Path,
) -> None:
    for name, text in HOSTILE.items():
        data = text.encode("latin-1") if name == "latin1.yaml" else text.encode()
        (tmp_path / name).write_bytes(data)
    result = failoverd("validate", str(tmp_path))
    assert result.returncode == EXIT_FAILED, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    located = re.compile(r"^(?P<file>\S+?):(?P<line>\d+):(?P<col>\d+): ")
    files = {Path(m["file"]).name for m in map(located.match, result.stdout.splitlines()) if m}
    assert files == set(HOSTILE), result.stdout

"""Secret files (the API token, the etcd and broker passwords, webhook keys): read only when
they are the owner's alone, CRLF and a byte-order mark handled, and every problem a clear
error naming the file (never its content); at start, a clear exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from orchestrator.actions.base import ActionFailed
from orchestrator.actions.webhook import read_secret
from orchestrator.daemon.main import Daemon
from orchestrator.daemon.main import load_settings as load_daemon_settings
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.settings import (
    MAX_SECRET_FILE,
    SettingsError,
    load_settings,
    read_secret_file,
    read_secret_text,
)
from orchestrator.signals.mqtt_agents import BrokerConfig, BrokerConfigError
from orchestrator.telemetry import REDACTED, redact_text
from tests.fixtures.daemon import failoverd
from tests.fixtures.secrets import write_secret

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o666, 0o620, 0o602])
def test_a_file_group_or_others_may_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "token", SECRET + "\n")
    path.chmod(mode)
    with pytest.raises(SettingsError) as info:
        read_secret_file(path, "http.token_file")
    message = str(info.value)
    assert message.startswith(f"http.token_file {path}: group or others may access it")
    assert f"{mode:04o}" in message and f"chmod 600 {path}" in message
    assert SECRET not in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_the_owners_alone_is_read(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "token", SECRET + "\n")
    path.chmod(mode)
    assert read_secret_file(path, "t") == SECRET


@pytest.mark.parametrize(
    "content",
    [f"{SECRET}\r\n", f"{SECRET}\r\nsecond\r\n", f"\ufeff{SECRET}\n", f"  {SECRET}  ", SECRET],
)
def test_line_endings_a_bom_and_blanks_are_not_part_of_the_secret(
    tmp_path: Path, content: str
) -> None:
    assert read_secret_file(write_secret(tmp_path / "s", content), "t") == SECRET


def test_the_whole_text_for_files_of_several_lines(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "tokens", "ops:abc\r\nci:def\r\n")
    assert read_secret_text(path, "t") == "ops:abc\nci:def\n"


@pytest.mark.parametrize(
    ("content", "words"),
    [("", "is empty"), ("\r\n\r\n", "is empty"), ("\nsecond\n", "the first line is empty")],
)
def test_an_empty_file_or_first_line_is_an_error(tmp_path: Path, content: str, words: str) -> None:
    path = write_secret(tmp_path / "s", content)
    with pytest.raises(SettingsError, match=words):
        read_secret_file(path, "t")


def test_missing_unreadable_and_odd_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="No such file"):
        read_secret_file(tmp_path / "absent", "t")
    folder = tmp_path / "folder"
    folder.mkdir(mode=0o700)
    with pytest.raises(SettingsError, match="not a regular file"):
        read_secret_file(folder, "t")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SettingsError, match="not a regular file"):
        read_secret_file(fifo, "t")  # never opened: reading a FIFO would block
    huge = write_secret(tmp_path / "huge", "x" * (MAX_SECRET_FILE + 1))
    with pytest.raises(SettingsError, match="larger than"):
        read_secret_file(huge, "t")
    latin = write_secret(tmp_path / "latin", "")
    latin.write_bytes(b"caf\xe9\n")
    with pytest.raises(SettingsError, match="not UTF-8"):
        read_secret_file(latin, "t")


def test_the_broker_password_follows_the_same_rules(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "mqtt-password", SECRET + "\r\n")
    broker = BrokerConfig.from_url("mqtt://127.0.0.1", username="u", password_file=path)
    assert broker.password() == SECRET
    path.chmod(0o644)
    with pytest.raises(BrokerConfigError, match="group or others may access it"):
        broker.check()


def test_the_webhook_key_follows_the_same_rules(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "hook-key", SECRET + "\r\n")
    assert read_secret(str(path)) == SECRET.encode()
    path.chmod(0o604)
    with pytest.raises(ActionFailed, match="group or others may access it"):
        read_secret(str(path))


def test_an_etcd_password_is_only_sent_over_https(tmp_path: Path) -> None:
    password = write_secret(tmp_path / "pw", SECRET)
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        "state:\n  backend: etcd\n  etcd:\n"
        "    endpoints: [https://etcd-a:2379, http://etcd-b:2379]\n"
        f"    username: failoverd\n    password_file: {password}\n"
    )
    with pytest.raises(SourceErrors) as info:
        load_settings(config, {})
    (error,) = info.value.errors
    assert error.path == "state.etcd" and "http://etcd-b:2379" in error.message
    assert "only over https://" in error.message


def _config(tmp_path: Path, token: Path) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    config = tmp_path / "failoverd.yaml"
    config.write_text(
        f"policies: [{policies}]\nstate: {{path: {tmp_path / 'state.db'}}}\n"
        f"http: {{port: 0, token_file: {token}}}\nlog: {{format: json}}\n"
    )
    return config


def test_the_daemon_exits_2_naming_a_token_file_others_may_read(tmp_path: Path) -> None:
    token = write_secret(tmp_path / "token", SECRET)
    token.chmod(0o644)
    result = failoverd("run", "--config", str(_config(tmp_path, token)))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if "daemon_not_started" in ln]
    assert f"http.token_file {token}: group or others may access it" in line
    assert SECRET not in result.stderr
    assert not (tmp_path / "state.db").exists()  # nothing was started


@pytest.mark.parametrize(("content", "words"), [("", "is empty"), (None, "No such file")])
async def test_an_empty_or_missing_token_file_stops_the_start(
    tmp_path: Path, content: str | None, words: str
) -> None:
    token = tmp_path / "token"
    if content is not None:
        write_secret(token, content)
    daemon = Daemon(load_daemon_settings(str(_config(tmp_path, token)), {}))
    with capture_logs() as logs:
        assert await daemon.run() == 2
    (event,) = [e for e in logs if e["event"] == "daemon_not_started"]
    assert event["why"].startswith(f"http.token_file {token}") and words in event["why"]
    assert not (tmp_path / "state.db").exists()


def test_what_a_secret_file_holds_is_redacted_from_every_log_line(tmp_path: Path) -> None:
    token = "pasted-into-a-reason-Zx81"
    read_secret_file(write_secret(tmp_path / "token", f"ops:{token}\n"), "t")
    assert redact_text(f"reason: why not {token}?") == f"reason: why not {REDACTED}?"
    assert redact_text("ops: short words stay") == "ops: short words stay"

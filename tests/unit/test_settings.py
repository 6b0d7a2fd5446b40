"""Daemon settings: file + FAILOVERD_* environment, located errors, secrets kept out."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from orchestrator import settings as settings_module
from orchestrator.policy.yamlsource import SourceErrors
from orchestrator.settings import (
    Settings,
    SettingsError,
    load_settings,
    policy_paths_from_env,
    settings_reference,
)
from tests.fixtures.secrets import write_secret

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "failoverd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def messages(exc: pytest.ExceptionInfo[SourceErrors]) -> list[str]:
    return [str(e) for e in exc.value.errors]


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG", tmp_path / "absent.yaml")
    s = load_settings(None, {})
    assert s.node_id == socket.gethostname()
    assert s.policies == [Path("/etc/failoverd/policies")]
    assert (s.http.bind, s.http.port, s.http.token_file) == ("127.0.0.1", 8080, None)
    assert (s.leader.ttl, s.engine.tick, s.probes.dispatch_slack) == (10.0, 1.0, 0.005)
    assert s.state.path == Path("/var/lib/failoverd/state.db")
    assert s.mqtt.broker_config() is None
    assert not s.mqtt.commands_enabled


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceErrors) as exc:
        load_settings(tmp_path / "nope.yaml", {})
    assert messages(exc) == [f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"]


def test_file_values_are_read_and_env_overrides_them(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "node_id: use1-a\nhttp:\n  port: 9000\n  bind: ::1\nengine:\n  tick: 500ms\n",
    )
    s = load_settings(
        path,
        {
            "FAILOVERD_HTTP__PORT": "9100",
            "FAILOVERD_POLICIES": '["/srv/a", "/srv/b"]',
            "FAILOVERD_LEADER__TTL": "15s",
            "FAILOVERD_LOG__LEVEL": "",  # empty: unset, the default stays
            "FAILOVERD_CONFIG": "/elsewhere.yaml",  # the file's own location, not a setting
            "HOME": "/root",
        },
    )
    assert s.node_id == "use1-a"
    assert (s.http.bind, s.http.port) == ("::1", 9100)
    assert s.engine.tick == 0.5
    assert s.leader.ttl == 15.0
    assert s.policies == [Path("/srv/a"), Path("/srv/b")]
    assert s.log.level == "info"


def test_file_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "http:\n  port: 70000\n  prot: 1\nengine:\n  tick: 1\naws:\n  endpoint_url: ftp://x\n",
    )
    with pytest.raises(SourceErrors) as exc:
        load_settings(path, {})
    assert messages(exc) == [
        f"{path}:2:3: http.port: Input should be less than or equal to 65535 (got 70000)",
        f"{path}:3:3: http.prot: unknown key 'prot'; expected one of: bind, port,"
        " allow_remote, allowed_hosts, token_file, advertise_url",
        f"{path}:5:3: engine.tick: expected a duration such as 500ms, 30s, 5m, 1h or 1m30s "
        "(a string with a unit), got 1",
        f"{path}:7:3: aws.endpoint_url: expected an http:// or https:// URL with a host, "
        "got 'ftp://x'",
    ]


def test_yaml_syntax_and_shape_errors_are_located(tmp_path: Path) -> None:
    with pytest.raises(SourceErrors, match=r"failoverd.yaml:\d+:\d+: invalid YAML"):
        load_settings(write(tmp_path, "http:\n  port: [1\n"), {})
    with pytest.raises(SourceErrors, match="expected a mapping of settings"):
        load_settings(write(tmp_path, "- a\n"), {})


def test_env_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SourceErrors) as exc:
        load_settings(
            write(tmp_path, "log:\n  level: debug\n"),
            {
                "FAILOVERD_HTTP__BIND": "localhost",
                "FAILOVERD_HTTP__PROT": "1",
                "FAILOVERD_HTTPS__PORT": "1",
                "FAILOVERD_ENGINE__TICK": "10",
            },
        )
    text = messages(exc)
    assert (
        "environment FAILOVERD_HTTP__BIND: http.bind: expected an IP address such as "
        "127.0.0.1 or ::1, got 'localhost'" in text
    )
    assert any(
        m.startswith("environment FAILOVERD_HTTP__PROT: http.prot: unknown key") for m in text
    )
    assert any(m.startswith("environment FAILOVERD_HTTPS__PORT: no such setting") for m in text)
    assert any(m.startswith("environment FAILOVERD_ENGINE__TICK: engine.tick:") for m in text)


def test_settings_built_directly_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAILOVERD_HTTP__PORT", "9300")
    monkeypatch.setenv("FAILOVERD_LOG__FORMAT", "console")
    s = Settings()
    assert (s.http.port, s.log.format) == (9300, "console")


def test_mqtt_settings_become_a_broker_config(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            "mqtt:\n  broker: mqtts://[::1]:8883\n  tls_ca: /etc/ca.pem\n  username: fo\n"
            "  password_file: /etc/pw\n  commands_enabled: true\n",
        ),
        {},
    )
    broker = s.mqtt.broker_config()
    assert broker is not None
    assert (broker.host, broker.port, broker.tls, broker.username) == ("::1", 8883, True, "fo")
    assert broker.ca_file == Path("/etc/ca.pem")
    assert broker.password_file == Path("/etc/pw")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mqtt:\n  broker: mqtt://127.0.0.1\n  tls_ca: /ca.pem\n", "need an mqtts:// broker URL"),
        ("mqtt:\n  broker: mqtt://u:p@127.0.0.1\n", "no credentials in the URL"),
        ("mqtt:\n  broker: http://127.0.0.1\n", "scheme must be mqtt:// or mqtts://"),
        ("mqtt:\n  username: fo\n", "broker options are set but `broker` is not"),
        (
            "mqtt:\n  agent_keys: [{agent: agent-eu, file: /k}]\n",
            "broker options are set but `broker` is not",
        ),
        (
            "mqtt:\n  broker: mqtt://h\n  agent_keys:\n    - {agent: agent-eu, file: /a}\n"
            "    - {agent: agent-ap, key_id: agent-eu, file: /b}\n",
            "key id 'agent-eu' is given twice",
        ),
        ("mqtt:\n  broker: mqtt://h\n  agent_keys: [{agent: local, file: /k}]\n", "reserved"),
        (
            "mqtt:\n  broker: mqtt://h\n  agent_keys: [{agent: a, key_id: 'x y', file: /k}]\n",
            "key_id 'x y' must match",
        ),
    ],
)
def test_bad_mqtt_settings_fail_at_load(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SourceErrors, match=message) as exc:
        load_settings(path, {})
    assert str(exc.value).startswith(f"{path}:")


def test_the_tokens_are_read_at_use_and_never_held(tmp_path: Path) -> None:
    token_file = write_secret(tmp_path / "api-token", "s3cr3t-token\n")
    s = load_settings(write(tmp_path, f"http:\n  token_file: {token_file}\n"), {})
    assert s.http.tokens() == {"api-token": "s3cr3t-token"}  # a bare token: the file's name
    token_file.write_text("rotated\n", encoding="utf-8")
    assert s.http.tokens() == {"api-token": "rotated"}  # a rotated file is picked up
    assert "rotated" not in repr(s) and "rotated" not in s.model_dump_json()


def test_named_tokens_come_from_label_lines_and_several_files_crlf_included(
    tmp_path: Path,
) -> None:
    team = tmp_path / "operators"
    team.write_bytes(b"# on-call\r\nalice:tok-alice-1\r\n\r\nbob: tok-bob-22 \r\n")
    ci = tmp_path / "ci-deploy.token"
    ci.write_text("tok-ci-333\n", encoding="utf-8")
    team.chmod(0o600)
    ci.chmod(0o600)
    s = load_settings(write(tmp_path, f"http:\n  token_file: [{team}, {ci}]\n"), {})
    assert s.http.tokens() == {
        "alice": "tok-alice-1",
        "bob": "tok-bob-22",
        "ci-deploy": "tok-ci-333",
    }
    # The same from the environment, as JSON, and one path as a plain string.
    env = {"FAILOVERD_HTTP__TOKEN_FILE": json.dumps([str(team)])}
    assert load_settings(write(tmp_path, "{}\n"), env).http.token_file == [team]
    env = {"FAILOVERD_HTTP__TOKEN_FILE": str(ci)}
    assert load_settings(write(tmp_path, "{}\n"), env).http.tokens() == {"ci-deploy": "tok-ci-333"}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"t": "\n"}, r"http.token_file .*/t is empty"),
        ({"t": "  \r\n# only a comment\n"}, r"t: no token in it"),
        ({"t": "alice:one\ntwo\n"}, r"t:2: a token without a label"),
        ({"t": "al ice:one\n"}, r"t:1: expected 'label:token'"),
        ({"t": "alice:\n"}, r"t:1: the token is empty"),
        ({"t": "alice:a b\n"}, r"t:1: the token is empty or has a space"),
        ({"t": "alice:one\nalice:two\n"}, r"t:2: the label 'alice' is given twice"),
        ({"t": "alice:one\n", "u": "alice:two\n"}, r"u: the label 'alice' is also given in"),
        ({"t": "alice:same\n", "u": "bob:same\n"}, r"the token of 'bob' is also the token of"),
    ],
)
def test_an_unusable_token_file_is_a_clear_error_naming_file_and_line(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    paths = []
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        (tmp_path / name).chmod(0o600)
        paths.append(str(tmp_path / name))
    s = load_settings(write(tmp_path, f"http:\n  token_file: [{', '.join(paths)}]\n"), {})
    with pytest.raises(SettingsError, match=message) as exc:
        s.http.tokens()
    for secret in ("one", "two", "same"):
        assert f":{secret}" not in str(exc.value) and f"'{secret}'" not in str(exc.value)


def test_a_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = load_settings(write(tmp_path, f"http:\n  token_file: {tmp_path}/x\n"), {})
    with pytest.raises(SettingsError, match=r"http.token_file .*/x: No such file"):
        missing.http.tokens()
    assert load_settings(write(tmp_path, "{}\n"), {}).http.tokens() is None


def test_the_api_address_announced_is_the_advertised_one_or_built_from_bind(
    tmp_path: Path,
) -> None:
    s = load_settings(write(tmp_path, "http:\n  port: 0\n"), {})
    assert s.http.api_url(41234) == "http://127.0.0.1:41234"
    s = load_settings(write(tmp_path, "http:\n  bind: '::1'\n"), {})
    assert s.http.api_url() == "http://[::1]:8080"
    s = load_settings(write(tmp_path, "http:\n  bind: 0.0.0.0\n  allow_remote: true\n"), {})
    assert s.http.api_url() == f"http://{socket.getfqdn()}:8080"
    s = load_settings(
        write(tmp_path, "http:\n  advertise_url: https://failoverd-b.internal:8443/\n"), {}
    )
    assert s.http.api_url(8080) == "https://failoverd-b.internal:8443"
    with pytest.raises(SourceErrors, match="advertise_url"):
        load_settings(write(tmp_path, "http:\n  advertise_url: ftp://x\n"), {})


def test_agent_keys_are_read_from_their_files_and_never_shown(tmp_path: Path) -> None:
    secret = "k" * 40
    key_file = tmp_path / "agent-eu.key"
    key_file.write_text(secret + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    text = (
        "mqtt:\n  broker: mqtt://127.0.0.1\n  agent_keys:\n"
        f"    - {{agent: agent-eu, file: {key_file}}}\n"
        f"    - {{agent: agent-eu, key_id: eu-next, file: {key_file}}}\n"
    )
    s = load_settings(write(tmp_path, text), {})
    keyring = s.mqtt.keyring()
    assert keyring.enforcing and keyring.agents == {"agent-eu"} and len(keyring) == 2
    assert secret not in repr(s) and secret not in s.model_dump_json()
    key_file.write_text("short\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"mqtt.agent_keys \(agent-eu\) file .*shorter than"):
        s.mqtt.keyring()
    key_file.unlink()
    with pytest.raises(SettingsError, match="No such file"):
        s.mqtt.keyring()


def test_settings_are_immutable(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "{}\n"), {})
    with pytest.raises(ValidationError):
        s.http.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        s.node_id = "other"  # type: ignore[misc]


def test_aws_client_config_points_health_at_its_own_endpoint(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            "aws:\n  endpoint_url: http://127.0.0.1:5000\n"
            "  health_endpoint_url: http://127.0.0.1:5001\n  read_timeout: 2s\n",
        ),
        {},
    )
    assert s.aws.client_config().endpoint_url == "http://127.0.0.1:5000"
    health = s.aws.client_config(health=True)
    assert (health.endpoint_url, health.read_timeout) == ("http://127.0.0.1:5001", 2.0)


def test_service_endpoints_reach_the_client_config(tmp_path: Path) -> None:
    s = load_settings(
        write(
            tmp_path,
            "aws:\n  endpoint_url: http://127.0.0.1:5000\n"
            "  service_endpoints: {arc-region-switch: 'http://127.0.0.1:5002'}\n",
        ),
        {},
    )
    assert s.aws.client_config().service_endpoints == {"arc-region-switch": "http://127.0.0.1:5002"}
    for bad, message in (
        ("{Bad_Name: 'http://127.0.0.1:1'}", "not a botocore service name"),
        ("{s3: 'ftp://x'}", "expected an http:// or https:// URL"),
    ):
        with pytest.raises(SourceErrors, match=message):
            load_settings(write(tmp_path, f"aws:\n  service_endpoints: {bad}\n"), {})


def test_log_format_maps_to_configure_logging(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "{}\n"), {}).log.json_output is None
    s = load_settings(write(tmp_path, "log:\n  format: json\n"), {})
    assert s.log.json_output is True


def test_the_example_settings_file_is_valid() -> None:
    s = load_settings(ROOT / "systemd" / "failoverd.example.yaml", {})
    assert s.http.token_file == [Path("/etc/failoverd/api-token")]
    assert s.state.path == Path("/var/lib/failoverd/state.db")


def test_committed_reference_is_current() -> None:
    committed = (ROOT / "docs" / "settings-reference.md").read_text(encoding="utf-8")
    assert committed == settings_reference(), (
        "docs/settings-reference.md is out of date with orchestrator/settings.py; regenerate"
        " it with the command in its header"
    )


def test_reference_documents_every_key_with_its_variable() -> None:
    text = settings_reference()

    def check(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            section = field.annotation
            variable = f"{prefix}{name.upper()}"
            if isinstance(section, type) and issubclass(section, BaseModel):
                if prefix:  # a nested section: a row of its own, then its keys
                    assert f"`{variable}__*`" in text
                check(section, f"{variable}__" if prefix else f"FAILOVERD_{variable}__")
            elif prefix:
                assert f"`{variable}`" in text
            else:
                assert f"| `{name}` |" in text

    check(Settings, "")
    assert "`FAILOVERD_STATE__ETCD__ENDPOINTS`" in text
    assert "| `tick` | duration | `1s` |" in text
    assert socket.gethostname() not in text.replace("the host name", "")


# -- the etcd state store ---------------------------------------------------------------------
def test_etcd_settings_are_read_from_file_and_environment(tmp_path: Path) -> None:
    password = write_secret(tmp_path / "etcd-password", "hunter2-etcd\n")
    path = write(
        tmp_path,
        "state:\n  backend: etcd\n  etcd:\n    endpoints:\n      - https://10.0.1.5:2379\n"
        f"    username: failoverd\n    password_file: {password}\n",
    )
    s = load_settings(
        path,
        {
            "FAILOVERD_STATE__ETCD__ENDPOINTS": '["https://10.0.1.5:2379", "https://10.1.1.5:2379"]',
            "FAILOVERD_STATE__ETCD__PREFIX": "/failoverd/prod",
        },
    )
    assert s.state.backend == "etcd"
    assert s.state.etcd.endpoints == ["https://10.0.1.5:2379", "https://10.1.1.5:2379"]
    assert s.state.etcd.prefix == "/failoverd/prod"
    assert s.state.etcd.password() == "hunter2-etcd"
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()
    assert s.leader.ttl == 10.0  # the default lease


def test_etcd_with_tls_needs_https_and_existing_files(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    s = load_settings(
        write(
            tmp_path,
            "state:\n  backend: etcd\n  etcd:\n    endpoints: [https://etcd-a:2379]\n"
            f"    ca_file: {tmp_path}/ca.pem\n    cert_file: {tmp_path}/client.pem\n"
            f"    key_file: {tmp_path}/client.key\n",
        ),
        {},
    )
    assert s.state.etcd.cert_file == tmp_path / "client.pem"


@pytest.mark.parametrize(
    ("etcd", "message"),
    [
        ("{}", "backend is etcd but etcd.endpoints is empty"),
        ("{endpoints: [etcd-a:2379]}", "expected an http:// or https:// URL with a host"),
        ("{endpoints: ['http://u:p@etcd-a:2379']}", "no credentials in the URL"),
        ("{endpoints: ['http://etcd-a:2379/v3']}", "without a path"),
        ("{endpoints: [http://a:2379, http://a:2379]}", "listed twice"),
        ("{endpoints: [http://a:2379], prefix: failoverd}", "a leading /"),
        ("{endpoints: [https://a:2379], cert_file: CERT}", "cert_file and key_file go together"),
        ("{endpoints: [https://a:2379], username: fo}", "username and password_file go together"),
        ("{endpoints: [https://a:2379], ca_file: /nonexistent/ca.pem}", "does not exist"),
        ("{endpoints: [http://a:2379], ca_file: CERT}", "every endpoint must be https://"),
    ],
)
def test_bad_etcd_settings_fail_at_load_naming_the_key(
    tmp_path: Path, etcd: str, message: str
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x", encoding="utf-8")
    path = write(tmp_path, f"state:\n  backend: etcd\n  etcd: {etcd.replace('CERT', str(cert))}\n")
    with pytest.raises(SourceErrors, match=message) as exc:
        load_settings(path, {})
    assert str(exc.value).startswith(f"{path}:")
    assert "state" in str(exc.value)


def test_a_bad_etcd_endpoint_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SourceErrors) as exc:
        load_settings(
            write(tmp_path, "state:\n  backend: etcd\n"),
            {"FAILOVERD_STATE__ETCD__ENDPOINTS": '["ftp://a"]'},
        )
    assert any(
        m.startswith("environment FAILOVERD_STATE__ETCD__ENDPOINTS: state.etcd.endpoints")
        for m in messages(exc)
    ), messages(exc)


def test_sqlite_stays_the_default_and_ignores_the_etcd_section(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "{}\n"), {})
    assert (s.state.backend, s.state.etcd.endpoints, s.state.etcd.password()) == (
        "sqlite",
        [],
        None,
    )


async def test_the_state_settings_open_the_store_they_name(tmp_path: Path) -> None:
    from orchestrator.store.etcd import EtcdStore
    from orchestrator.store.open import etcd_config, open_store
    from orchestrator.store.sqlite import SqliteStore

    sqlite = load_settings(write(tmp_path, f"state:\n  path: {tmp_path}/s.db\n"), {}).state
    store = await open_store(sqlite)
    try:
        assert isinstance(store, SqliteStore) and (tmp_path / "s.db").exists()
    finally:
        await store.close()

    password = write_secret(tmp_path / "pw", "etcd-secret\n")
    state = load_settings(
        write(
            tmp_path,
            "state:\n  backend: etcd\n  timeout: 3s\n  etcd:\n"
            "    endpoints: [https://127.0.0.1:1, https://127.0.0.1:2]\n    prefix: /fo/test\n"
            f"    username: fo\n    password_file: {password}\n",
        ),
        {},
    ).state
    config = etcd_config(state.etcd, state.timeout)
    assert config.endpoints == ("https://127.0.0.1:1", "https://127.0.0.1:2")
    assert (config.prefix, config.timeout, config.username) == ("/fo/test", 3.0, "fo")
    assert config.password == "etcd-secret" and "etcd-secret" not in repr(config)
    # Nothing listens there: opening does not need etcd up (the daemon waits for it).
    store = await open_store(state)
    try:
        assert isinstance(store, EtcdStore)
    finally:
        await store.close()

    password.write_text("\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"state.etcd.password_file .* is empty"):
        await open_store(state)


def test_arc_cluster_endpoints_reach_the_daemons_aws_clients(tmp_path: Path) -> None:
    from orchestrator.daemon.main import load_settings as daemon_settings

    text = (
        "arc:\n  cluster_endpoints:\n"
        "    us-west-2: https://host-aaaa.us-west-2.example.com/v1\n"
        "    eu-west-1: https://host-bbbb.eu-west-1.example.com/v1\n"
    )
    path = write(tmp_path, text)
    assert load_settings(path, {}).arc.cluster_endpoints["eu-west-1"].endswith("/v1")
    daemon = daemon_settings(str(path), {})
    assert dict(daemon.arc_cluster_endpoints) == {
        "us-west-2": "https://host-aaaa.us-west-2.example.com/v1",
        "eu-west-1": "https://host-bbbb.eu-west-1.example.com/v1",
    }
    with pytest.raises(SourceErrors, match="not an AWS region"):
        load_settings(write(tmp_path, "arc:\n  cluster_endpoints: {usw2: https://a/v1}\n"), {})
    with pytest.raises(SourceErrors, match="http"):
        load_settings(write(tmp_path, "arc:\n  cluster_endpoints: {us-west-2: host/v1}\n"), {})


def test_the_cli_s_own_variables_are_not_settings_errors(tmp_path: Path) -> None:
    # An operator's shell with the CLI's variables set (sandbox env) can still run the daemon.
    env = {"FAILOVERD_API": "http://127.0.0.1:8080", "FAILOVERD_TOKEN_FILE": "/x/token"}
    assert load_settings(write(tmp_path, "{}\n"), env).http.port == 8080


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ["policies"]),
        ("", ["policies"]),
        ("/etc/failoverd/policies", ["/etc/failoverd/policies"]),
        ('["/a", "/b/c.yaml"]', ["/a", "/b/c.yaml"]),
    ],
)
def test_the_cli_finds_the_policies_where_the_daemon_would(
    value: str | None, expected: list[str]
) -> None:
    env = {} if value is None else {"FAILOVERD_POLICIES": value}
    assert policy_paths_from_env(env) == expected

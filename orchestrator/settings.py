"""Daemon settings: a YAML file overridden by ``FAILOVERD_*`` environment variables.

The file (``--config``, default :data:`DEFAULT_CONFIG`) is read with the policy loader's YAML
reader, so every problem names ``file:line:column`` and the key path, and unknown keys are
errors. Environment variables override single keys, nested with ``__``:
``FAILOVERD_HTTP__PORT=9090`` sets ``http.port``; a problem there names the variable.

Secrets are never settings: the API token and the broker and etcd passwords are *files*,
read when they are used (so a rotated file is picked up), and AWS credentials come from the standard
chain (environment, profile, instance or container role). Printing or logging a
:class:`Settings` therefore cannot leak one.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import stat
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.policy.durations import Duration, format_duration
from orchestrator.policy.loader import validate_model
from orchestrator.policy.yamlsource import (
    LoadedYaml,
    Path_,
    SourceError,
    SourceErrors,
    format_path,
    load_yaml_file,
)
from orchestrator.telemetry import add_known_secret

if TYPE_CHECKING:
    from orchestrator.signals.agent_auth import AgentKey, Keyring
    from orchestrator.signals.aws_clients import AwsClientConfig
    from orchestrator.signals.mqtt_agents import BrokerConfig

DEFAULT_CONFIG = Path("/etc/failoverd/failoverd.yaml")
ENV_PREFIX = "FAILOVERD_"
ENV_NESTED = "__"
# Variables with the prefix that are not settings: where the settings file is, and the
# operator CLI's API address and token file (an operator's shell may run the daemon too).
RESERVED_ENV = frozenset({"FAILOVERD_CONFIG", "FAILOVERD_API", "FAILOVERD_TOKEN_FILE"})


class SettingsError(ValueError):
    """A setting that cannot be used (a secret file missing or empty); names the setting."""


class Section(BaseModel):
    """Base for every settings section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _positive(value: float, what: str) -> float:
    if value <= 0:
        raise ValueError(f"{what} must be greater than zero")
    return value


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("no credentials in the URL (it gets logged)")
    return value


MAX_SECRET_FILE = 64 * 1024  # a token, a password or a few labelled tokens; not a log file


def read_secret_text(path: Path, what: str) -> str:
    """The whole text of the secret file ``path`` (CRLF and a UTF-8 byte-order mark as
    written by Windows editors taken out), read only when it is a regular file that neither
    group nor others may access. :class:`SettingsError` naming ``what`` and the path (never
    the content) otherwise, and when it cannot be read or holds nothing but blanks."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise SettingsError(f"{what} {path}: not a regular file")
        if info.st_mode & 0o077:
            raise SettingsError(
                f"{what} {path}: group or others may access it (mode"
                f" {stat.S_IMODE(info.st_mode):04o}); a secret file must be the daemon user's"
                f" alone: chmod 600 {path}"
            )
        with path.open("rb") as f:
            raw = f.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise SettingsError(f"{what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_SECRET_FILE:
        raise SettingsError(f"{what} {path}: larger than {MAX_SECRET_FILE} bytes")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise SettingsError(f"{what} {path}: not UTF-8 text") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise SettingsError(f"{what} {path} is empty")
    for line in text.split("\n"):
        add_known_secret(line)  # whatever part of it is the secret never reaches a log line
        add_known_secret(line.partition(":")[2])  # `label:token` lines
    return text


def read_secret_file(path: Path, what: str) -> str:
    """The first line of the secret file ``path``, without surrounding blanks (see
    :func:`read_secret_text` for what is refused). The secret itself never appears in a
    message."""
    lines = read_secret_text(path, what).split("\n")
    secret = lines[0].strip()
    if not secret:
        raise SettingsError(f"{what} {path}: the first line is empty")
    return secret


class EtcdSettings(Section):
    """The etcd cluster of the `etcd` state store (several failoverd instances, one acts).
    Run it across three regions: it must outlive the loss of any one of them."""

    endpoints: list[str] = Field(
        default_factory=list,
        description="Client URLs of the cluster's members, `http://host:2379` or `https://...`"
        " (list them all: a call goes to another member when one does not answer).",
    )
    prefix: str = Field(
        "/failoverd",
        description="Key prefix of everything this deployment keeps in etcd (one prefix per"
        " deployment sharing a cluster).",
    )
    ca_file: Path | None = Field(
        None, description="CA bundle that signed the members' certificates (default: system)."
    )
    cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(None, description="Client certificate key.")
    username: str | None = Field(None, description="etcd user (etcd's own authentication).")
    password_file: Path | None = Field(
        None, description="File whose first line is the etcd user's password (read at start)."
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        for url in v:
            _http_url(url)
            if urlsplit(url).path not in ("", "/"):
                raise ValueError(f"expected a member's base URL without a path, got {url!r}")
        if len(set(v)) != len(v):
            raise ValueError("an endpoint is listed twice")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/") or v.endswith("/") or any(c.isspace() for c in v):
            raise ValueError(
                f"expected a key prefix such as /failoverd (a leading /, no trailing / and no"
                f" spaces), got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _coherent(self) -> EtcdSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together: set both or neither")
        tls = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        for name, path in tls.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist or is not a file")
        plain = [u for u in self.endpoints if urlsplit(u).scheme != "https"]
        if any(tls.values()) and plain:
            raise ValueError(
                "TLS files are set, so every endpoint must be https://; not: " + ", ".join(plain)
            )
        if self.password_file is not None and plain:
            # etcd's gateway takes the password in the clear and answers a bearer token.
            raise ValueError(
                "a password is sent only over https://; these endpoints are not: "
                + ", ".join(plain)
            )
        return self

    def password(self) -> str | None:
        """The password, read from ``password_file`` now; None without authentication."""
        if self.password_file is None:
            return None
        return read_secret_file(self.password_file, "state.etcd.password_file")


class StateSettings(Section):
    """Where the daemon keeps its journal, service state and leader lease."""

    backend: Literal["sqlite", "etcd"] = Field(
        "sqlite",
        description="The state store: `sqlite`, the embedded single-node store (one instance,"
        " or several on one host), or `etcd`, an etcd cluster shared by several instances"
        " (high availability; see docs/deployment.md).",
    )
    path: Path = Field(
        Path("/var/lib/failoverd/state.db"),
        description="The SQLite database file (backend `sqlite`).",
    )
    timeout: Duration = Field(
        5.0, description="Bound of every store call; a slower store counts as unreachable."
    )
    etcd: EtcdSettings = Field(
        default_factory=EtcdSettings, description="The etcd cluster (backend `etcd`)."
    )

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        return _positive(v, "timeout")

    @model_validator(mode="after")
    def _backend(self) -> StateSettings:
        if self.backend == "etcd" and not self.etcd.endpoints:
            raise ValueError(
                "backend is etcd but etcd.endpoints is empty; list the cluster's client URLs"
            )
        return self


class LeaderSettings(Section):
    """The leader lease: only its holder acts."""

    ttl: Duration = Field(
        10.0,
        description="Lease time to live; the holder renews well before it ends, and another"
        " node takes over at most this long after the holder vanished.",
    )

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: float) -> float:
        return _positive(v, "ttl")


class EngineSettings(Section):
    """The decision loop."""

    tick: Duration = Field(
        1.0, description="Time between engine evaluations (a new observation batch also ticks)."
    )

    @field_validator("tick")
    @classmethod
    def _tick(cls, v: float) -> float:
        if not 0.01 <= v <= 60:
            raise ValueError("tick must be between 10ms and 1m")
        return v


class AwsSettings(Section):
    """How AWS is reached (every client: the daemon's, the CLI's, drills'). Credentials come
    from the standard chain (environment, profile, instance or container role), never from
    this file; a policy's `aws.role_arn` is assumed from them through regional STS."""

    endpoint_url: str | None = Field(
        None,
        description="Override AWS's endpoint for every service (an emulator); unset in production.",
    )
    health_endpoint_url: str | None = Field(
        None, description="Override the AWS Health API endpoint only (wins over `endpoint_url`)."
    )
    service_endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Override the endpoint of single services, by botocore service name"
        " (`arc-region-switch: http://127.0.0.1:4566`; an emulator); wins over `endpoint_url`.",
    )
    connect_timeout: Duration = Field(3.0, description="TCP and TLS connect bound per attempt.")
    read_timeout: Duration = Field(10.0, description="Bound on waiting for a response per attempt.")
    max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Attempts per call, first included (exponential backoff with jitter).",
    )
    retry_mode: Literal["standard", "adaptive"] = Field(
        "standard",
        description="botocore's retry mode: `standard` (backoff with jitter and a retry quota),"
        " or `adaptive` (also rate-limits the client itself after throttling).",
    )

    _urls = field_validator("endpoint_url", "health_endpoint_url")(_http_url)

    @field_validator("service_endpoints")
    @classmethod
    def _service_endpoints(cls, v: dict[str, str]) -> dict[str, str]:
        for service, url in v.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", service):
                raise ValueError(
                    f"{service!r} is not a botocore service name (e.g. s3, arc-region-switch)"
                )
            _http_url(url)
        return v

    @field_validator("connect_timeout", "read_timeout")
    @classmethod
    def _timeouts(cls, v: float) -> float:
        return _positive(v, "a timeout")

    def client_config(self, *, health: bool = False) -> AwsClientConfig:
        """The aiobotocore client settings; ``health=True`` for the AWS Health API."""
        from orchestrator.signals.aws_clients import AwsClientConfig

        endpoint = (self.health_endpoint_url or self.endpoint_url) if health else self.endpoint_url
        return AwsClientConfig(
            endpoint_url=endpoint,
            service_endpoints=dict(self.service_endpoints),
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_attempts=self.max_attempts,
            retry_mode=self.retry_mode,
        )


class ArcSettings(Section):
    """Application Recovery Controller: the routing-control cluster that
    `arc.set_routing_controls` steps use when they name no `cluster_endpoints` of their own."""

    cluster_endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="The cluster's five endpoints by region, as DescribeCluster lists them"
        " (region: https://host.../v1).",
    )

    @field_validator("cluster_endpoints")
    @classmethod
    def _endpoints(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for region, url in value.items():
            if not re.match(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$", region):
                raise ValueError(f"{region!r} is not an AWS region name")
            _http_url(url)
        return value


class ProbeSettings(Section):
    """The synthetic probe scheduler."""

    max_concurrency: int = Field(256, ge=1, description="Probes in flight at most.")
    dispatch_slack: Duration = Field(
        0.005, description="A probe due within this much is started now (never late)."
    )
    trust_ca_file: Path | None = Field(
        None, description="A CA bundle trusted, besides the system's, when probing over TLS."
    )

    @field_validator("dispatch_slack")
    @classmethod
    def _slack(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError("dispatch_slack must be between 0s and 1s")
        return v

    @field_validator("trust_ca_file")
    @classmethod
    def _ca(cls, v: Path | None) -> Path | None:
        if v is None:
            return v
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(v))
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not PEM"
            raise ValueError(f"{v}: cannot be used as a CA bundle ({reason})") from None
        return v


class AgentKeySettings(Section):
    """One remote agent's signing key (HMAC-SHA256; the agent runs with the same file)."""

    agent: str = Field(description="The agent's id (its vantage point name).")
    key_id: str | None = Field(
        None, description="The key's id, as the agent sends it (default: the agent's id)."
    )
    file: Path = Field(
        description="File whose first line is the key: at least 32 characters, e.g. from"
        " `openssl rand -hex 32`; not readable by group or others."
    )

    @model_validator(mode="after")
    def _valid(self) -> AgentKeySettings:
        from orchestrator.signals.agent_auth import KEY_ID_PATTERN
        from orchestrator.signals.agent_wire import check_agent_id

        problem = check_agent_id(self.agent)
        if problem:
            raise ValueError(problem)
        if not re.match(KEY_ID_PATTERN, self.id):
            raise ValueError(f"key_id {self.id!r} must match {KEY_ID_PATTERN}")
        return self

    @property
    def id(self) -> str:
        return self.key_id or self.agent

    def load(self) -> AgentKey:
        """The key (an :class:`~orchestrator.signals.agent_auth.AgentKey`), read now;
        :class:`SettingsError` naming the setting when the file cannot be used."""
        from orchestrator.signals.agent_auth import AgentKey, AgentKeyError

        what = f"mqtt.agent_keys ({self.id}) file"
        secret = read_secret_file(self.file, what)
        try:
            return AgentKey.from_text(self.agent, self.id, secret)
        except AgentKeyError as exc:
            raise SettingsError(f"{what} {self.file}: {exc}") from None


class MqttSettings(Section):
    """The MQTT broker (remote probe agents, event stream, optional commands); off when
    `broker` is unset."""

    broker: str | None = Field(
        None, description="`mqtt://host[:port]` or `mqtts://host[:port]`; no credentials in it."
    )
    tls_ca: Path | None = Field(None, description="CA bundle for the broker (default: system).")
    tls_cert: Path | None = Field(None, description="Client certificate (mutual TLS).")
    tls_key: Path | None = Field(None, description="Client certificate key.")
    tls_insecure: bool = Field(
        False, description="Skip the broker's host name check (the chain is still verified)."
    )
    username: str | None = Field(None, description="Broker user name.")
    password_file: Path | None = Field(
        None, description="File whose first line is the broker password (read at connect)."
    )
    commands_enabled: bool = Field(
        False, description="Accept operator commands on the command topic (broker ACLs guard it)."
    )
    agent_keys: list[AgentKeySettings] = Field(
        default_factory=list,
        description="The remote agents' signing keys. With any set, a message from an agent"
        " must be signed with a key of that agent (several per agent while rotating).",
    )

    @model_validator(mode="after")
    def _coherent(self) -> MqttSettings:
        from orchestrator.signals.mqtt_agents import BrokerConfigError

        ids = [k.id for k in self.agent_keys]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"agent_keys: key id {twice[0]!r} is given twice")
        if self.broker is None:
            options = self.tls_ca or self.tls_cert or self.tls_key or self.username
            if options or self.password_file or self.agent_keys:
                raise ValueError("broker options are set but `broker` is not")
            return self
        try:
            self.broker_config()
        except BrokerConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def keyring(self) -> Keyring:
        """The agents' keys, read from their files now (SettingsError naming the first
        that cannot be used)."""
        from orchestrator.signals.agent_auth import Keyring

        return Keyring(k.load() for k in self.agent_keys)

    def broker_config(self) -> BrokerConfig | None:
        """The broker connection settings (None when MQTT is off). Reads no file."""
        from orchestrator.signals.mqtt_agents import BrokerConfig

        if self.broker is None:
            return None
        return BrokerConfig.from_url(
            self.broker,
            ca_file=self.tls_ca,
            cert_file=self.tls_cert,
            key_file=self.tls_key,
            tls_insecure=self.tls_insecure,
            username=self.username,
            password_file=self.password_file,
        )


HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")


class WebhookSettings(Section):
    """Where the `webhook` action may deliver."""

    allow_link_local: bool = Field(
        False,
        description="Allow webhook targets on link-local and instance-metadata addresses"
        " (169.254.0.0/16, fe80::/10, fd00:ec2::/32: the EC2 and ECS metadata services and"
        " their credentials). Off: such a target fails the step, whatever name resolves to it.",
    )


class HttpSettings(Section):
    """The HTTP API, `/metrics` and the status page."""

    bind: str = Field("127.0.0.1", description="Address to listen on (an IP address).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port).")
    allow_remote: bool = Field(
        False,
        description="Allow `bind` to be an address other hosts can reach (on in the container"
        " image, whose network namespace is its own). Anyone who reaches the port can read the"
        " state; every mutating call still needs the token.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names clients may use in the `Host` header (e.g. the name Prometheus"
        " scrapes), besides IP addresses and, on loopback, `localhost`. Any other name is"
        " refused (421): a browser tricked by DNS rebinding sends the attacker's name.",
    )
    token_file: list[Path] | None = Field(
        None,
        description="Token file, or a list of them, for mutating calls: lines `label:token`"
        " (the label is who the audit log names), or a single bare token labelled with the"
        " file's name; without one, mutating calls are disabled. Revoke a token by deleting"
        " its line and sending SIGHUP.",
    )
    advertise_url: str | None = Field(
        None,
        description="This instance's API address as clients and the other instances reach it"
        " (announced with the leader lease: a follower's 409 names it, and the CLI follows"
        " it). Default: `http://<bind>:<port>`, with the host name when bound to all"
        " addresses.",
    )

    _token_files = field_validator("token_file", mode="before")(
        lambda v: [v] if isinstance(v, str | Path) else v
    )
    _advertise = field_validator("advertise_url")(_http_url)

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            msg = f"expected an IP address such as 127.0.0.1 or ::1, got {v!r}"
            raise ValueError(msg) from None
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            if not HOST_NAME.fullmatch(host):
                raise ValueError(f"expected a host name without port, got {host!r}")
        return [h.lower().rstrip(".") for h in v]

    @model_validator(mode="after")
    def _remote(self) -> HttpSettings:
        if not ipaddress.ip_address(self.bind).is_loopback and not self.allow_remote:
            raise ValueError(
                f"bind {self.bind} is reachable from other hosts; set allow_remote: true to"
                " serve the API there (mutating calls still need the token)"
            )
        return self

    def tokens(self) -> dict[str, str] | None:
        """The named bearer tokens (label -> token), read from the token files now; None
        when none is configured. :class:`SettingsError` names the file (and line) that
        cannot be used: missing, unreadable, empty, malformed, or a label or token twice."""
        from orchestrator.api.auth import TokenFileError, merge_tokens, parse_tokens

        if not self.token_file:
            return None
        try:
            return merge_tokens(
                (path, parse_tokens(read_secret_text(path, "http.token_file"), path))
                for path in self.token_file
            )
        except TokenFileError as exc:
            raise SettingsError(f"http.token_file {exc}") from None

    def api_url(self, port: int | None = None) -> str:
        """Where clients reach this API: ``advertise_url``, else built from ``bind`` and
        ``port`` (the port really bound, when given: 0 means any)."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = self.bind
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            host = socket.getfqdn()
        elif address.version == 6:
            host = f"[{host}]"
        return f"http://{host}:{self.port if port is None else port}"


class FlightRecorderSettings(Section):
    """The flight recorder: per service, what the daemon observed (observation changes per
    signal and vantage point, lag readings, AWS Health and alarms, operator commands,
    leadership, decisions and runs) from `lead` before an incident until the service has been
    steady for `after`, on disk, for `failoverd scenario export`."""

    enabled: bool = Field(True, description="Record (the daemon keeps nothing when off).")
    path: Path | None = Field(
        None,
        description="Folder of the records, one subfolder per `node_id` (default:"
        " `flight-recorder/` beside `state.path`).",
    )
    lead: Duration = Field(
        1800.0, description="How much is kept before an incident's first `suspect`."
    )
    after: Duration = Field(
        300.0, description="An incident ends once the service has been steady this long."
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Cap on the records of all services together, in bytes; the oldest go first.",
    )
    segment: Duration = Field(
        300.0,
        description="Each service's record is cut into files this long (each begins with a"
        " snapshot of what the daemon sees), the unit of rotation.",
    )

    @field_validator("lead", "after", "segment")
    @classmethod
    def _durations(cls, v: float) -> float:
        return _positive(v, "a duration")

    def folder(self, state: StateSettings, node_id: str) -> Path:
        """This instance's folder (instances sharing a host, or a `path`, never mix)."""
        base = self.path if self.path is not None else state.path.parent / "flight-recorder"
        return base / node_id


class LogSettings(Section):
    """Logging (structlog)."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Threshold.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="`auto`: JSON lines unless stderr is a terminal."
    )

    @property
    def json_output(self) -> bool | None:
        """What :func:`orchestrator.telemetry.configure_logging` takes (None: decide by TTY)."""
        return None if self.format == "auto" else self.format == "json"


def _paths(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Settings(BaseSettings):
    """Everything the daemon needs besides its policies (see `load_settings`)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
    )

    node_id: str = Field(
        default_factory=socket.gethostname,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="This instance's name in leases and journals (default: the host name).",
    )
    policies: Annotated[list[Path], Field(min_length=1)] = Field(
        default_factory=lambda: [Path("/etc/failoverd/policies")],
        description="Policy files or folders (`*.yaml` below them).",
    )
    state: StateSettings = Field(default_factory=StateSettings, description="State store.")
    leader: LeaderSettings = Field(default_factory=LeaderSettings, description="Leader lease.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Decision loop.")
    aws: AwsSettings = Field(default_factory=AwsSettings, description="AWS clients.")
    arc: ArcSettings = Field(default_factory=ArcSettings, description="ARC routing controls.")
    probes: ProbeSettings = Field(default_factory=ProbeSettings, description="Probe scheduler.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="MQTT broker.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="HTTP API.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    webhook: WebhookSettings = Field(
        default_factory=WebhookSettings, description="The webhook action."
    )
    flight_recorder: FlightRecorderSettings = Field(
        default_factory=FlightRecorderSettings, description="The flight recorder."
    )

    _policies = field_validator("policies", mode="before")(_paths)

    def __init__(self, **values: Any) -> None:
        """``Settings()`` reads ``FAILOVERD_*`` variables through pydantic-settings' sources
        (no file, no located errors); the daemon uses :func:`load_settings` instead."""
        super().__init__(**values)

    # pydantic runs a model's custom __init__ from model_validate, and BaseSettings' drops
    # the validation context on the way, which durations need to refuse unit-less numbers
    # from files. Marking it as the base init makes model_validate validate directly.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# Loading


def load_settings(path: str | Path | None, env: Mapping[str, str]) -> Settings:
    """Settings from the file at ``path`` (None: :data:`DEFAULT_CONFIG`, which may be
    missing, meaning defaults; an explicitly named file must exist) overridden by the
    ``FAILOVERD_*`` variables in ``env``. Raise :class:`SourceErrors` listing every problem,
    each with ``file:line:column`` or the environment variable it comes from."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    if path is None and not file.exists():
        loaded = LoadedYaml(file=str(file), data={}, text="")
    else:
        loaded = load_yaml_file(file)
        if loaded.data is None or not isinstance(loaded.data, dict):
            raise SourceErrors([loaded.error((), "expected a mapping of settings at the top")])
    overrides, origins, env_errors = _env_overrides(env)
    merged = LoadedYaml(
        file=loaded.file,
        data=_deep_merge(loaded.data, overrides),
        lines=loaded.lines,
        text=loaded.text,
    )
    try:
        settings = validate_model(Settings, merged)
    except SourceErrors as exc:
        raise SourceErrors([*(_blame_env(e, origins) for e in exc.errors), *env_errors]) from None
    if env_errors:
        raise SourceErrors(env_errors)
    return settings


def _env_overrides(
    env: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, str], list[SourceError]]:
    """``FAILOVERD_A__B=v`` as ``{"a": {"b": v}}``, the variable behind each key path, and
    errors for variables naming no setting (a typo must not be silently ignored)."""
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    errors: list[SourceError] = []
    known = list(Settings.model_fields)
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in RESERVED_ENV:
            continue
        value = env[name]
        if value == "":
            continue  # an empty variable is unset, as in pydantic-settings' env_ignore_empty
        keys = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
        if not all(keys) or keys[0] not in known:
            errors.append(
                SourceError(
                    f"environment {name}",
                    0,
                    0,
                    "",
                    f"no such setting; top-level settings are: {', '.join(known)}",
                )
            )
            continue
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = _env_value(value)
        origins[format_path(tuple(keys))] = name
    return data, origins, errors


def _env_value(value: str) -> Any:
    """Lists and mappings are written as JSON (`["/a", "/b"]`); everything else stays a
    string for the models to convert (`8080`, `true`, `30s`)."""
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _deep_merge(base: Any, override: dict[str, Any]) -> Any:
    if not isinstance(base, dict):
        return override or base
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _blame_env(error: SourceError, origins: Mapping[str, str]) -> SourceError:
    """Attribute an error on a key that came from the environment to its variable."""
    for key_path, name in origins.items():
        if error.path == key_path or error.path.startswith((key_path + ".", key_path + "[")):
            return SourceError(f"environment {name}", 0, 0, error.path, error.message)
    return error


def policy_paths_from_env(env: Mapping[str, str], default: str = "policies") -> list[str]:
    """The policy files or folders the CLI's deployment commands (readiness, iam-policy,
    drill) use without ``--policy``: ``FAILOVERD_POLICIES`` as the daemon reads it (a path,
    or a JSON list of them), else ``default``."""
    raw = env.get(ENV_PREFIX + "POLICIES", "").strip()
    if not raw:
        return [default]
    value = _env_value(raw)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return [raw]


def env_path(path: Path_) -> str:
    """The environment variable that sets the key at ``path``: ``("http", "port")`` ->
    ``FAILOVERD_HTTP__PORT``."""
    return ENV_PREFIX + ENV_NESTED.join(str(p).upper() for p in path)


# ---------------------------------------------------------------------------------------
# The reference (docs/settings-reference.md)

_SECTIONS: tuple[type[BaseModel], ...] = (
    StateSettings,
    EtcdSettings,
    LeaderSettings,
    EngineSettings,
    AwsSettings,
    ArcSettings,
    ProbeSettings,
    MqttSettings,
    HttpSettings,
    LogSettings,
    WebhookSettings,
    FlightRecorderSettings,
)


def settings_reference() -> str:
    """The Markdown reference of every setting, generated from the models above so that the
    two cannot disagree; a test fails when the committed file is out of date."""
    lines = [
        "# Settings reference",
        "",
        "<!-- Generated by orchestrator.settings.settings_reference(); do not edit. Rewrite it"
        " with `python -c 'from orchestrator.settings import settings_reference as r;"
        ' print(r(), end="")\' > docs/settings-reference.md`. -->',
        "",
        f"The daemon reads `{DEFAULT_CONFIG}` (or the file given with `--config`; a missing"
        " default file means all defaults), then applies environment variables: "
        f"`{ENV_PREFIX}<KEY>` for a top-level key and `{ENV_NESTED}` between nested keys, e.g."
        f" `{env_path(('http', 'port'))}=9090`. Lists are written as JSON"
        f' (`{env_path(("policies",))}=\'["/a", "/b"]\'`); an empty variable counts as'
        " unset; a variable with the prefix that names no setting is an error.",
        "",
        "Durations are written `500ms`, `30s`, `5m`, `1h`. Unknown keys are errors everywhere."
        " Secrets are never settings: the API token and the broker and etcd passwords are"
        " files, read when used; AWS credentials come from the standard chain (environment,"
        " profile, instance or container role).",
        "",
        *_section(Settings, "## Top level", ()),
        *_subsections(Settings, ()),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _subsections(model: type[BaseModel], prefix: Path_) -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and sub in _SECTIONS:
            path = (*prefix, name)
            title = "## `" + ".".join(str(p) for p in path) + "`"
            out += _section(sub, title, path) + _subsections(sub, path)
    return out


def _section(model: type[BaseModel], title: str, prefix: Path_) -> list[str]:
    doc = " ".join((model.__doc__ or "").split())
    out = [title, ""]
    if doc and not doc.startswith("Base for"):
        out += [doc, ""]
    out += ["| key | type | default | environment | meaning |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        env = env_path((*prefix, name))
        if isinstance(field.annotation, type) and field.annotation in _SECTIONS:
            if prefix:  # a nested section: a row pointing at its own heading
                where = ".".join(str(p) for p in (*prefix, name))
                out.append(f"| `{name}` | section | — | `{env}__*` | see `{where}` below |")
            continue  # a top-level section: documented under its own heading
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        kind = _type_name(field).replace("|", "\\|")
        default = _default_text(name, field).replace("|", "\\|")
        out.append(f"| `{name}` | {kind} | {default} | `{env}` | {meaning} |")
    return [*out, ""]


def _is_duration(field: FieldInfo) -> bool:
    return any(type(m).__name__ == "PlainSerializer" for m in field.metadata)


def _type_name(field: FieldInfo) -> str:
    if _is_duration(field):
        return "duration"
    tp = field.annotation
    args = typing.get_args(tp)
    optional = type(None) in args
    members = [a for a in args if a is not type(None)] if optional else [tp]
    names = []
    for member in members:
        origin = typing.get_origin(member)
        if origin is Literal:
            names.append(" | ".join(f"`{a}`" for a in typing.get_args(member)))
        elif origin is list:
            names.append(f"list of {_plain(typing.get_args(member)[0])}")
        else:
            names.append(_plain(member))
    return " | ".join(names) + (" (optional)" if optional else "")


def _plain(tp: Any) -> str:
    return {"str": "string", "int": "integer", "bool": "boolean"}.get(
        getattr(tp, "__name__", str(tp)), getattr(tp, "__name__", str(tp))
    ).replace("Path", "path")


def _default_text(name: str, field: FieldInfo) -> str:
    if name == "node_id":
        return "the host name"  # not the host that happened to generate the file
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if _is_duration(field):
        return f"`{format_duration(value)}`"
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value) or "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"

"""The EST front-end's settings and clients: `intermediate/est.toml`, read by `casign est`.

    [server]
    default_label = "usr_cert"          # the profile of /.well-known/est/ without a label
    labels = ["usr_cert", "server_cert"]  # profiles offered as /.well-known/est/<label>/
    wait_seconds = 10                   # then 202 Accepted with Retry-After
    retry_after_seconds = 5
    batch_window_ms = 5                 # concurrent enrollments gathered into one queue message
    batch_window_max_ms = 25            # ... window after window while they keep arriving
    batch_max = 250
    lanes = 4                           # queue messages in flight at once, per producer identity
    max_connections = 256
    idle_timeout_seconds = 15           # also the time a client has to send its request head
    body_timeout_seconds = 10
    revoke_superseded = false           # simplereenroll revokes the old certificate (superseded)

    [clients.router-fleet]
    password = "scrypt$15$8$1$SALT$HASH"  # HTTP Basic; `casign est client add --password-file`
    issuers = ["/etc/casign/factory-ca.pem"]  # or TLS client certificates these CAs issued
    producer = "est-fleet"              # its name in producers.toml ...
    secret = "file:/run/secrets/est-fleet"  # ... and where its HMAC secret is
    labels = ["usr_cert"]               # the profiles it may enroll for (default: all offered)
    rate_per_second = 5                 # enrollments, token bucket in this server
    burst = 20
    key_passphrase = "file:/run/secrets/router-fleet-key"  # serverkeygen keys encrypted under it
    key_recipients = ["/etc/casign/fleet-keys.pem"]  # certificates its keys may be sealed to
    key_secrets = [{ id = "0a1b2c3d", file = "/etc/casign/fleet-kek.hex" }]  # shared AES secrets
    channel_binding = false             # the CSR's challengePassword must bind the TLS session
    revoke_superseded = true            # overrides [server] for this client's re-enrollments

`casign est client add|remove|list` edit the `[clients.*]` tables; the file is written 0600.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from core.errors import ConfigurationError
from core.files import write_file_atomically
from core.messages import describe_validation_error

SETTINGS_MODE = 0o600
ClientName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$")]
Label = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


def settings_path(ca_root: Path) -> Path:
    """`intermediate/est.toml` of the CA folder."""
    return ca_root / "intermediate" / "est.toml"


def server_cert_path(ca_root: Path) -> Path:
    """The EST server's own TLS certificate (leaf then chain), issued by `casign est cert`."""
    return ca_root / "intermediate" / "certs" / "est.cert.pem"


def server_key_path(ca_root: Path) -> Path:
    """The EST server's TLS key (a software key: the server must start unattended)."""
    return ca_root / "intermediate" / "private" / "est.key.pem"


class _Table(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ServerSettings(_Table):
    """The `[server]` table: labels offered, batching, waiting and connection limits."""

    default_label: Label = "usr_cert"
    labels: list[Label] | None = None
    wait_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    retry_after_seconds: Annotated[int, Field(ge=1, le=3600)] = 5
    batch_window_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    batch_window_max_ms: Annotated[float, Field(ge=0, le=5000)] = 25.0
    batch_max: Annotated[int, Field(ge=1, le=10_000)] = 250
    lanes: Annotated[int, Field(ge=1, le=64)] = 4
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 256
    idle_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 15.0
    body_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    revoke_superseded: bool = False


class KeySecretFile(_Table):
    """One shared key-encryption secret: its identifier (hex, as the CSR's DecryptKeyIdentifier
    carries it) and the file that holds it."""

    id: Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-fA-F]{2}){1,64}$")]
    file: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class ClientEntry(_Table):
    """One EST client: how it proves who it is, whose producer identity it uses, its limits."""

    password: Annotated[str, StringConstraints(max_length=512)] | None = None
    issuers: list[str] = []
    producer: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    secret: str | None = None
    labels: list[Label] | None = None
    rate_per_second: Annotated[float, Field(gt=0)] | None = None
    burst: Annotated[int, Field(gt=0)] | None = None
    # RFC 7030 4.4.2: where the passphrase that encrypts this client's serverkeygen keys is.
    key_passphrase: Annotated[str, StringConstraints(pattern=r"^(file|env):.+$")] | None = None
    # RFC 7030 4.4.1.2: PEM files of certificates a CSR may name to have its key sealed to
    # (besides the connection's own TLS client certificate); see est.key_recipients.
    key_recipients: list[str] = []
    # RFC 7030 4.4.1.1: symmetric secrets a CSR may name (by id) to have its key wrapped under;
    # each file holds the secret in hex, never this file (see est.key_secrets).
    key_secrets: list[KeySecretFile] = []
    channel_binding: bool = False  # RFC 7030 3.5
    revoke_superseded: bool | None = None  # default: the [server] table's

    @model_validator(mode="after")
    def _consistent(self) -> ClientEntry:
        if self.password is None and not self.issuers:
            raise ValueError("a client needs a password (HTTP Basic) or issuers (TLS)")
        if (self.producer is None) != (self.secret is None):
            raise ValueError("producer and secret go together")
        if self.burst is not None and self.rate_per_second is None:
            raise ValueError("burst needs rate_per_second")
        identifiers = [bytes.fromhex(secret.id) for secret in self.key_secrets]
        if len(set(identifiers)) != len(identifiers):
            raise ValueError("two key_secrets have the same id")
        return self


class EstSettings(_Table):
    """The whole file: the server's settings and its clients by name."""

    server: ServerSettings = ServerSettings()
    clients: dict[ClientName, ClientEntry] = {}

    def with_client(self, name: str, entry: ClientEntry) -> EstSettings:
        return self.model_copy(update={"clients": {**self.clients, name: entry}})

    def without_client(self, name: str) -> EstSettings:
        return self.model_copy(
            update={"clients": {key: value for key, value in self.clients.items() if key != name}}
        )


def parse_settings(text: str, source: str) -> EstSettings:
    """Validate the TOML text; a ConfigurationError names the table and field at fault."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    try:
        return EstSettings.model_validate(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{source}: {describe_validation_error(exc, 'file')}") from None


def load_settings(path: Path) -> EstSettings:
    """The settings at `path`; the defaults, with no client, when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return EstSettings()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_settings(text, str(path))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table; its keys are the models' bare field names
        return (
            "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }"
        )
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_table(name: str, table: BaseModel) -> list[str]:
    fields = table.model_dump(exclude_none=True, exclude_defaults=True)
    return [f"[{name}]", *(f"{key} = {_toml_value(value)}" for key, value in fields.items()), ""]


def render_settings(settings: EstSettings) -> str:
    """The settings as TOML: `[server]` with what differs from the defaults, then each client."""
    lines = [
        "# The EST (RFC 7030) front-end of this CA: read by `casign est`; clients are added with",
        "# `casign est client add`. Every [server] setting and its default is in the README.",
        "",
        *_toml_table("server", settings.server),
    ]
    for name in sorted(settings.clients):
        lines += _toml_table(f"clients.{json.dumps(name)}", settings.clients[name])
    return "\n".join(lines)


def save_settings(path: Path, settings: EstSettings) -> None:
    """Write the settings (0600: it holds password hashes), atomically."""
    text = render_settings(settings)
    parse_settings(text, str(path))  # what is written must read back
    write_file_atomically(path, text, SETTINGS_MODE)

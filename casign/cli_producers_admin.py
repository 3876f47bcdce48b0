"""`casign producer add|remove|list` and `casign acl add|remove`: each role its own Redis user.

`producer add NAME` lists NAME in `intermediate/producers.toml`, writes its HMAC secret and its
Redis password (each 0400, in `intermediate/private/producers/` or `--secret-dir`) and makes its
Redis ACL user (`store.acl`): in the CA folder's embedded Redis (its ACL file, and the running
server), in the Redis of `--admin-url`, in an ACL file (`--acl-file`), or, for any other Redis,
as the `ACL SETUSER` line its admin runs. It prints the settings the producer runs with; a
password is read from its file there (`$(cat FILE)`), shown only with `--show-password`. For a
RabbitMQ broker it prints the `rabbitmqctl` lines. `acl add signer|ocsp|operator` does the same
for the other roles (reusing a password file already made, so it can run again).
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import click

from casign.cli_base import broker_option, ca_option, fail, store_option
from casign.config import Endpoints, ca_dir, resolve_endpoints
from core.errors import ConfigurationError
from core.files import KEY_MODE, write_file_atomically
from core.queue import check_producer_name
from store.acl import (
    AclAdmin,
    AclUser,
    KeyScope,
    Role,
    check_acl_support,
    file_user_names,
    password_hash,
    rabbitmq_permissions,
    role_user,
    write_user_line,
)
from store.embedded import EmbeddedRedis, redis_server_binary, redis_server_version

if TYPE_CHECKING:
    from worker.cafolder import CAFolder

F = TypeVar("F", bound=Callable[..., Any])

ADMIN_URL_VARIABLE = "CASIGN_REDIS_ADMIN_URL"
# A new ACL file for another Redis is read by that server's own user: it holds hashes only.
SHARED_ACL_FILE_MODE = 0o644
EMBEDDED_ACL_FILE_MODE = 0o600
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


@dataclass
class UserTarget:
    """Where Redis users go: a running Redis (as its admin), an ACL file, or neither (printed)."""

    admin: AclAdmin | None
    acl_file: Path | None
    label: str
    embedded: bool = False
    binary: str | None = None  # the embedded Redis's, not running: its version still to check

    @property
    def prints(self) -> bool:
        return self.admin is None and self.acl_file is None

    def add(self, user: AclUser, password: str) -> list[str]:
        """Apply `user`; what to print (the ACL SETUSER line when nothing else holds it)."""
        digest = password_hash(password)
        if self.prints:
            return [user.setuser_command(digest), "ACL SAVE"]
        if self.binary is not None:
            check_acl_support(redis_server_version(self.binary), f"{self.label} ({self.binary})")
        if self.admin is not None:  # first: a server that refuses the rules changes nothing
            self.admin.apply(user, password)
        if self.acl_file is not None:
            self._write_line(user.name, user.acl_file_line(digest))
        self._persist()
        return []

    def remove(self, name: str) -> list[str]:
        """Delete user `name`; what to print (the ACL DELUSER line when nothing else holds it)."""
        if self.prints:
            return [f"ACL DELUSER {name}", "ACL SAVE"]
        if self.admin is not None:
            self.admin.delete(name)
        if self.acl_file is not None:
            self._write_line(name, None)
        self._persist()
        return []

    def has(self, name: str) -> bool | None:
        """Whether the user exists there; None when this command cannot tell."""
        if self.admin is not None:
            return name in self.admin.users()
        if self.acl_file is not None:
            return name in file_user_names(self.acl_file)
        return None

    def _write_line(self, name: str, line: str | None) -> None:
        assert self.acl_file is not None
        # The embedded Redis keeps its open default user (its socket is the owner's alone); a
        # file for another Redis is read by that server's own user and holds hashes only.
        mode = EMBEDDED_ACL_FILE_MODE if self.embedded else SHARED_ACL_FILE_MODE
        write_user_line(self.acl_file, name, line, mode, lock_default=not self.embedded)

    def _persist(self) -> None:
        """Have a running server keep its users; not needed where this command wrote the file."""
        if self.admin is None or self.acl_file is not None:
            return
        if not self.admin.save():
            click.secho(
                f"warning: {self.label} has no ACL file (`aclfile`): the change is lost when it "
                "restarts unless its configuration keeps it",
                fg="yellow",
                err=True,
            )


def _target_options(function: F) -> F:
    options = [
        click.option(
            "--admin-url",
            envvar=ADMIN_URL_VARIABLE,
            default=None,
            help=f"Apply the Redis user through this admin's URL (better: ${ADMIN_URL_VARIABLE}).",
        ),
        click.option(
            "--acl-file",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Write the user into this Redis ACL file (a new one begins with a default user "
            "no client can log in as).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@contextlib.contextmanager
def user_target(
    endpoints: Endpoints, admin_url: str | None, acl_file: Path | None
) -> Iterator[UserTarget]:
    """The target the options name: --acl-file, --admin-url, else the embedded Redis, else print."""
    admin: AclAdmin | None = None
    label = "the Redis"
    embedded = False
    binary = None
    if admin_url is not None:
        label = f"the Redis at {_without_credentials(admin_url)}"
        admin = AclAdmin.from_url(admin_url, label)
    elif acl_file is None and endpoints.embedded_dir is not None:
        server = EmbeddedRedis(endpoints.embedded_dir)
        acl_file, label, embedded = server.acl_path, "the embedded Redis", True
        if server.is_running():
            admin = AclAdmin.from_url(server.url, label)
        else:
            binary = redis_server_binary()
    elif acl_file is not None:
        label = str(acl_file)
    try:
        yield UserTarget(admin, acl_file, label, embedded, binary)
    finally:
        if admin is not None:
            admin.close()


# --- secret files -------------------------------------------------------------------------------


def new_secret_file(path: Path) -> str:
    """Write a fresh random secret (256 bits, hex) to `path`, 0400; refuse to replace one."""
    value = secrets.token_hex(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        write_file_atomically(path, value + "\n", KEY_MODE, replace=False)
    except FileExistsError:
        raise ConfigurationError(f"{path} exists already; remove it first") from None
    return value


def secret_file(path: Path) -> str:
    """The secret in `path`, made there (0400) when there is none yet."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    return new_secret_file(path)


# --- what the role runs with --------------------------------------------------------------------


def url_with_user(url: str, user: str, password_file: Path, password: str | None) -> str:
    """`url` naming `user`; its password read from `password_file` by the shell, or given."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    secret = quote(password, safe="") if password is not None else f"$(cat {password_file})"
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{secret}@{host}"))


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _is_amqp(url: str) -> bool:
    return urlsplit(url).scheme in _AMQP_SCHEMES


def _vhost(url: str) -> str:
    """The vhost of an AMQP URL as kombu reads it (`amqp://host//` is `/`)."""
    path = urlsplit(url).path
    return path[1:] if len(path) > 1 else "/"


def print_role_settings(
    endpoints: Endpoints,
    user: AclUser,
    password_file: Path,
    broker_password_file: Path | None,
    show_password: bool,
) -> None:
    """The CA's key prefix and queue, and the broker and store URLs the role connects with
    (passwords read from their files): all a role without the CA folder needs."""
    click.echo(f"export CASIGN_STORE_PREFIX={shlex.quote(endpoints.store_prefix.rstrip(':'))}")
    click.echo(f"export CASIGN_QUEUE={shlex.quote(endpoints.queue)}")
    store_password = _read(password_file) if show_password else None
    click.echo(
        f'export CASIGN_STORE_URL="{url_with_user(endpoints.store_url, user.name, password_file, store_password)}"'
    )
    if endpoints.broker_url.startswith("unused"):
        click.echo(
            "export CASIGN_BROKER_URL=... (the broker's URL with the same user and password)"
        )
        return
    broker_file = broker_password_file or password_file
    broker_password = _read(broker_file) if show_password else None
    click.echo(
        f'export CASIGN_BROKER_URL="{url_with_user(endpoints.broker_url, user.name, broker_file, broker_password)}"'
    )


def print_rabbitmq_lines(endpoints: Endpoints, user: AclUser, password_file: Path) -> None:
    configure, write, read = rabbitmq_permissions(user.role)
    click.echo("# on the RabbitMQ host, as its administrator:")
    click.echo(f'rabbitmqctl add_user {user.name} "$(cat {password_file})"')
    click.echo(
        f"rabbitmqctl set_permissions -p {_vhost(endpoints.broker_url)} {user.name} "
        f"'{configure}' '{write}' '{read}'"
    )


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def _scope(endpoints: Endpoints) -> KeyScope:
    return KeyScope(endpoints.store_prefix, endpoints.queue)


def _endpoints(ca: Path | None, broker: str | None, store: str | None) -> Endpoints:
    return resolve_endpoints(broker, store, ca_dir(ca), need_broker=False)


def _folder(ca: Path | None) -> CAFolder:
    from worker.cafolder import CAFolder

    folder = CAFolder(ca_dir(ca))
    folder.require()
    return folder


# --- casign producer ----------------------------------------------------------------------------


@click.group("producer")
def producer() -> None:
    """The producers of this CA: producers.toml, their secrets and their Redis users."""


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(item.strip() for value in values for item in value.split(",") if item.strip())


@producer.command("add")
@click.argument("name")
@click.option("--profiles", multiple=True, help="Profiles it may ask for (default: all).")
@click.option("--names", multiple=True, help="Name patterns every CN and SAN must match.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--burst", type=click.IntRange(min=1), default=None)
@click.option(
    "--secret-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where its secret files go (default: intermediate/private/producers/).",
)
@click.option("--show-password", is_flag=True, help="Print the URLs with the password in them.")
@ca_option
@broker_option
@store_option
@_target_options
def producer_add(
    name: str,
    profiles: tuple[str, ...],
    names: tuple[str, ...],
    rate: float | None,
    burst: int | None,
    secret_dir: Path | None,
    show_password: bool,
    ca: Path | None,
    broker: str | None,
    store: str | None,
    admin_url: str | None,
    acl_file: Path | None,
) -> None:
    """List NAME in producers.toml with a fresh secret, and make its Redis user."""
    from casign.producers_file import (
        ProducerEntry,
        add_producer,
        check_entry,
        read_producers,
        remove_producer,
    )

    # The whole entry is checked before anything is written: no secret, entry or user is left
    # behind by a refusal (exit 2).
    check_producer_name(name)
    folder = _folder(ca)
    if name in read_producers(folder.producers_path):
        fail(f"producer {name!r} is already listed in {folder.producers_path}", 2)
    _check_rights(folder, _split(profiles), rate, burst)
    check_entry(ProducerEntry(name, "file:-", _split(profiles), _split(names), rate, burst))
    endpoints = _endpoints(ca, broker, store)
    user = role_user(_scope(endpoints), Role.PRODUCER, name)
    first = not folder.producers_path.exists()
    directory = (secret_dir or folder.intermediate / "private" / "producers").absolute()
    secret_path = directory / f"{name}.secret"
    password_path = directory / f"{name}.redis-password"
    amqp_path = directory / f"{name}.amqp-password" if _is_amqp(endpoints.broker_url) else None
    made: list[Path] = []
    try:
        for path in (secret_path, password_path, amqp_path):
            if path is not None:
                new_secret_file(path)
                made.append(path)
        entry = ProducerEntry(
            name, f"file:{secret_path}", _split(profiles), _split(names), rate, burst
        )
        add_producer(folder.producers_path, entry)
        try:
            with user_target(endpoints, admin_url, acl_file) as target:
                lines, where = target.add(user, _read(password_path)), target.label
        except BaseException:
            remove_producer(folder.producers_path, name)
            raise
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        raise
    click.echo(
        f"producer {name} listed in {folder.producers_path} (a running signer applies it "
        "within a second)"
    )
    if first:
        click.echo("  the file is new: a running signer serves listed producers only from now on")
    click.echo(f"  secret:         {secret_path} (0400)")
    _print_user(user, password_path, lines, where)
    if amqp_path is not None:
        click.echo(f"  amqp password:  {amqp_path} (0400)")
        print_rabbitmq_lines(endpoints, user, amqp_path)
    click.echo("# the producer runs with (passwords are read from their files):")
    click.echo(f"export CASIGN_PRODUCER_ID={name}")
    click.echo(f"export CASIGN_PRODUCER_SECRET=file:{secret_path}")
    print_role_settings(endpoints, user, password_path, amqp_path, show_password)


def _check_rights(
    folder: CAFolder, profiles: tuple[str, ...], rate: float | None, burst: int | None
) -> None:
    """Refuse a profile the CA does not have, and a burst without a rate."""
    from worker.profiles import ProfileSet

    known = ProfileSet.load(folder.profiles_path)
    for profile in profiles:
        if profile not in known:
            fail(f"--profiles: {profile!r} is not a profile of {folder.profiles_path}", 2)
    if burst is not None and rate is None:
        fail("--burst needs --rate", 2)


def _print_user(user: AclUser, password_path: Path, lines: list[str], where: str) -> None:
    click.echo(f"  redis password: {password_path} (0400)")
    if lines:
        click.echo(f"  redis user:     {user.name}; on the Redis, as its admin (redis-cli):")
        for line in lines:
            click.echo(line)
    else:
        click.echo(f"  redis user:     {user.name}, in {where}")


@producer.command("remove")
@click.argument("name")
@click.option(
    "--secret-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where its secret files are (default: intermediate/private/producers/).",
)
@ca_option
@broker_option
@store_option
@_target_options
def producer_remove(
    name: str,
    secret_dir: Path | None,
    ca: Path | None,
    broker: str | None,
    store: str | None,
    admin_url: str | None,
    acl_file: Path | None,
) -> None:
    """Undo `producer add NAME`: its entry, its secret files and its Redis user."""
    from casign.producers_file import remove_producer

    check_producer_name(name)
    folder = _folder(ca)
    endpoints = _endpoints(ca, broker, store)
    user = role_user(_scope(endpoints), Role.PRODUCER, name)
    directory = (secret_dir or folder.intermediate / "private" / "producers").absolute()
    listed = remove_producer(folder.producers_path, name)
    files = [directory / f"{name}.{kind}" for kind in ("secret", "redis-password", "amqp-password")]
    removed = [path for path in files if path.exists()]
    with user_target(endpoints, admin_url, acl_file) as target:
        had_user, where = target.has(user.name), target.label
        lines = target.remove(user.name)
    if not listed and not removed and had_user is False:
        fail(f"producer {name!r} is not listed in {folder.producers_path} and has no user")
    for path in removed:
        path.unlink()
    if listed:
        click.echo(f"producer {name} removed from {folder.producers_path} (restart the signer)")
    for path in removed:
        click.echo(f"  removed {path}")
    if lines:
        click.echo("# on the Redis, as its admin (redis-cli):")
        for line in lines:
            click.echo(line)
    else:
        click.echo(f"  redis user {user.name} removed from {where}")
    if _is_amqp(endpoints.broker_url):
        click.echo(f"rabbitmqctl delete_user {user.name}")


@producer.command("list")
@ca_option
@broker_option
@store_option
@_target_options
def producer_list(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    admin_url: str | None,
    acl_file: Path | None,
) -> None:
    """The listed producers: name, profiles, names, rate, and whether their Redis user exists."""
    from casign.producers_file import read_producers

    folder = _folder(ca)
    endpoints = _endpoints(ca, broker, store)
    scope = _scope(endpoints)
    with user_target(endpoints, admin_url, acl_file) as target:
        for name, table in sorted(read_producers(folder.producers_path).items()):
            user = scope.user_name(Role.PRODUCER, name) if _nameable(name) else "-"
            present = target.has(user) if user != "-" else False
            rate = table.get("rate_per_second")
            fields = [
                name,
                ",".join(table.get("profiles") or ["*"]),
                ",".join(table.get("names") or ["*"]),
                f"{rate:g}/s" if rate else "-",
                user + {True: "", False: " (absent)", None: ""}[present],
            ]
            click.echo("\t".join(fields))


def _nameable(name: str) -> bool:
    try:
        check_producer_name(name)
    except ConfigurationError:
        return False
    return True


# --- casign acl ---------------------------------------------------------------------------------


@click.group("acl")
def acl() -> None:
    """The Redis users of the signer, the OCSP responder and the operator."""


_ROLE = click.Choice([Role.SIGNER.value, Role.OCSP.value, Role.OPERATOR.value])


def _password_dir(folder: CAFolder, given: Path | None) -> Path:
    return (given or folder.intermediate / "private" / "redis").absolute()


@acl.command("add")
@click.argument("role", type=_ROLE)
@click.option(
    "--password-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where ROLE.redis-password is (made there, 0400, if missing; "
    "default intermediate/private/redis/).",
)
@click.option("--show-password", is_flag=True, help="Print the URLs with the password in them.")
@ca_option
@broker_option
@store_option
@_target_options
def acl_add(
    role: str,
    password_dir: Path | None,
    show_password: bool,
    ca: Path | None,
    broker: str | None,
    store: str | None,
    admin_url: str | None,
    acl_file: Path | None,
) -> None:
    """Make (or bring up to date) the Redis user of ROLE."""
    folder = _folder(ca)
    endpoints = _endpoints(ca, broker, store)
    user = role_user(_scope(endpoints), Role(role))
    directory = _password_dir(folder, password_dir)
    password_path = directory / f"{role}.redis-password"
    password = secret_file(password_path)
    amqp_path = None
    if _is_amqp(endpoints.broker_url) and user.role is Role.SIGNER:
        amqp_path = directory / f"{role}.amqp-password"
        secret_file(amqp_path)
    with user_target(endpoints, admin_url, acl_file) as target:
        lines, where = target.add(user, password), target.label
    _print_user(user, password_path, lines, where)
    if amqp_path is not None:
        print_rabbitmq_lines(endpoints, user, amqp_path)
    click.echo(f"# the {role} runs with (passwords are read from their files):")
    print_role_settings(endpoints, user, password_path, amqp_path, show_password)


@acl.command("remove")
@click.argument("role", type=_ROLE)
@click.option("--password-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@ca_option
@broker_option
@store_option
@_target_options
def acl_remove(
    role: str,
    password_dir: Path | None,
    ca: Path | None,
    broker: str | None,
    store: str | None,
    admin_url: str | None,
    acl_file: Path | None,
) -> None:
    """Delete the Redis user of ROLE and its password file."""
    folder = _folder(ca)
    endpoints = _endpoints(ca, broker, store)
    user = role_user(_scope(endpoints), Role(role))
    with user_target(endpoints, admin_url, acl_file) as target:
        lines, where = target.remove(user.name), target.label
    directory = _password_dir(folder, password_dir)
    for kind in ("redis-password", "amqp-password"):
        (directory / f"{role}.{kind}").unlink(missing_ok=True)
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo(f"redis user {user.name} removed from {where}")


COMMANDS = (producer, acl)

"""Least privilege in Redis: one ACL user per role, its key patterns derived from the key layout.

The roles, and what each may touch (P is the store prefix, `casign:` unless configured; Q the
signing queue, `casign.sign` unless configured; every key name is `store.keys.KeySpace`'s):

  signer     every key under P (reserve, publish, revoke, CRLs, audit, rate limits, the chain),
             the queue Q and every producer's queue Q:* as their consumer (BRPOP on them and
             their priority lists, kombu's `unacked`
             hash, `unacked_index` and `unacked_mutex`) and Celery's remote control (the
             pidbox lists, and every channel: kombu subscribes by pattern); INFO (the store's
             health check reads the eviction policy there); no other admin command
  producer   one per name N: push to its own queue Q:N (LPUSH; producers publish without
             declaring the queue) and count it (LLEN and EXISTS on Q:N and its priority lists,
             in MULTI/EXEC as kombu asks), never Q or another producer's queue; pop its own
             replies P:reply:N:* and read its own refusal notes P:authfail:N:*; read (never
             write) P:job:*, P:certs, P:index, P:serials, P:chain, P:ca, P:workers, P:inhand
             (the jobs in a worker's hands), P:metrics (what `casign top` shows) and
             P:airgap:jobs (a job exported to an air-gapped signer, `casign airgap`); write
             the figures of the EST servers running as it, P:est:figures:N@* (SET), and their
             members of P:est:servers (ZADD, and ZREMRANGEBYSCORE of the lapsed), read
             neither (`est_server_name`). No other key, no pub/sub, no scripts.
  ocsp       read P:index and P:revoked (the lines it answers from and its two counters);
             write its figures P:ocsp:figures:* (SET) and P:ocsp:responders (ZADD, and
             ZREMRANGEBYSCORE of the lapsed), read neither
  operator   everything (`casign adopt`, `crl`, `producer add`, ...): the admin

Until job ids are per producer, every producer may read every job's state (never its reply).

A producer's reply lists are named `N:RANDOM` (`reply_list_name`), so that P:reply:N:* holds
them and no pattern of another producer does: a producer name is letters, digits, `.`, `_` and
`-` only (no `:`, no glob character). Its EST servers are named `N@HOST:PORT` (`est_server_name`)
for the same reason, with `@`, which neither a producer name nor a host name holds, so that no
producer's pattern holds the name `HOST:PORT` of an EST server that runs as no producer either.

The EST servers' index P:est:servers is one sorted set for every producer, not one per producer:
`casign metrics` must find every live server without knowing the producers (it may run without
the CA folder, and no reader may SCAN). A producer may therefore add names to it or drop them;
what that can do is bounded: a reader reads only P:est:figures:NAME for a name, parses what it
finds as hostile, and drops a name not of the form above; a dropped server adds itself again at
its next write, a second later. Only the figures keys, where the numbers are, are per producer.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis

from core.errors import ConfigurationError
from core.files import write_file_atomically
from core.queue import (
    PRODUCER_QUEUE_SEPARATOR,
    SIGN_QUEUE,
    check_producer_name,
    producer_queue,
)
from store.boundary import translated
from store.keys import KeySpace

MIN_REDIS_MAJOR = 7
# kombu's Redis transport (kombu.transport.redis.Channel; tests/test_trust_boundary.py checks
# these against the installed kombu): a queue Q is the list Q, and Q + SEP + N for priority N.
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
KOMBU_PRIORITY_STEPS = (3, 6, 9)
KOMBU_BINDING_SETS = ("_kombu.binding.%s", "_kombu.binding_permanent.%s")
KOMBU_CONSUMER_KEYS = ("unacked", "unacked_index", "unacked_mutex", "_kombu.binding_deadlines")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_REDIS_USER_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")

# What every role's client sends on connecting (redis-py: HELLO, CLIENT SETINFO; kombu: PING;
# a URL's /db: SELECT): the connection commands, less those of an admin (CLIENT KILL, PAUSE, ...).
_CONNECTION_COMMANDS = ("+@connection", "-@admin", "-@dangerous")
# What the signer runs: its Lua scripts, Celery's consumer, remote control; never an admin or
# dangerous command (KEYS, FLUSHDB, CONFIG, DEBUG, ...).
_SIGNER_CATEGORIES = (
    "+@read",
    "+@write",
    "+@scripting",
    "+@transaction",
    "+@pubsub",
    "+@blocking",
    "+@connection",
    "+time",  # kombu's binding scripts read the server's clock
    "-@admin",
    "-@dangerous",
    # The store's health check reads the eviction policy from INFO (CONFIG is an admin's:
    # CONFIG GET would show `requirepass`).
    "+info",
)


class Role(StrEnum):
    """Who holds a Redis user of a CA."""

    SIGNER = "signer"
    PRODUCER = "producer"
    OCSP = "ocsp"
    OPERATOR = "operator"


def reply_list_name(producer: str | None) -> str:
    """A fresh reply list name: `PRODUCER:RANDOM`, so the producer's ACL pattern holds it.

    Without an identity (an open signer) it is just RANDOM: there is no user to hold it to.
    """
    random = uuid.uuid4().hex
    return f"{producer}:{random}" if producer else random


def owns_reply_list(producer: str, reply_to: str) -> bool:
    """Whether `reply_to` is one of `producer`'s reply lists (`PRODUCER:RANDOM`): the lists
    its Redis user may pop, `P:reply:PRODUCER:*`, and no other producer's."""
    owner, colon, rest = reply_to.partition(":")
    return bool(colon) and bool(rest) and owner == producer


def est_server_name(producer: str | None, host_port: str) -> str:
    """The name an EST server's figures go under: `PRODUCER@HOST:PORT` for one whose store user
    is `producer`'s (its user may write P:est:figures:PRODUCER@* only), else `HOST:PORT`."""
    return f"{producer}@{host_port}" if producer else host_port


def producer_of_user(scope: KeyScope, user: str | None) -> str | None:
    """The producer whose Redis user `user` is (`KeyScope.user_name`), or None for any other
    user (none, the default one, another role's, one not made by casign)."""
    stem = f"{scope.user_stem}-{Role.PRODUCER.value}-"
    if not user or not user.startswith(stem):
        return None
    name = user.removeprefix(stem)
    try:
        return check_producer_name(name)
    except ConfigurationError:
        return None


def glob_escape(text: str) -> str:
    """`text` as a Redis glob that matches it literally."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


@dataclass(frozen=True)
class KeyScope:
    """The keys of one CA on a Redis: its store prefix and its signing queue."""

    prefix: str = "casign"
    queue: str = SIGN_QUEUE

    def __post_init__(self) -> None:
        for what, value in (("store prefix", self.prefix), ("queue", self.queue)):
            if not value or any(character.isspace() for character in value):
                raise ConfigurationError(f"the {what} {value!r} cannot hold white space")

    @property
    def keys(self) -> KeySpace:
        """The store's key names under this prefix."""
        return KeySpace(self.prefix)

    @property
    def store_prefix(self) -> str:
        """The prefix as the store spells it (`KeySpace.prefix`)."""
        return self.keys.prefix

    @property
    def queue_lists(self) -> tuple[str, ...]:
        """Patterns of the lists kombu keeps the queue in: Q, and Q SEP N per priority step."""
        return _kombu_lists(glob_escape(self.queue))

    @property
    def producer_queues(self) -> str:
        """The pattern of every producer's queue and its priority lists: `Q:*`."""
        return f"{glob_escape(self.queue)}{PRODUCER_QUEUE_SEPARATOR}*"

    def producer_queue_lists(self, producer: str) -> tuple[str, ...]:
        """Patterns of the lists of `producer`'s own queue Q:NAME (`core.queue.producer_queue`)."""
        return _kombu_lists(glob_escape(producer_queue(self.queue, producer)))

    @property
    def user_stem(self) -> str:
        """What every user name of this CA begins with: the prefix, in user-name characters."""
        return _REDIS_USER_CHARACTERS.sub("_", self.prefix.rstrip(":"))

    def user_name(self, role: Role, producer: str | None = None) -> str:
        """`casign-signer`, `casign-producer-hr-portal`, ...: unique per prefix on one Redis."""
        if role is Role.PRODUCER:
            if producer is None:
                raise ValueError("a producer's user needs the producer's name")
            return f"{self.user_stem}-producer-{check_producer_name(producer)}"
        return f"{self.user_stem}-{role.value}"


@dataclass(frozen=True)
class AclUser:
    """A Redis user: its name and its rules (everything but the password)."""

    name: str
    role: Role
    rules: tuple[str, ...]

    def setuser_arguments(self, password_hash: str) -> list[str]:
        """The arguments of `ACL SETUSER name ...`: reset first, so applying again replaces."""
        return ["reset", "resetchannels", "on", f"#{password_hash}", *self.rules]

    def acl_file_line(self, password_hash: str) -> str:
        """The user as a line of a Redis ACL file (`aclfile`): words as they are, for Redis
        splits the line at spaces and rejoins a selector's `(...)`, and reads no quotes."""
        return " ".join(["user", self.name, *self.setuser_arguments(password_hash)])

    def setuser_command(self, password_hash: str) -> str:
        """The `ACL SETUSER` line to paste into `redis-cli`."""
        words = ["ACL", "SETUSER", self.name, *self.setuser_arguments(password_hash)]
        return " ".join(map(_quoted, words))


def _kombu_lists(escaped_queue: str) -> tuple[str, ...]:
    """The queue's list, then one per priority step (`kombu.transport.redis` `_q_for_pri`)."""
    return (
        escaped_queue,
        *(f"{escaped_queue}{KOMBU_PRIORITY_SEPARATOR}{step}" for step in KOMBU_PRIORITY_STEPS),
    )


def _quoted(word: str) -> str:
    """A word as redis-cli and the ACL file read it: bytes outside printable ASCII as \\xHH."""
    if all(0x21 <= ord(character) < 0x7F and character not in "\"'" for character in word):
        return word
    escaped = "".join(
        character
        if 0x20 <= ord(character) < 0x7F and character not in '"\\'
        else f"\\x{ord(character):02x}"
        for character in word
    )
    return f'"{escaped}"'


def producer_user(scope: KeyScope, producer: str) -> AclUser:
    """Publish to the queue, pop its own replies, read what `Producer.results`/`status` read;
    write the figures of the EST servers that run as it (`est_server_name`)."""
    keys = scope.keys
    own = check_producer_name(producer) + ":"
    own_queue = scope.producer_queue_lists(producer)
    reads = [
        keys.certs,
        keys.index,
        keys.serials,
        keys.chain,
        keys.ca,
        keys.workers,
        keys.in_hand,
        keys.metrics,
        keys.airgap_jobs,
    ]
    rules = [
        f"%R~{glob_escape(keys.job_stem)}*",
        *(f"%R~{glob_escape(key)}" for key in reads),
        f"%R~{glob_escape(keys.auth_note(own))}*",
        *_CONNECTION_COMMANDS,
        "+get",
        "+hget",
        "+hmget",
        "+hgetall",
        "+exists",
        "+zscore",  # is a job in a signing process's hands (P:inhand)
        # Its replies: taken, never written.
        f"(~{glob_escape(keys.reply(own))}* +blpop +lpop)",
        # Its own queue Q:N only: a message pushed (producers publish without declaring the
        # queue), and how many wait (`casign status`; before resending, kombu's passive declare:
        # EXISTS and LLEN of each priority list in MULTI/EXEC); never a message read or taken.
        f"(%W~{own_queue[0]} +lpush)",
        f"({' '.join(f'%R~{pattern}' for pattern in own_queue)} +llen +exists +multi +exec)",
        # The figures of its EST servers: written, never read; SET on its own keys only, and
        # ZADD and ZREMRANGEBYSCORE on the shared index only (a SET there would wreck it).
        f"(%W~{glob_escape(keys.est_figures(est_server_name(producer, '')))}* +set)",
        f"(%W~{glob_escape(keys.est_servers)} +zadd +zremrangebyscore)",
    ]
    return AclUser(scope.user_name(Role.PRODUCER, producer), Role.PRODUCER, tuple(rules))


def signer_user(scope: KeyScope) -> AclUser:
    """The store, the queue's consumer side, and Celery's remote control; no admin command."""
    # Every binding set, since remote control declares its own exchanges; the pidbox queues
    # (`celery@HOST.celery.pidbox` and its priority lists) are named after the host.
    kombu_patterns = (
        *map(glob_escape, KOMBU_CONSUMER_KEYS),
        *(template % "*" for template in KOMBU_BINDING_SETS),
        "*.celery.pidbox*",
    )
    rules = [
        f"~{glob_escape(scope.store_prefix)}*",
        *(f"~{pattern}" for pattern in scope.queue_lists),
        f"~{scope.producer_queues}",
        *(f"~{pattern}" for pattern in kombu_patterns),
        "&*",  # kombu PSUBSCRIBEs /DB.celery.pidbox, and a pattern is checked literally
        *_SIGNER_CATEGORIES,
    ]
    return AclUser(scope.user_name(Role.SIGNER), Role.SIGNER, tuple(rules))


def ocsp_user(scope: KeyScope) -> AclUser:
    """Read the index lines and the two counters the responder answers from; write (never
    read) its own figures (`store.figures_board`)."""
    keys = scope.keys
    figures = (f"{glob_escape(keys.ocsp_figures_stem)}*", glob_escape(keys.ocsp_responders))
    rules = [
        *(f"%R~{glob_escape(key)}" for key in (keys.index, keys.revoked)),
        *_CONNECTION_COMMANDS,
        "+hget",
        "+hmget",
        "+hlen",
        f"({' '.join(f'%W~{pattern}' for pattern in figures)} +set +zadd +zremrangebyscore)",
    ]
    return AclUser(scope.user_name(Role.OCSP), Role.OCSP, tuple(rules))


def operator_user(scope: KeyScope) -> AclUser:
    """The admin: every key, channel and command."""
    return AclUser(scope.user_name(Role.OPERATOR), Role.OPERATOR, ("~*", "&*", "+@all"))


def role_user(scope: KeyScope, role: Role, producer: str | None = None) -> AclUser:
    """The user of `role` (of `producer`, for a producer) for the CA of `scope`."""
    if role is Role.PRODUCER:
        if producer is None:
            raise ValueError("a producer's user needs the producer's name")
        return producer_user(scope, producer)
    return {Role.SIGNER: signer_user, Role.OCSP: ocsp_user, Role.OPERATOR: operator_user}[role](
        scope
    )


def password_hash(password: str) -> str:
    """What Redis keeps of a password (`#HASH` in a rule): its SHA-256, hex."""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def check_acl_support(version: str, where: str) -> None:
    """Refuse a Redis older than 7: without selectors and read-only key patterns a producer
    allowed to pop its replies could pop the signing queue too."""
    try:
        major = int(version.split(".", 1)[0])
    except ValueError:
        major = 0
    if major < MIN_REDIS_MAJOR:
        raise ConfigurationError(
            f"{where} is Redis {version}: per-role users need Redis {MIN_REDIS_MAJOR} or later "
            "(install it, e.g. `apt install redis-server`, or use another Redis)"
        )


class AclAdmin:
    """An admin's connection to a Redis: make, delete and list its users."""

    def __init__(self, client: redis.Redis, where: str) -> None:
        self.client = client
        self.where = where

    @classmethod
    def from_url(cls, url: str, where: str) -> AclAdmin:
        """Connect (lazily) as the admin of `url`; `where` names the server in messages."""
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5), where)

    def close(self) -> None:
        self.client.close()

    @translated
    def apply(self, user: AclUser, password: str) -> None:
        """Create or replace `user`; refuse a Redis older than 7 before changing anything."""
        check_acl_support(str(self.client.info("server")["redis_version"]), self.where)
        arguments = user.setuser_arguments(password_hash(password))
        self._acl("SETUSER", user.name, *arguments)

    @translated
    def delete(self, name: str) -> None:
        """Delete the user (an absent one is no error); Redis drops its connections."""
        self._acl("DELUSER", name)

    @translated
    def users(self) -> set[str]:
        """The users the server knows (ACL USERS)."""
        return {_text(name) for name in self._acl("USERS")}

    @translated
    def save(self) -> bool:
        """ACL SAVE; False when the server has no ACL file (its users then end with it)."""
        try:
            self._acl("SAVE")
        except redis.ResponseError as exc:
            if "not configured to use an acl file" in str(exc).lower():
                return False
            raise
        return True

    def _acl(self, *arguments: str) -> Any:
        """`ACL ...` as given: redis-py's acl_setuser cannot say selectors or read-only patterns."""
        return self.client.execute_command("ACL", *arguments)  # type: ignore[no-untyped-call]


def locked_default_user_line() -> str:
    """The default user of an ACL file casign writes: on, with every right, under a password
    nobody knows (the hash of 256 random bits, the bits thrown away), so no client can be it.

    Not `user default off`: Redis replays its AOF as the default user and, up to the fix of
    redis/redis#14541 (7.0.15 and 7.2 do), checks every command of a MULTI/EXEC against that
    user's rights again; an AOF holds each Lua script's writes (every batch published, every
    serial drawn) as a MULTI/EXEC, so with the default user off a restart drops them silently.
    """
    return f"user default on #{password_hash(secrets.token_hex(32))} ~* &* +@all"


def write_user_line(
    path: Path, name: str, line: str | None, mode: int, *, lock_default: bool = True
) -> None:
    """Put `line` in place of user `name`'s line of the ACL file at `path`, or append it; with
    None, remove that line. With `lock_default`, a new file begins with the locked default
    user (`locked_default_user_line`: connect as a role), which also takes the place of a
    `user default off` line; without, Redis makes the default user as ever."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = [locked_default_user_line()] if lock_default else []
    if lock_default:
        lines = [
            locked_default_user_line() if entry.split() == ["user", "default", "off"] else entry
            for entry in lines
        ]
    kept = [entry for entry in lines if entry.split()[:2] != ["user", name]]
    if line is not None:
        kept.append(line)
    write_file_atomically(path, "".join(entry + "\n" for entry in kept), mode)


def file_user_names(path: Path) -> set[str]:
    """The users an ACL file defines; empty when there is no file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return set()
    return {words[1] for words in map(str.split, lines) if len(words) > 1 and words[0] == "user"}


def rabbitmq_permissions(role: Role) -> tuple[str, str, str]:
    """The configure, write and read expressions of `rabbitmqctl set_permissions` for `role`.

    A producer publishes through the default exchange without declaring anything (declaring the
    queue would take configure and read on its name: read is consuming it). The signer declares
    and consumes its queue and Celery's remote control: it owns the vhost, one per CA.
    """
    if role is Role.PRODUCER:
        return ("^$", "^amq\\.default$", "^$")
    if role is Role.SIGNER or role is Role.OPERATOR:
        return (".*", ".*", ".*")
    raise ConfigurationError(f"the {role.value} role uses no broker")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

"""What producers and workers agree on about the queue: names and Celery settings.

A CA has one signing queue Q (`casign.sign` unless configured). A producer with an identity
publishes to a queue of its own, `Q:NAME` (`producer_queue`); one without (an open signer's)
publishes to Q itself. The worker consumes Q and the queue of every producer listed when it
starts (`consumed_queues`), and kombu's Redis transport takes from them in turn (round robin:
after a message from one queue, that queue goes to the back of the line), so one producer's
backlog does not hold another's jobs behind it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigurationError

# The names a CA folder made before casign derived them keeps (no `queue`/`store_prefix` in
# its casign.toml); `casign init` records names of the CA's own (`names_for_ca`).
SIGN_QUEUE = "casign.sign"
DEFAULT_STORE_PREFIX = "casign"
CA_TAG_LENGTH = 12  # hex digits of the CA's identity in its default names
SIGN_BATCH_TASK = "casign.sign_batch"
REVOKE_TASK = "casign.revoke"
CRL_TASK = "casign.crl"
DEFAULT_BATCH_SIZE = 250

# The most a signing worker takes in one queue message: more jobs, or more bytes of jobs (as
# `batch_bytes` counts them), and every job of the message is answered refused
# (`batch.too_many`, `batch.too_large`) without being signed. The producer cuts its batches
# under both, so an honest producer never meets them.
MAX_BATCH_JOBS = 2_000
MAX_BATCH_BYTES = 8 * 1024 * 1024

# Redis redelivers a message a dead worker had taken after this long (CASIGN_VISIBILITY_TIMEOUT
# overrides it); the signer works through a message in chunks that each take at most a tenth
# of it (worker/issuance/pace.py), and a message handed out again while its first taker still
# signs it is not signed twice (worker/lease.py).
VISIBILITY_TIMEOUT_SECONDS = 300
# kombu looks for messages past their visibility timeout every `unacked_restore_interval`
# seconds times `unacked_restore_throttle` (10 x 10 by default: a stranded batch came back
# 110 s after a 20 s timeout). One look every tenth of the timeout (1 s to 10 s), each a real
# one, brings it back within the timeout plus that tenth.
RESTORE_THROTTLE = 1

# A producer's name: it names its queue, its Redis user and its reply lists, so no `:`, no
# glob character, no white space and no `,` (Celery's list separator).
PRODUCER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PRODUCER_QUEUE_SEPARATOR = ":"


def check_producer_name(name: str) -> str:
    """`name`, if it can name a producer's queue, keys and ACL user; ConfigurationError otherwise."""
    if PRODUCER_NAME.fullmatch(name) is None:
        raise ConfigurationError(
            f"producer name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def producer_queue(queue: str, producer: str | None) -> str:
    """The queue `producer` publishes to: `Q:NAME`, or Q itself for a producer without a name."""
    if producer is None:
        return queue
    return f"{queue}{PRODUCER_QUEUE_SEPARATOR}{check_producer_name(producer)}"


def consumed_queues(queue: str, producers: Iterable[str]) -> tuple[str, ...]:
    """What a worker of queue Q consumes: Q, then each listed producer's own queue."""
    return (queue, *(producer_queue(queue, name) for name in sorted(set(producers))))


@dataclass(frozen=True, slots=True)
class QueueNames:
    """The signing queue and the store's key prefix of one CA: never shared by two CAs."""

    queue: str
    store_prefix: str


LEGACY_NAMES = QueueNames(SIGN_QUEUE, DEFAULT_STORE_PREFIX)


def ca_tag(identity: str) -> str:
    """The short tag of a CA (core.auth.ca_identity) in its default names and common name."""
    return identity[:CA_TAG_LENGTH]


def names_for_ca(identity: str) -> QueueNames:
    """The default queue and key prefix of the CA whose identity is `identity`
    (core.auth.ca_identity: SHA-256 of the intermediate's key), e.g. `casign-3f9a2c1b7d4e.sign`
    and `casign-3f9a2c1b7d4e`. `casign init` records them in casign.toml."""
    tag = ca_tag(identity)
    return QueueNames(f"casign-{tag}.sign", f"casign-{tag}")


def batch_bytes(jobs: Sequence[object]) -> int:
    """The size of a batch's jobs as compact JSON: what the message ceiling counts."""
    return len(json.dumps(list(jobs), separators=(",", ":")).encode())


def job_bytes(job: object) -> int:
    """One job's share of `batch_bytes` (its JSON and the comma after it)."""
    return len(json.dumps(job, separators=(",", ":")).encode()) + 1


def message_arguments(message: dict[str, Any]) -> Any:
    """The decoded body of a task message as kombu's Redis transport stores it (JSON, base64 or
    not, as its `body_encoding` says): Celery protocol 2's `[args, kwargs, embed]`. Raise
    ValueError, KeyError or TypeError for what is not such a message."""
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)


def visibility_timeout() -> int:
    return int(os.environ.get("CASIGN_VISIBILITY_TIMEOUT", VISIBILITY_TIMEOUT_SECONDS))


def restore_interval(timeout: int) -> int:
    """Seconds between kombu's looks for messages past their visibility timeout."""
    return max(1, min(10, timeout // 10))


def celery_settings(broker_url: str, queue: str = SIGN_QUEUE) -> dict[str, Any]:
    """Celery configuration for both sides: JSON only (pickle refused), acks after the work."""
    settings: dict[str, Any] = {
        "broker_url": broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_default_queue": queue,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "broker_pool_limit": 4,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }
    if broker_url.startswith(("redis", "rediss")):
        timeout = visibility_timeout()
        settings["broker_transport_options"] = {
            "visibility_timeout": timeout,
            "unacked_restore_interval": restore_interval(timeout),
            "unacked_restore_throttle": RESTORE_THROTTLE,
            # kombu's default, stated: take from the consumed queues in turn (fairness).
            "queue_order_strategy": "round_robin",
            # Bodies are JSON text already: kombu's default base64 costs a producer and the
            # worker's consumer an encode and a decode of every message and a third more bytes
            # in Redis. Each message names its encoding, so either kind is read.
            "body_encoding": "utf-8",
        }
    if broker_url.startswith("rediss://") and "ssl_cert_reqs=" not in broker_url:
        # kombu would otherwise connect to a bare rediss:// broker without checking its certificate.
        settings["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return settings

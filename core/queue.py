"""What producers and workers agree on about the queue: names and Celery settings."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
# overrides it); a batch signs in well under it.
VISIBILITY_TIMEOUT_SECONDS = 300


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


def visibility_timeout() -> int:
    return int(os.environ.get("CASIGN_VISIBILITY_TIMEOUT", VISIBILITY_TIMEOUT_SECONDS))


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
        settings["broker_transport_options"] = {
            "visibility_timeout": visibility_timeout(),
        }
    if broker_url.startswith("rediss://") and "ssl_cert_reqs=" not in broker_url:
        # kombu would otherwise connect to a bare rediss:// broker without checking its certificate.
        settings["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return settings

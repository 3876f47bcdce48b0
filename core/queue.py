"""What producers and workers agree on about the queue: names and Celery settings."""

from __future__ import annotations

import os
import ssl
from typing import Any

SIGN_QUEUE = "casign.sign"
SIGN_BATCH_TASK = "casign.sign_batch"
REVOKE_TASK = "casign.revoke"
CRL_TASK = "casign.crl"
DEFAULT_BATCH_SIZE = 250

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
        }
    if broker_url.startswith("rediss://") and "ssl_cert_reqs=" not in broker_url:
        # kombu would otherwise connect to a bare rediss:// broker without checking its certificate.
        settings["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return settings

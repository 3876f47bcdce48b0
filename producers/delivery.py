"""What of a producer's own messages may still wait in its queue, from the order it sent them.

A queue is first in, first out: the broker pushes at one end and the worker takes from the
other. So while a message M waits, every message pushed after it to the same queue waits too,
and a queue holding fewer messages than this producer pushed after M no longer holds M (other
senders to the queue only make it longer, so the count stays a proof). Counting is a read of
the queue's length, never of its messages; a broker that cannot be asked proves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery

log = logging.getLogger("casign.producer")


class SentMessages:
    """The number of each job's latest message among those this producer pushed to its queue."""

    def __init__(self) -> None:
        self.pushed = 0
        self._message_of: dict[str, int] = {}

    def note(self, job_ids: Iterable[str]) -> None:
        """One more message pushed, carrying `job_ids` (a job sent again moves to it)."""
        self.pushed += 1
        for job_id in job_ids:
            self._message_of[job_id] = self.pushed

    def forget(self, job_id: str) -> None:
        self._message_of.pop(job_id, None)

    def left_the_queue(self, job_id: str, depth: int) -> bool:
        """True when the queue, holding `depth` messages, can no longer hold `job_id`'s message:
        at least `depth` of this producer's messages were pushed after it."""
        message = self._message_of.get(job_id)
        return message is not None and self.pushed - message >= depth


def queue_depth(celery: Celery, queue: str) -> int | None:
    """How many messages wait in `queue` (0 when the broker has no such queue); None when the
    broker cannot be asked (down, or this user may not count it)."""
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)
            channel: Any = connection.default_channel  # kombu's stubs omit queue_declare
            try:
                declared = channel.queue_declare(queue, passive=True)
            except connection.channel_errors as exc:
                if _not_found(exc):
                    return 0
                raise
            return int(declared.message_count)
    except Exception as exc:  # a broker that cannot be asked proves nothing
        log.warning("cannot count queue %s, so nothing is sent again now: %s", queue, exc)
        return None


def _not_found(exc: BaseException) -> bool:
    """True for a passive declare's 404: the broker holds no such queue (kombu, py-amqp)."""
    return getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc)

"""What a person waiting on a job wants to know: is it queued, how much is ahead, is anyone working.

The broker is read through kombu, as Celery reads it. A Redis broker keeps the queue as a list
named after it (new messages pushed on the left, taken from the right) and the messages a
worker took but has not acknowledged in the `unacked` hash; each message's body is the task's
JSON `[args, kwargs, embed]`, base64-encoded, and `args[0]` is the SignBatch with its jobs.
Other brokers only say how many messages wait. A producer with an identity publishes to its
own queue `Q:NAME` (`core.queue.producer_queue`), so that is the queue its jobs are looked for in;
workers mark their activity under the CA's queue Q.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import NoPermissionError

from casign.config import Endpoints
from core.layout import folder_names
from core.queue import LEGACY_NAMES, celery_settings, message_arguments, producer_queue

_CHUNK = 200
_CONNECT_SECONDS = 2.0
# A worker that took a batch this recently is taken to be alive and busy.
BUSY_WORKER_SECONDS = 30.0


@dataclass(frozen=True)
class QueuePlace:
    """Where a queued job waits: how much is ahead of it, or that a worker holds it already."""

    jobs_ahead: int
    messages_ahead: int
    taken: bool = False  # a worker took its message and will sign it after its current batch


@dataclass(frozen=True)
class QueueHead:
    """What waits in a queue: how many messages, and when the next to be taken was sealed."""

    depth: int | None
    next_sealed_at: int | None


class QueueView:
    """A read-only look at the queue a producer (`producer`, None for an anonymous one) of the
    CA's queue `queue` publishes to."""

    def __init__(self, broker_url: str, queue: str, producer: str | None = None) -> None:
        self.broker_url = broker_url
        self.ca_queue = queue  # what workers mark their activity under
        self.queue = producer_queue(queue, producer)
        # Why the last `locate` could not search the queue, as a clause; None when it could.
        self.unsearchable: str | None = None

    @property
    def searchable(self) -> bool:
        """True when the broker lets us read the messages themselves (Redis)."""
        return self.broker_url.startswith(("redis", "rediss"))

    @contextlib.contextmanager
    def _channel(self) -> Iterator[Any]:
        from kombu import Connection

        settings = celery_settings(self.broker_url, self.queue)
        with Connection(
            self.broker_url,
            transport_options=settings.get("broker_transport_options", {}),
            ssl=settings.get("broker_use_ssl", False),
            connect_timeout=_CONNECT_SECONDS,
        ) as connection:
            connection.ensure_connection(max_retries=1)
            yield connection.default_channel

    def depth(self) -> int | None:
        """How many messages (batches) wait in the queue; None when the broker cannot be asked."""
        if self.broker_url.startswith("unused"):
            return None
        try:
            with self._channel() as channel:
                return self._depth(channel)
        except Exception:  # no broker, no such queue: not knowing is the answer
            return None

    def head(self) -> QueueHead:
        """How many messages wait, and when the one next to be taken was sealed, in one visit
        to the broker; each None when it cannot be told (a producer's Redis user may count its
        queue but not read its messages)."""
        if self.broker_url.startswith("unused"):
            return QueueHead(None, None)
        try:
            with self._channel() as channel:
                depth = self._depth(channel)
                sealed_at = None
                if self.searchable and depth:
                    with contextlib.suppress(Exception):
                        sealed_at = _sealed_at(channel.client.lindex(self.queue, -1))
                return QueueHead(depth, sealed_at)
        except Exception:  # no broker, no such queue: not knowing is the answer
            return QueueHead(None, None)

    def _depth(self, channel: Any) -> int:
        if self.searchable:
            return int(channel.client.llen(self.queue))
        return int(channel.queue_declare(self.queue, passive=True).message_count)

    def locate(self, job_ids: Collection[str]) -> dict[str, QueuePlace] | None:
        """Where each of `job_ids` waits on a Redis broker; None when it cannot be searched, and
        `unsearchable` then says why."""
        self.unsearchable = None
        if self.broker_url.startswith("unused"):
            self.unsearchable = "no broker was given (--broker or CASIGN_BROKER_URL)"
            return None
        if not self.searchable:
            self.unsearchable = "the broker is not Redis, whose messages only can be searched"
            return None
        wanted = set(job_ids)
        places: dict[str, QueuePlace] = {}
        try:
            with self._channel() as channel:
                client = channel.client
                for raw in client.hvals(channel.unacked_key):
                    with contextlib.suppress(ValueError, TypeError, IndexError):
                        for job_id in _job_ids(json.loads(raw)[0]) & wanted:
                            places[job_id] = QueuePlace(0, 0, taken=True)
                jobs_ahead = 0
                for messages_ahead, message in enumerate(_from_the_front(client, self.queue)):
                    ids = _job_ids(message)
                    for job_id in (ids & wanted) - places.keys():
                        places[job_id] = QueuePlace(jobs_ahead, messages_ahead)
                    if wanted <= places.keys():
                        break
                    jobs_ahead += len(ids)
        except NoPermissionError:
            user = urlsplit(self.broker_url).username or "default"
            self.unsearchable = (
                f"the broker's Redis user {unquote(user)!r} may not read the queue's messages "
                "(a producer's user may only push to the queue and count it: ask with the "
                "operator's or the signer's user to see where a job waits)"
            )
            return None
        except Exception as exc:
            self.unsearchable = f"the broker could not be read ({type(exc).__name__})"
            return None
        return places


def _from_the_front(client: Any, queue: str) -> Iterator[dict[str, Any]]:
    """The queue's messages, next to be taken first, read in chunks."""
    end = int(client.llen(queue)) - 1
    while end >= 0:
        start = max(0, end - _CHUNK + 1)
        for raw in reversed(client.lrange(queue, start, end)):
            with contextlib.suppress(ValueError, TypeError):
                yield json.loads(raw)
        end = start - 1


def _sealed_at(raw: str | bytes | None) -> int | None:
    """When a raw queue message's batch was sealed (unix time); None for an unsealed (an open
    signer's) or unreadable one, or no message."""
    if raw is None:
        return None
    try:
        envelope = _batch_of(json.loads(raw)).get("envelope") or {}
    except (TypeError, ValueError):
        return None
    issued_at = envelope.get("issued_at") if isinstance(envelope, dict) else None
    return issued_at if isinstance(issued_at, int) else None


def _batch_of(message: dict[str, Any]) -> dict[str, Any]:
    """The SignBatch a Celery message carries (as JSON); empty for anything else."""
    try:
        batch = message_arguments(message)[0][0]
    except (KeyError, IndexError, TypeError, ValueError):
        return {}
    return batch if isinstance(batch, dict) else {}


def _job_ids(message: dict[str, Any]) -> set[str]:
    """The job ids of one Celery message carrying a SignBatch; empty for anything else."""
    jobs = _batch_of(message).get("jobs")
    if not isinstance(jobs, list):
        return set()
    return {str(job["job_id"]) for job in jobs if isinstance(job, dict) and "job_id" in job}


def describe_age(seconds: float) -> str:
    """`3 s`, `4 min`, `2 h`, `3 days`: how long ago, for a person."""
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def worker_activity(last_active: dict[str, float], queue: str, now: float | None = None) -> str:
    """What the workers' marks in the store say about `queue`, as a clause."""
    now = time.time() if now is None else now
    when = last_active.get(queue)
    if when is not None:
        return f"a worker last started or took a batch from it {describe_age(now - when)} ago"
    others = sorted(last_active.items(), key=lambda item: -item[1])
    if others:
        other, seen = others[0]
        return (
            f"no worker has served it, though one served queue {other!r} "
            f"{describe_age(now - seen)} ago (is CASIGN_QUEUE the same on both sides?)"
        )
    return "no worker has ever served this store"


def worker_busy(last_active: dict[str, float], queue: str) -> bool:
    when = last_active.get(queue)
    return when is not None and time.time() - when <= BUSY_WORKER_SECONDS


def worker_command(endpoints: Endpoints, ca_folder: Path | None) -> str:
    """The command that starts a worker for these endpoints (passwords in URLs masked)."""
    from kombu.utils.url import maybe_sanitize_url

    words = ["casign", "worker", "--ca", str(ca_folder) if ca_folder is not None else "CA_FOLDER"]
    if endpoints.embedded_dir is None:
        words += ["--broker", str(maybe_sanitize_url(endpoints.broker_url))]
        words += ["--store", str(maybe_sanitize_url(endpoints.store_url))]
    variables = []
    # A worker given --ca takes the folder's names (casign.toml); name only what differs.
    recorded = folder_names(ca_folder) if ca_folder is not None else LEGACY_NAMES
    if endpoints.queue != recorded.queue:
        variables.append(f"CASIGN_QUEUE={shlex.quote(endpoints.queue)}")
    if endpoints.store_prefix != recorded.store_prefix:
        variables.append(f"CASIGN_STORE_PREFIX={shlex.quote(endpoints.store_prefix)}")
    return " ".join([*variables, shlex.join(words)])


def explain_silence(
    waited: float,
    view: QueueView,
    last_active: dict[str, float],
    start_worker: str,
) -> str:
    """Why no worker has taken a job in `waited` seconds, and what to do about it."""
    depth = view.depth()
    holding = f"queue {view.queue!r}" + (f" holds {depth} message(s)" if depth is not None else "")
    activity = worker_activity(last_active, view.ca_queue)
    if worker_busy(last_active, view.ca_queue):
        return f"no worker has taken a job in {waited:g} s: {holding} and {activity}, so they wait their turn"
    return (
        f"no worker has taken a job in {waited:g} s ({holding}; {activity}): is a worker "
        f"running for this CA and queue? Start one with: {start_worker}"
    )

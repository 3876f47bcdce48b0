"""Concurrent enrollments gathered into queue messages, so HTTP pays no queue trip per CSR.

Each producer identity gets a few lanes: threads that each own a `Producer` (and so a reply
list of their own). A free lane takes the waiting enrollments of its identity, waits up to the
batch window for more (never past `batch_max`), and then, in three store round trips and one
queue message for the whole group:

1. answers from the store what is finished already (a client retrying after 202 Accepted),
   each answer checked against its request and the trust anchor, as `Producer.results` does,
2. sends the jobs no worker has seen and this server did not send lately,
3. waits with `Producer.results` until each is answered or the earliest deadline passes.

Only one lane gathers at a time, so under load the group grows with what arrived while every
lane was busy instead of being split between idle lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import RefusalCode
from core.messages import JobResult, SignRequest
from est.figures import EstCounts
from est.settings import ServerSettings
from producers import Producer

log = logging.getLogger("casign.est")

_RESEND_AFTER = 60.0  # a job this server sent lately is watched, not sent again
_RECENT_MAX = 100_000
_SHORTEST_WAIT = 0.05


@dataclass(frozen=True)
class Identity:
    """Whose name signs a lane's batches: a producers.toml name and its secret source."""

    producer: str | None = None
    secret_source: str | None = None


@dataclass(frozen=True)
class StillSigning:
    """The job was not answered before its deadline; the client should ask again later."""

    job_id: str


Outcome = JobResult | StillSigning
ProducerFactory = Callable[[Identity], Producer]


@dataclass
class _Waiting:
    """One enrollment waiting for its answer in the event loop."""

    request: SignRequest
    deadline: float  # time.monotonic()
    future: asyncio.Future[Outcome]
    loop: asyncio.AbstractEventLoop

    def settle(self, outcome: Outcome) -> None:
        self.loop.call_soon_threadsafe(_set_result, self.future, outcome)


def _set_result(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():  # the handler may have given up (202) or its client gone
        future.set_result(outcome)


def unavailable(job_id: str, why: str) -> JobResult:
    """The answer to a job whose lane could not reach the queue or the store."""
    return JobResult(job_id=job_id, status="failed", code=RefusalCode.EST_UNAVAILABLE, message=why)


class RecentSubmissions:
    """Job ids this server sent in the last minute, so a retry is watched, not sent again."""

    def __init__(self) -> None:
        self._sent: dict[str, float] = {}
        self._lock = threading.Lock()

    def claim(self, job_id: str) -> bool:
        """True (and remembered) when `job_id` was not sent lately."""
        now = time.monotonic()
        with self._lock:
            sent = self._sent.get(job_id)
            if sent is not None and now - sent < _RESEND_AFTER:
                return False
            if len(self._sent) >= _RECENT_MAX:
                self._sent = {key: at for key, at in self._sent.items() if now - at < _RESEND_AFTER}
            self._sent[job_id] = now
            return True


@dataclass
class _Pool:
    """The lanes of one identity and the enrollments waiting for one of them."""

    identity: Identity
    inbox: queue.SimpleQueue[_Waiting | None] = field(default_factory=queue.SimpleQueue)
    gathering: threading.Lock = field(default_factory=threading.Lock)
    lanes: list[threading.Thread] = field(default_factory=list)
    serving: int = 0  # lanes answering a group now
    carried: int = 0  # enrollments in the groups they answer
    crowded: bool = True  # the last group had company, or went while another lane served
    counting: threading.Lock = field(default_factory=threading.Lock)


class Batcher:
    """Hands enrollments to lanes and gives each its outcome back in the event loop."""

    def __init__(
        self, connect: ProducerFactory, settings: ServerSettings, counts: EstCounts | None = None
    ) -> None:
        self._connect = connect
        self.counts = counts or EstCounts()  # what was sent, for the server's figures
        self._window = settings.batch_window_ms / 1000
        self._window_max = settings.batch_window_max_ms / 1000
        self._batch_max = settings.batch_max
        self._lanes = settings.lanes
        self._pools: dict[Identity, _Pool] = {}
        self._recent = RecentSubmissions()
        self._lock = threading.Lock()
        self._closed = False

    async def submit(self, identity: Identity, request: SignRequest, deadline: float) -> Outcome:
        """The job's result, or StillSigning once `deadline` (time.monotonic) has passed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pool(identity).inbox.put(_Waiting(request, deadline, future, loop))
        # The lane settles at the deadline; this timer, half a second later, covers a lane still
        # busy with an earlier batch. Whichever comes first answers; the other finds it done.
        timer = loop.call_later(
            max(0.0, deadline - time.monotonic()) + 0.5,
            _set_result,
            future,
            StillSigning(request.job_id),
        )
        try:
            return await future
        finally:
            timer.cancel()

    def _pool(self, identity: Identity) -> _Pool:
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            pool = self._pools.get(identity)
            if pool is None:
                pool = self._pools[identity] = _Pool(identity)
                for number in range(self._lanes):
                    lane = threading.Thread(
                        target=self._run_lane,
                        args=(pool,),
                        name=f"est-lane-{identity.producer or 'open'}-{number}",
                        daemon=True,
                    )
                    lane.start()
                    pool.lanes.append(lane)
            return pool

    def close(self, timeout: float = 10.0) -> None:
        """Stop every lane once it has finished its batch."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            for _ in pool.lanes:
                pool.inbox.put(None)
        for pool in pools:
            for lane in pool.lanes:
                lane.join(timeout)

    def _gather(self, pool: _Pool) -> list[_Waiting] | None:
        """The next group: the first enrollment waiting, and what arrived within the window.

        The lane sleeps through the window and then takes what came, rather than waking for
        each arrival: one thread switch per window, not one per enrollment. While enrollments
        keep coming (clients answered by the last group asking again, say), it waits another
        window, up to `batch_window_max_ms` in all: one message for the wave, where a single
        window would cut it into several small ones, each costing the worker more per
        certificate. A group stops growing at its lane's share of the enrollments in hand
        (those the serving lanes carry and its own), so that the lanes' groups stay about
        equal and every lane, and so every worker process, keeps signing, rather than one
        wave gathering everyone while the other lanes idle. On an idle service (the last group was one enrollment, and no other lane
        is answering one) there is no one to wait for: the enrollment goes at once.
        """
        with pool.gathering:
            first = pool.inbox.get()
            if first is None:
                return None
            group = [first]
            if self._window <= 0 or not (pool.crowded or pool.serving):
                self._take_waiting(pool, group)
            else:
                until = time.monotonic() + max(self._window, self._window_max)
                while True:
                    time.sleep(max(0.0, min(self._window, until - time.monotonic())))
                    arrived = self._take_waiting(pool, group)
                    if (
                        not arrived
                        or len(group) >= self._batch_max
                        or (
                            self._lanes > 1
                            and len(group) * self._lanes >= pool.carried + len(group)
                        )
                        or time.monotonic() >= until
                    ):
                        break
            pool.crowded = len(group) > 1 or pool.serving > 0
            return group

    def _take_waiting(self, pool: _Pool, group: list[_Waiting]) -> int:
        """Move what waits in the inbox into `group` (never past `batch_max`); how many."""
        taken = 0
        while len(group) < self._batch_max:
            try:
                item = pool.inbox.get_nowait()
            except queue.Empty:
                break
            if item is None:
                pool.inbox.put(None)  # a stop meant for a lane: leave it for one
                break
            group.append(item)
            taken += 1
        return taken

    def _run_lane(self, pool: _Pool) -> None:
        producer: Producer | None = None
        try:
            while (group := self._gather(pool)) is not None:
                try:
                    if producer is None:
                        producer = self._connect(pool.identity)
                    with pool.counting:
                        pool.serving += 1
                        pool.carried += len(group)
                    try:
                        served = self._serve(producer, group)
                    finally:
                        with pool.counting:
                            pool.serving -= 1
                            pool.carried -= len(group)
                    if not served:
                        _close(producer)  # forget the jobs it still waits for
                        producer = None
                except Exception as exc:  # the queue or store failed: answer, reconnect
                    log.warning("EST lane for %s failed: %s", pool.identity.producer, exc)
                    for item in group:
                        item.settle(unavailable(item.request.job_id, "the signing queue failed"))
                    _close(producer)
                    producer = None
        finally:
            _close(producer)

    def _serve(self, producer: Producer, group: list[_Waiting]) -> bool:
        """Answer `group`; False when some job was still unanswered at the deadline."""
        waiting: dict[str, list[_Waiting]] = {}
        for item in group:
            waiting.setdefault(item.request.job_id, []).append(item)
        requests = {job_id: items[0].request for job_id, items in waiting.items()}
        answered = _Answers()
        # Checked as every producer checks an answer: the CSR's key, the trust anchor.
        for result in producer.answers_in_store(requests.values()).values():
            answered.add(waiting.pop(result.job_id), result)
        answered.deliver()
        if not waiting:
            return True
        known = producer.store.known_jobs(waiting)
        fresh = [
            requests[job_id]
            for job_id in waiting
            if job_id not in known and self._recent.claim(job_id)
        ]
        if fresh:
            messages_before = producer.messages_sent
            producer.submit_many(fresh, batch_size=len(fresh))
            self.counts.sent(len(fresh), producer.messages_sent - messages_before)
        producer.expect(requests[job_id] for job_id in waiting)  # sent by another lane, say
        deadline = min(item.deadline for items in waiting.values() for item in items)
        timeout = max(_SHORTEST_WAIT, deadline - time.monotonic())
        try:
            # A queue message's jobs are published together, so their answers arrive together:
            # they are handed to the event loop in one go.
            for result in producer.results(list(waiting), timeout=timeout):
                items = waiting.pop(result.job_id, None)
                if items:
                    answered.add(items, result)
        except TimeoutError:
            for job_id, items in waiting.items():
                answered.add(items, StillSigning(job_id))
            return False
        finally:
            answered.deliver()
        return True


class _Answers:
    """Outcomes gathered in a lane, handed to each event loop in one callback."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Waiting, Outcome]]] = {}

    def add(self, items: list[_Waiting], outcome: Outcome) -> None:
        for item in items:
            self._by_loop.setdefault(item.loop, []).append((item, outcome))

    def deliver(self) -> None:
        for loop, pairs in self._by_loop.items():
            loop.call_soon_threadsafe(_set_results, pairs)
        self._by_loop = {}


def _set_results(pairs: list[tuple[_Waiting, Outcome]]) -> None:
    for item, outcome in pairs:
        _set_result(item.future, outcome)


def _close(producer: Producer | None) -> None:
    if producer is not None:
        with contextlib.suppress(Exception):
            producer.close()

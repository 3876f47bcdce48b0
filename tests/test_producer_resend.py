"""The producer sends again the jobs no worker recorded, however its caller waits for results."""

from __future__ import annotations

import contextlib
import itertools
import json
import time

import redis

from core.queue import message_arguments
from producers import Producer
from store.results import ResultsStore
from tests.csrs import make_csr


def test_a_lost_job_is_sent_again_when_results_are_awaited_in_short_rounds(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    broker = redis.Redis.from_url(redis_url)
    with Producer(
        broker_url, redis_url, store_prefix=store.prefix, queue=queue, resend_after=1.0
    ) as producer:
        job_id = producer.submit(make_csr("lost.example.com"))
        assert broker.llen(queue) == 1
        broker.delete(queue)  # the message is lost, as when Redis dies under its consumer
        deadline = time.monotonic() + 10
        while broker.llen(queue) == 0:
            assert time.monotonic() < deadline, "the lost job was never sent again"
            with contextlib.suppress(TimeoutError):  # rounds shorter than resend_after
                list(producer.results([job_id], timeout=0.4))
        resent = broker.lindex(queue, 0)
    broker.delete(queue)
    assert resent is not None
    (batch,) = message_arguments(json.loads(resent))[0]
    assert job_id in {job["job_id"] for job in batch["jobs"]}


def _poll(producer: Producer, job_ids: list[str], seconds: float, rounds: float = 0.1) -> None:
    """Wait for results in short rounds for `seconds` (none come: no worker runs)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            list(producer.results(job_ids, timeout=rounds))


def _job_ids_of(raw: bytes) -> set[str]:
    (batch,) = message_arguments(json.loads(raw))[0]
    return {job["job_id"] for job in batch["jobs"]}


def test_a_job_still_queued_is_never_sent_again_and_one_taken_out_is(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    """The queue holds the producer's three messages: however long the silence, none is sent
    again. Once the oldest is taken and lost (as by a worker killed holding it), the queue is
    shorter than the messages pushed after it, so that one, and only that one, is sent again."""
    broker = redis.Redis.from_url(redis_url)
    with Producer(
        broker_url, redis_url, store_prefix=store.prefix, queue=queue, resend_after=0.3
    ) as producer:
        requests = [producer.request(make_csr(f"q{n}.example.com")) for n in range(3)]
        job_ids = producer.submit_many(requests, batch_size=1)
        _poll(producer, job_ids, 1.5)
        assert broker.llen(queue) == 3, "a queued job was sent again"
        taken = broker.rpop(queue)  # the oldest message
        assert isinstance(taken, bytes) and _job_ids_of(taken) == {job_ids[0]}
        deadline = time.monotonic() + 10
        while broker.llen(queue) < 3:
            assert time.monotonic() < deadline, "the lost job was never sent again"
            _poll(producer, job_ids, 0.2)
        newest = broker.lindex(queue, 0)
        assert isinstance(newest, bytes) and _job_ids_of(newest) == {job_ids[0]}
        _poll(producer, job_ids, 1.5)
        assert broker.llen(queue) == 3, "a job was sent again while its message was queued"
    broker.delete(queue)


def test_each_silent_round_doubles_the_wait_before_the_next_resend(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    broker = redis.Redis.from_url(redis_url)
    with Producer(
        broker_url, redis_url, store_prefix=store.prefix, queue=queue, resend_after=0.25
    ) as producer:
        job_id = producer.submit(make_csr("backoff.example.com"))
        began = time.monotonic()
        resent_at: list[float] = []
        broker.delete(queue)  # lost at once, and again after each resend
        while len(resent_at) < 4:
            assert time.monotonic() - began < 15, f"resends at {resent_at}"
            _poll(producer, [job_id], 0.05, rounds=0.02)
            if broker.delete(queue):
                resent_at.append(time.monotonic() - began)
    gaps = [later - earlier for earlier, later in itertools.pairwise([0.0, *resent_at])]
    # 0.25 s, then 0.5, 1 and 2 s: each wait twice the one before (give or take a poll round).
    for earlier, later in itertools.pairwise(gaps):
        assert later > 1.5 * earlier, gaps

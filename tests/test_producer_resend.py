"""The producer sends again the jobs no worker recorded, however its caller waits for results."""

from __future__ import annotations

import base64
import contextlib
import json
import time

import redis

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
    assert job_id in base64.b64decode(json.loads(resent)["body"]).decode()

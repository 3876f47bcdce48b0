"""The signers' figures: counted by workers into the store, served by `casign metrics`, shown
by `casign top`; the counts equal what was sent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from casign.figures import read_figures
from casign.metrics_server import exposition
from casign.queue_view import QueueHead, QueueView
from casign.top import render
from ocsp.figures import AnswerCounts, ResponderFigures
from producers import Producer
from store.keys import KeySpace
from store.metrics import MetricsLedger, Sample
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.csrs import make_csr
from tests.workers import WorkerProcess
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.crl import make_crl
from worker.figures import STEP_BUCKETS, STEP_SECONDS, SignerFigures, StepClock


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_figures_add_up_across_writers_and_parse_as_prometheus() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    ledger = MetricsLedger(client, KeySpace("t"))
    for _ in range(2):  # two worker processes writing to one store
        figures = SignerFigures(ledger, "file")
        figures.issued(["server_cert", "server_cert", "usr_cert"])
        figures.refused(["policy.bad_name"])
        figures.observe(STEP_SECONDS, 0.0003, STEP_BUCKETS, 4, step="sign")
        figures.write_now()
    store = ResultsStore(client, "t")
    scraped = _samples(exposition(lambda: read_figures(store)))
    assert scraped[("casign_issued_total", (("backend", "file"), ("profile", "server_cert")))] == 4
    assert scraped[("casign_issued_total", (("backend", "file"), ("profile", "usr_cert")))] == 2
    assert scraped[("casign_refused_total", (("code", "policy.bad_name"),))] == 2
    # cumulative buckets: 0.0003 falls in le=0.0005 and every bucket above, never below
    assert scraped[("casign_step_seconds_bucket", (("le", "0.00025"), ("step", "sign")))] == 0
    assert scraped[("casign_step_seconds_bucket", (("le", "0.0005"), ("step", "sign")))] == 8
    assert scraped[("casign_step_seconds_bucket", (("le", "+Inf"), ("step", "sign")))] == 8
    assert scraped[("casign_step_seconds_count", (("step", "sign"),))] == 8
    assert scraped[("casign_step_seconds_sum", (("step", "sign"),))] == pytest.approx(0.0024)


def test_a_failed_write_keeps_the_counts_for_the_next() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    ledger = MetricsLedger(client, KeySpace("t"))
    figures = SignerFigures(ledger, "file")
    figures.issued(["server_cert"])
    client.set("t:metrics", "not a hash")  # every HINCRBYFLOAT now fails
    figures.write_now()
    client.delete("t:metrics")
    figures.issued(["server_cert"])
    figures.write_now()
    assert (
        ledger.totals()[Sample.of("casign_issued_total", backend="file", profile="server_cert")]
        == 2
    )


def test_step_clock_records_each_lap_in_order() -> None:
    clock = StepClock()
    for step in ("admit", "sign", "publish"):
        clock.lap(step)
    assert [step for step, _ in clock.laps] == ["admit", "sign", "publish"]
    assert all(seconds >= 0 for _, seconds in clock.laps)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> dict[str, str]:
    return {
        **os.environ,
        "CASIGN_BROKER_URL": broker_url,
        "CASIGN_STORE_URL": redis_url,
        "CASIGN_STORE_PREFIX": store.prefix.rstrip(":"),
        "CASIGN_QUEUE": queue,
    }


@pytest.mark.slow
def test_metrics_and_top_count_what_was_sent(
    worker: WorkerProcess,
    ca_folder: CAFolder,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
) -> None:
    producer = Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue)
    requests = [
        producer.request(make_csr(f"host{index}.example.com"), profile="server_cert")
        for index in range(12)
    ]
    requests += [  # refused by policy: not a name the profile allows, and an unknown profile
        producer.request(make_csr("bad_name!.example.com"), profile="server_cert"),
        producer.request(make_csr("x.example.com"), profile="no_such_profile"),
        producer.request(make_csr("y.example.com"), profile="no_such_profile"),
    ]
    results = list(producer.results(producer.submit_many(requests), timeout=120))
    producer.close()
    sent = Counter(result.code for result in results if result.status == "refused")
    issued = sum(result.status == "issued" for result in results)
    assert issued == 12 and sum(sent.values()) == 3

    environment = _environment(broker_url, redis_url, store, queue)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "casign", "metrics", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        scraped = _scrape_when_written(f"http://127.0.0.1:{port}/metrics", issued, server)
    finally:
        server.terminate()
        server.wait(timeout=10)
    by_name: Counter[str] = Counter()
    for (name, labels), value in scraped.items():
        if name == "casign_issued_total":
            assert dict(labels) == {"backend": "file", "profile": "server_cert"}
        by_name[name] += int(value)
    assert by_name["casign_issued_total"] == 12
    refused = {
        dict(labels)["code"]: int(value)
        for (name, labels), value in scraped.items()
        if name == "casign_refused_total"
    }
    assert refused == dict(sent)
    assert by_name["casign_batch_jobs_count"] >= 1
    steps = {
        dict(labels)["step"] for (name, labels) in scraped if name == "casign_step_seconds_count"
    }
    assert {"admit", "sign", "verify", "publish"} <= steps
    assert scraped[("casign_queue_depth", ())] == 0
    assert scraped[("casign_workers_seen", ())] >= 1
    assert 300 < scraped[("casign_intermediate_days_left", ())] < 20 * 366

    shown = subprocess.run(
        [sys.executable, "-m", "casign", "top", "--once"],
        env={**environment, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "issued        12" in " ".join(shown.split("\n")) or _row(shown, "issued") == "12"
    for code, count in sent.items():
        assert _row(shown, code) == str(count)
    assert _row(shown, "server_cert") == "12"


def _row(screen: str, first: str) -> str | None:
    """The last word of the first line of `screen` whose first cell is `first`."""
    for line in screen.splitlines():
        cells = line.replace("│", " ").split()
        if cells and cells[0] == first:
            return cells[-1]
    return None


def _scrape_when_written(
    url: str, issued: int, server: subprocess.Popen[bytes]
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape until the workers' last write (at most a second after their batch) shows."""
    deadline = time.monotonic() + 30
    while True:
        if server.poll() is not None:
            raise AssertionError(f"casign metrics stopped: {server.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                scraped = _samples(response.read())
            total = sum(v for (name, _), v in scraped.items() if name == "casign_issued_total")
            if total >= issued or time.monotonic() > deadline:
                return scraped
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def test_top_renders_a_reading() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    store = ResultsStore(client, "t")
    figures = SignerFigures(store.metrics, "pkcs11")
    figures.issued(["usr_cert"] * 7)
    figures.refused(["rate.limited"] * 2)
    figures.write_now()
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(render(read_figures(store), None, "casign top"))
    screen = console.export_text()
    assert _row(screen, "issued") == "7"
    assert _row(screen, "rate.limited") == "2"
    assert _row(screen, "usr_cert") == "7"


def test_each_ocsp_responders_figures_are_served_and_shown_until_they_lapse() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    store = ResultsStore(client, "t")
    held = ResponderFigures.of(3, 4200, time.time() - 600, AnswerCounts(5, 3, 1, 0))
    empty = ResponderFigures.of(0, 0, None, AnswerCounts(signed=2))
    store.ocsp_figures.publish("a:2560", held.to_json(), 30)
    store.ocsp_figures.publish("b:2560", empty.to_json(), 30)
    store.ocsp_figures.publish("c:2560", "not figures", 30)  # left out, never an error
    scraped = _samples(exposition(lambda: read_figures(store)))
    ocsp = {key: value for key, value in scraped.items() if key[0].startswith("casign_ocsp_")}
    a, b = (("responder", "a:2560"),), (("responder", "b:2560"),)
    assert 600 <= ocsp.pop(("casign_ocsp_cache_age_seconds", a)) < 610  # b holds none: absent
    assert ocsp.pop(("casign_ocsp_cache_answers", a)) == 3
    assert ocsp.pop(("casign_ocsp_cache_answers", b)) == 0
    assert ocsp.pop(("casign_ocsp_cache_bytes", a)) == 4200
    assert ocsp.pop(("casign_ocsp_cache_bytes", b)) == 0
    assert ocsp.pop(("casign_ocsp_answers_total", (*a, ("source", "cache")))) == 5
    assert ocsp.pop(("casign_ocsp_answers_total", (*a, ("source", "signed")))) == 3
    assert ocsp.pop(("casign_ocsp_answers_total", (*b, ("source", "cache")))) == 0
    assert ocsp.pop(("casign_ocsp_answers_total", (*b, ("source", "signed")))) == 2
    assert ocsp.pop(("casign_ocsp_renewals_total", (("cause", "due"), *a))) == 1
    assert ocsp.pop(("casign_ocsp_renewals_total", (("cause", "changed"), *a))) == 0
    assert ocsp.pop(("casign_ocsp_renewals_total", (("cause", "due"), *b))) == 0
    assert ocsp.pop(("casign_ocsp_renewals_total", (("cause", "changed"), *b))) == 0
    assert ocsp == {}

    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(render(read_figures(store), None, "casign top"))
    row = next(line for line in console.export_text().splitlines() if line.startswith("OCSP"))
    assert "2 responder(s), 3 answers held, oldest 10 min" in row
    assert "5 answered from cache, 5 signed" in row

    client.delete(store.keys.ocsp_figures("a:2560"), store.keys.ocsp_figures("b:2560"))
    assert read_figures(store).ocsp_responders == {}  # lapsed: no figures, no OCSP families
    assert not any(
        name.startswith("casign_ocsp_")
        for name, _ in _samples(exposition(lambda: read_figures(store)))
    )


def test_the_crl_age_is_read_from_the_newest_crl_published(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    assert read_figures(store).crl_age_seconds is None  # no CRL yet: the gauge is left out
    revocations = RevocationStore(store)
    published = make_crl(authority, revocations)
    revocations.publish_crl(published.crl, published.number)
    age = read_figures(store).crl_age_seconds
    expected = time.time() - published.crl.last_update_utc.timestamp()
    assert age is not None and abs(age - expected) < 5


def test_the_queue_head_tells_the_depth_and_when_the_next_batch_was_sealed(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str, tmp_path: Path
) -> None:
    secret = tmp_path / "web.secret"
    secret.write_text("s" * 64)
    secret.chmod(0o400)
    producer = Producer(
        broker_url,
        redis_url,
        store_prefix=store.prefix,
        queue=queue,
        identity="web",
        secret_source=f"file:{secret}",
        ca_identity="c" * 64,
    )
    view = QueueView(broker_url, queue, "web")
    assert view.head() == QueueHead(0, None)
    before = int(time.time())
    producer.submit_many([producer.request(make_csr("head.example.com"))])  # no worker: it waits
    producer.close()
    head = view.head()
    assert head.depth == 1 and head.next_sealed_at is not None
    assert before <= head.next_sealed_at <= time.time()
    reading = read_figures(store, [view])
    assert reading.queue_depth == 1 and reading.oldest_waiting_seconds is not None
    store.client.delete(view.queue)

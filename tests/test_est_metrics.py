"""The EST server's figures: counted by a real `casign est` as `curl` enrolls and is refused,
written to the store once a second, served by a real `casign metrics` and shown by `casign top`;
the counts equal what was sent, and what a reader finds that is not figures is left out."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from casign.figures import read_figures
from casign.metrics_server import exposition
from casign.top import render
from core.errors import RefusalCode
from est.figures import OTHER, EstCounts, EstFigures, figures_by_server, server_name
from store.figures_board import MAX_FIGURES_BYTES
from store.results import ResultsStore
from tests.est_service import (
    CurlAnswer,
    EstDeployment,
    add_password_client,
    basic,
    csr_der,
    issue_server_certificate,
    make_deployment,
    running,
)

DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "casign-dashboard.json"
Label = tuple[str, str]
SampleKey = tuple[str, tuple[Label, ...]]
Scrape = dict[SampleKey, float]
HOST = socket.gethostname()


def _samples(body: bytes | str) -> Scrape:
    text = body.decode() if isinstance(body, bytes) else body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _answered(server: Label, operation: str, status: int) -> SampleKey:
    return (
        "casign_est_requests_total",
        (("operation", operation), server, ("status", str(status))),
    )


def _refused(server: Label, code: str) -> SampleKey:
    return ("casign_est_refused_total", (("code", code), server))


def _counted(server: Label, what: str) -> SampleKey:
    return (f"casign_est_{what}_total", (server,))


def _est_samples(scrape: Scrape) -> Scrape:
    return {key: value for key, value in scrape.items() if key[0].startswith("casign_est_")}


# --- the counts and the document, alone ----------------------------------------------------


def test_counts_become_figures_that_read_back_the_same() -> None:
    counts = EstCounts()
    counts.answered("simpleenroll", 200, None)
    counts.answered("simpleenroll", 401, RefusalCode.EST_BAD_CREDENTIALS)
    counts.answered("simpleenroll", 202, None)
    counts.answered("fullcmc", 404, RefusalCode.EST_UNKNOWN_OPERATION)  # the client's word
    counts.answered(None, 404, "Not A Code\n")  # never a label as it came
    counts.sent(5, 2)
    figures = counts.figures()
    assert figures.requests == {
        ("simpleenroll", 200): 1,
        ("simpleenroll", 401): 1,
        ("simpleenroll", 202): 1,
        (OTHER, 404): 2,
    }
    assert figures.refused == {
        RefusalCode.EST_BAD_CREDENTIALS: 1,
        RefusalCode.EST_UNKNOWN_OPERATION: 1,
        OTHER: 1,
    }
    assert (figures.pending, figures.enrollments_queued, figures.messages_sent) == (1, 5, 2)
    assert EstFigures.from_json(figures.to_json()) == figures


def test_a_hostile_document_is_left_out_or_trimmed_never_an_error() -> None:
    good = {
        "requests": [["cacerts", 200, 2]],
        "refused": {"est.bad_credentials": 1},
        "pending": 0,
        "enrollments_queued": 0,
        "messages_sent": 0,
    }
    for damaged in (
        "not figures",
        "[]",
        "null",
        "[" * 100_000,  # nested past the parser's recursion limit
        json.dumps({**good, "pending": -1}),
        json.dumps({**good, "messages_sent": True}),
        json.dumps({**good, "enrollments_queued": 2**70}),
        json.dumps({**good, "requests": {"cacerts": 1}}),
        json.dumps({key: value for key, value in good.items() if key != "refused"}),
    ):
        assert EstFigures.from_json(damaged) is None, damaged[:80]
    trimmed = {
        **good,
        "requests": [
            ["cacerts", 200, 2],
            ["cacerts", 200],  # not a row
            ["<script>", 200, 1],  # not an operation
            ["cacerts", 999, 1],  # not a status
            ["cacerts", "200", 1],
            ["csrattrs", 200, -4],
        ],
        "refused": {"est.bad_credentials": 1, "Bad Code": 3, "est.x": "many"},
    }
    assert EstFigures.from_json(json.dumps(trimmed)) == EstFigures.from_json(json.dumps(good))
    assert figures_by_server(
        {
            f"{HOST}:8443": json.dumps(good),
            f"web@{HOST}:8443": json.dumps(good),
            "a name\nwith a line": json.dumps(good),
            "no-port": json.dumps(good),
            f"{HOST}:9443": "not figures",
        }
    ).keys() == {f"{HOST}:8443", f"web@{HOST}:8443"}


def test_the_server_is_named_by_the_producer_whose_redis_user_it_runs_as() -> None:
    prefix = "casign-test:abc"
    as_producer = server_name("redis://casign-test_abc-producer-web:pw@host:6379/0", prefix, 8443)
    assert as_producer == f"web@{HOST}:8443"
    for url in (
        "redis://127.0.0.1:6379/0",
        "redis://:pw@127.0.0.1:6379/0",
        "redis://casign-test_abc-operator:pw@host/0",
        "redis://casign-test_other-producer-web:pw@host/0",  # another CA's producer
    ):
        assert server_name(url, prefix, 8443) == f"{HOST}:8443", url


def test_each_est_servers_figures_are_served_and_shown_until_they_lapse() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    store = ResultsStore(client, "t")
    counts = EstCounts()
    for _ in range(3):
        counts.answered("simpleenroll", 200, None)
    counts.answered("simpleenroll", 401, RefusalCode.EST_BAD_CREDENTIALS)
    counts.answered("simpleenroll", 202, None)
    counts.sent(4, 2)
    store.est_figures.publish(f"web@{HOST}:8443", counts.figures().to_json(), 30)
    store.est_figures.publish(f"{HOST}:9443", "not figures", 30)  # left out, never an error
    padded = counts.figures().to_json() + " " * MAX_FIGURES_BYTES  # figures, read no further
    store.est_figures.publish(f"{HOST}:9444", padded, 30)
    scraped = _est_samples(_samples(exposition(lambda: read_figures(store))))
    server = ("server", f"web@{HOST}:8443")
    assert scraped == {
        _answered(server, "simpleenroll", 200): 3,
        _answered(server, "simpleenroll", 202): 1,
        _answered(server, "simpleenroll", 401): 1,
        _refused(server, RefusalCode.EST_BAD_CREDENTIALS): 1,
        _counted(server, "pending"): 1,
        _counted(server, "enrollments_queued"): 4,
        _counted(server, "messages_sent"): 2,
    }

    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(read_figures(store), None, "casign top"))
    rows = [line for line in console.export_text().splitlines() if line.startswith("EST")]
    assert len(rows) == 1, rows
    assert f"web@{HOST}:8443: 5 answered, 1 pending" in rows[0]
    assert "4 enrollments queued in 2 message(s); refused 1 (est.bad_credentials 1)" in rows[0]

    client.delete(store.keys.est_figures(f"web@{HOST}:8443"))
    assert read_figures(store).est_servers == {}  # lapsed: no figures, no EST families
    assert _est_samples(_samples(exposition(lambda: read_figures(store)))) == {}


# --- a real casign est, curl, casign metrics and casign top ------------------------------------


@pytest.fixture(scope="module")
def est(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str, redis_url: str
) -> Iterator[EstDeployment]:
    deployment = make_deployment(
        tmp_path_factory.mktemp("est-metrics"), broker_url, redis_url, "wait_seconds = 60\n"
    )
    issue_server_certificate(deployment)
    add_password_client(deployment, "fleet")
    add_password_client(deployment, "limited", "--rate", "0.01", "--burst", "1")
    deployment.start_server()
    deployment.env["COLUMNS"] = "200"  # casign top's lines unwrapped
    yield from running(deployment)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.1)


def _scrape(port: int) -> Scrape | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return _samples(response.read())
    except OSError:
        return None  # not listening yet


def _post(est: EstDeployment, path: Path, *args: str, label: str | None = None) -> CurlAnswer:
    return est.curl(
        *args, "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{path}",
        est.endpoint("simpleenroll", label),
    )  # fmt: skip


def _b64_csr(directory: Path, common_name: str) -> Path:
    import base64

    path = directory / f"{common_name}.b64"
    path.write_bytes(base64.b64encode(csr_der(common_name)))
    return path


@pytest.mark.slow
def test_metrics_count_what_the_est_server_answered_and_refused(
    est: EstDeployment, tmp_path: Path
) -> None:
    fleet = ("--user", basic(est, "fleet"))
    answers = [_post(est, _b64_csr(tmp_path, f"m{n}@example.com"), *fleet) for n in range(3)]
    assert [answer.status for answer in answers] == [200, 200, 200]
    assert est.curl(est.endpoint("cacerts")).status == 200
    assert est.curl(est.endpoint("csrattrs")).status == 200
    not_base64 = tmp_path / "not-base64"
    not_base64.write_bytes(b"this is not base64 at all!\n")
    good = _b64_csr(tmp_path, "probe@example.com")
    refused = {
        "not base64": _post(est, not_base64, *fleet),
        "wrong password": _post(est, good, "--user", "fleet:not-the-password"),
        "unknown label": _post(est, good, *fleet, label="nosuch"),
        "unknown operation": est.curl(est.endpoint("fullcmc")),
    }
    assert {name: (answer.status, answer.code) for name, answer in refused.items()} == {
        "not base64": (400, RefusalCode.EST_NOT_BASE64),
        "wrong password": (401, RefusalCode.EST_BAD_CREDENTIALS),
        "unknown label": (404, RefusalCode.EST_UNKNOWN_LABEL),
        "unknown operation": (404, RefusalCode.EST_UNKNOWN_OPERATION),
    }
    limited = ("--user", basic(est, "limited"))
    assert _post(est, _b64_csr(tmp_path, "l1@example.com"), *limited).status == 200
    over = _post(est, _b64_csr(tmp_path, "l2@example.com"), *limited)
    assert (over.status, over.code) == (429, RefusalCode.AUTH_RATE_LIMITED)
    # Garbage beside the real figures, as a hostile writer could leave it.
    est.store.est_figures.publish(f"{HOST}:1", "not figures", 30)
    est.store.est_figures.publish("not a server name", "{}", 30)

    port = _free_port()
    metrics = subprocess.Popen(
        [sys.executable, "-m", "casign", "metrics", "--port", str(port)],
        env=est.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    server = ("server", f"{HOST}:{est.url.rsplit(':', 1)[1]}")
    expected = {
        _answered(server, "simpleenroll", 200): 4,
        _answered(server, "simpleenroll", 400): 1,
        _answered(server, "simpleenroll", 401): 1,
        _answered(server, "simpleenroll", 404): 1,
        _answered(server, "simpleenroll", 429): 1,
        _answered(server, "cacerts", 200): 1,
        _answered(server, "csrattrs", 200): 1,
        _answered(server, OTHER, 404): 1,
        _refused(server, RefusalCode.EST_NOT_BASE64): 1,
        _refused(server, RefusalCode.EST_BAD_CREDENTIALS): 1,
        _refused(server, RefusalCode.EST_UNKNOWN_LABEL): 1,
        _refused(server, RefusalCode.EST_UNKNOWN_OPERATION): 1,
        _refused(server, RefusalCode.AUTH_RATE_LIMITED): 1,
        _counted(server, "pending"): 0,
        # Sent one by one, each enrollment went in a message of its own.
        _counted(server, "enrollments_queued"): 4,
        _counted(server, "messages_sent"): 4,
    }
    seen: list[Scrape] = []

    def counted() -> bool:  # the server writes its figures at most a second later
        scraped = _scrape(port)
        if scraped is None:
            assert metrics.poll() is None, metrics.stderr.read() if metrics.stderr else ""
            return False
        seen.append(_est_samples(scraped))
        return seen[-1] == expected

    try:
        _wait_until(counted, "the EST server's counts to show in casign metrics", 20)
    except AssertionError:
        raise AssertionError(f"last scrape: {seen[-1] if seen else None}") from None
    finally:
        metrics.terminate()
        metrics.wait(timeout=10)

    dashboard = DASHBOARD.read_text(encoding="utf-8")
    charted = set(re.findall(r"casign_est_[a-z_]+", dashboard))
    assert charted and charted <= {name for name, _ in seen[-1]}, "the dashboard's names"

    top = est.casign("top", "--once")
    rows = [line for line in top.stdout.splitlines() if line.startswith("EST")]
    assert len(rows) == 1, top.stdout
    assert f"{server[1]}: 11 answered, 0 pending" in rows[0], rows[0]
    assert "4 enrollments queued in 4 message(s); refused 5" in rows[0], rows[0]

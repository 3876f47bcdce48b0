"""The OCSP responder's figures: written by a real `casign ocsp` to the store, served by a real
`casign metrics` and shown by `casign top`; the counts equal what was asked, and the figures of
a responder that died lapse with their TTL."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from prometheus_client.parser import text_string_to_metric_families

from store.figures_board import host_port_name
from store.results import ResultsStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner
from worker.ocsp_delegate import ensure_ocsp_certificate

DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "casign-dashboard.json"
FIGURES_TTL_SECONDS = 2.0
VALIDITY_SECONDS = 12 * 3600
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def metrics_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    return make_alice_ca(tmp_path_factory.mktemp("ocsp-metrics") / "ca")


@pytest.fixture(scope="module")
def metrics_authority(metrics_ca: CAFolder) -> SigningAuthority:
    return load_authority(metrics_ca.root)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment(redis_url: str, store: ResultsStore) -> dict[str, str]:
    return {
        **os.environ,
        "CASIGN_STORE_URL": redis_url,
        "CASIGN_STORE_PREFIX": store.prefix.rstrip(":"),
        "COLUMNS": "200",
    }


def _casign(environment: dict[str, str], *arguments: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "casign", *arguments],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, each killed (if still running) when it ends."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def _wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.1)


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(process.stderr.read().decode() if process.stderr else "stopped")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def _ocsp_samples(scrape: Scrape) -> Scrape:
    return {key: value for key, value in scrape.items() if key[0].startswith("casign_ocsp_")}


def _issue(
    authority: SigningAuthority, store: ResultsStore, names: list[str]
) -> list[x509.Certificate]:
    results = BatchSigner(authority, store).sign_batch(
        [job(name, make_csr(name)) for name in names]
    )
    assert all(result.ok and result.certificate_pem for result in results)
    return [x509.load_pem_x509_certificate(str(r.certificate_pem).encode()) for r in results]


def _ask(port: int, certificate: x509.Certificate, issuer: x509.Certificate, nonce: bool) -> None:
    builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/ocsp",
        data=builder.build().public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = ocsp.load_der_ocsp_response(response.read())
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD


@pytest.mark.slow
def test_metrics_show_the_responders_cache_and_answers_and_drop_a_dead_responder(
    metrics_ca: CAFolder,
    metrics_authority: SigningAuthority,
    store: ResultsStore,
    redis_url: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    ensure_ocsp_certificate(metrics_ca, metrics_authority, store)
    first, second, third = _issue(
        metrics_authority, store, ["a.example.com", "b.example.com", "c.example.com"]
    )
    issuer = metrics_authority.intermediate
    environment = _environment(redis_url, store)
    ocsp_port, metrics_port = _free_port(), _free_port()
    responder = _casign(
        environment, "ocsp", "--ca", str(metrics_ca.root), "--port", str(ocsp_port),
        "--validity", "12h", "--figures-ttl", str(FIGURES_TTL_SECONDS),
    )  # fmt: skip
    processes.append(responder)
    server = _casign(environment, "metrics", "--port", str(metrics_port))
    processes.append(server)
    _wait_until(lambda: _listening(ocsp_port, responder), "casign ocsp to listen")
    _wait_until(lambda: _listening(metrics_port, server), "casign metrics to listen")

    for certificate in (first, second, third):  # each signed when first asked
        _ask(ocsp_port, certificate, issuer, nonce=False)
    for certificate in (first, second):  # then served from the cache
        _ask(ocsp_port, certificate, issuer, nonce=False)
    _ask(ocsp_port, third, issuer, nonce=True)  # signed for its nonce, and not kept

    name = host_port_name(ocsp_port)
    answers = ("casign_ocsp_answers_total", (("responder", name), ("source", "cache")))
    scraped: Scrape = {}

    def written() -> bool:  # the responder writes its figures at most a second later
        nonlocal scraped
        scraped = _scrape(metrics_port)
        return scraped.get(answers) == 2

    _wait_until(written, "the responder's figures to show")
    figures = {
        (metric, dict(labels).get("source") or dict(labels).get("cause")): value
        for (metric, labels), value in _ocsp_samples(scraped).items()
        if dict(labels)["responder"] == name
    }
    assert figures.pop(("casign_ocsp_answers_total", "signed")) == 4
    assert figures.pop(("casign_ocsp_answers_total", "cache")) == 2
    assert figures.pop(("casign_ocsp_cache_answers", None)) == 3  # the distinct certificates
    age = figures.pop(("casign_ocsp_cache_age_seconds", None))
    assert 0 <= age < VALIDITY_SECONDS
    assert figures.pop(("casign_ocsp_cache_bytes", None)) > 3 * 100
    assert figures.pop(("casign_ocsp_renewals_total", "due")) == 0
    assert figures.pop(("casign_ocsp_renewals_total", "changed")) == 0
    assert figures == {}, "an OCSP figure this test does not check"
    assert 0 < store.client.pttl(store.keys.ocsp_figures(name)) <= FIGURES_TTL_SECONDS * 1000
    charted = set(re.findall(r"casign_ocsp_[a-z_]+", DASHBOARD.read_text(encoding="utf-8")))
    assert charted and charted <= {metric for metric, _ in scraped}, "the dashboard's names"

    shown = subprocess.run(
        [sys.executable, "-m", "casign", "top", "--once"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    ocsp_row = next(line for line in shown.splitlines() if line.startswith("OCSP"))
    assert "1 responder(s), 3 answers held" in ocsp_row, shown
    assert "2 answered from cache, 4 signed" in ocsp_row, shown

    responder.send_signal(signal.SIGKILL)  # dies without a word: only the TTL clears it
    responder.wait(timeout=10)
    _wait_until(
        lambda: _ocsp_samples(_scrape(metrics_port)) == {},
        "the dead responder's figures to lapse",
        seconds=FIGURES_TTL_SECONDS + 5,
    )
    assert store.ocsp_figures.read() == {}

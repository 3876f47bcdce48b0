"""Quiet defaults made visible (issue 16 item 9): the OCSP delegate renewed by every worker, the
benchmark's report written only when asked or for a full run, py-spy in the test extra."""

from __future__ import annotations

import logging
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench import runner
from bench.profiling import py_spy_missing
from bench.runner import parse_args
from core.index import format_serial
from core.keys import write_private_key
from core.layout import ocsp_cert_path, ocsp_key_path
from ocsp.responder import OCSPResponder
from store.results import ResultsStore
from tests.cas import make_alice_ca
from tests.workers import launch_worker, wait_until_started
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.ocsp_delegate import ocsp_subject
from worker.ocsp_renewal import RENEWAL_LOCK, renew_delegate_if_due
from worker.process import SignerProcess, SignerSettings, StopNotice

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def delegate_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    return make_alice_ca(tmp_path_factory.mktemp("delegate") / "ca")


def plant_ending_delegate(folder: CAFolder, days_left: float) -> x509.Certificate:
    """A delegate certificate of the folder's OCSP key, issued by its intermediate, that ends
    in `days_left` days (made here directly, as a month-old one would be)."""
    authority = load_authority(folder.root)
    key_path = ocsp_key_path(folder.root)
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_private_key(key_path, key, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(ocsp_subject(authority.intermediate))
        .issuer_name(authority.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days_left))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=True)
        .sign(authority.key, hashes.SHA256())
    )
    cert_path = ocsp_cert_path(folder.root)
    cert_path.unlink(missing_ok=True)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return certificate


def delegate_serial(folder: CAFolder) -> int:
    return x509.load_pem_x509_certificate(ocsp_cert_path(folder.root).read_bytes()).serial_number


def test_a_worker_without_beat_renews_an_ending_delegate(
    delegate_ca: CAFolder,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
) -> None:
    ending = plant_ending_delegate(delegate_ca, days_left=3)
    worker = launch_worker(
        delegate_ca.root, broker_url, redis_url, store, queue, tmp_path / "w.log", 1, pool="solo"
    )
    try:
        wait_until_started(worker, store)
        deadline = time.monotonic() + 30
        while delegate_serial(delegate_ca) == ending.serial_number:
            assert time.monotonic() < deadline, f"not renewed; log:\n{worker.log()[-3000:]}"
            time.sleep(0.1)
    finally:
        worker.stop()
    renewed = x509.load_pem_x509_certificate(ocsp_cert_path(delegate_ca.root).read_bytes())
    assert renewed.not_valid_after_utc - datetime.now(UTC) > timedelta(days=25)
    assert store.certificate(format_serial(renewed.serial_number)) is not None  # issued as any
    assert "renewed the OCSP responder certificate" in worker.log()


def test_one_process_renews_at_a_time_and_a_current_delegate_is_kept(
    delegate_ca: CAFolder, redis_url: str, store: ResultsStore, store_prefix: str
) -> None:
    settings = SignerSettings(delegate_ca.root, redis_url, store_prefix, open_mode=True)
    process = SignerProcess(settings, StopNotice())
    ending = plant_ending_delegate(delegate_ca, days_left=3)
    held = store.locks.acquire(RENEWAL_LOCK, 60)
    assert held is not None
    assert renew_delegate_if_due(process) is None  # another process has the turn
    assert delegate_serial(delegate_ca) == ending.serial_number
    held.release()

    renewed = renew_delegate_if_due(process)
    assert renewed is not None and renewed.issued
    kept = renew_delegate_if_due(process)
    assert kept is not None and not kept.issued
    assert kept.certificate.serial_number == renewed.certificate.serial_number


def test_the_responder_warns_of_a_delegate_no_worker_renewed(
    tmp_path: Path, store: ResultsStore, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_alice_ca(tmp_path / "ca")
    plant_ending_delegate(folder, days_left=2)
    with caplog.at_level(logging.WARNING, logger="casign.ocsp"):
        responder = OCSPResponder(folder.root, store)
    assert "has not been renewed" in caplog.text
    assert "casign worker --ca" in caplog.text
    assert not responder.warn_if_delegate_ending()  # once an hour, not at every poll

    plant_ending_delegate(folder, days_left=20)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="casign.ocsp"):
        OCSPResponder(folder.root, store)
    assert "has not been renewed" not in caplog.text


def test_the_readme_says_what_beat_does_and_who_renews_the_delegate() -> None:
    readme = (REPO / "README.md").read_text()
    assert "`--beat`" in readme
    assert "is renewed by every worker" in readme.replace("\n", " ")


def test_py_spy_is_in_the_test_extra() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(requirement.startswith("py-spy") for requirement in extras["test"])


def test_py_spy_is_found_beside_this_python() -> None:
    assert py_spy_missing() is None  # the test extra installed it in this environment


@pytest.mark.parametrize(
    ("argv", "written"),
    [
        ([], "BENCHMARKS.md"),  # the full run
        (["--repeat", "3", "--profile", "/tmp/p"], "BENCHMARKS.md"),  # still every row, full size
        (["--count", "200"], None),  # the quick run of issue 16
        (["--skip", "est"], None),
        (["--count", "200", "--write"], "BENCHMARKS.md"),
        (["--count", "200", "--out", "B.md"], "B.md"),
        (["--count", "200", "--write", "--out", "B.md"], "B.md"),
        (["--no-write"], None),
    ],
)
def test_the_benchmark_writes_its_report_only_when_asked_or_full(
    argv: list[str], written: str | None
) -> None:
    path = parse_args(argv).report_path
    assert path == (Path(written) if written else None)


def test_a_quick_benchmark_run_leaves_benchmarks_md_alone(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "measure_all", lambda run, work_dir: None)  # no rows: fast
    committed = tmp_path / "BENCHMARKS.md"
    committed.write_text("the committed report\n")
    runner.main(["--count", "200", "--redis", redis_url])
    assert committed.read_text() == "the committed report\n"

    runner.main(["--count", "200", "--redis", redis_url, "--write", "--out", "quick.md"])
    assert (tmp_path / "quick.md").read_text().startswith("# Benchmarks")
    assert committed.read_text() == "the committed report\n"

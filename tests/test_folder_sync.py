"""The CA folder and `openssl ca` kept in step with casign (worker/folder_sync.py).

In process: index.txt gets every certificate casign issues and revokes, in `openssl ca`'s
format; a line `openssl ca` added is adopted, its `-revoke` carried into the store; `serial`
stays past every low serial; a folder kept with another store is left alone. End to end: a real
worker and the real `openssl ca`, `openssl ocsp -index` and `casign revoke`/`crl` interleaved
on one folder made by `casign init` with a passphrase-protected key file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.index import format_serial
from producers import Producer
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.casign_cli import run_casign
from tests.csrs import job, make_csr
from tests.openssl_cli import openssl
from tests.workers import start_worker
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.folder_sync import (
    CASIGN_SERIAL_FLOOR,
    STATE_NAME,
    FolderBound,
    folder_lock,
    index_sync_enabled,
    sync_folder,
)
from worker.issuance import BatchSigner

RESULT_TIMEOUT = 60.0


def write_secret(path: Path, value: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def index_lines(folder: CAFolder) -> list[str]:
    return folder.index_path.read_text(encoding="utf-8").splitlines()


def by_serial(folder: CAFolder) -> dict[str, str]:
    return {line.split("\t")[3]: line for line in index_lines(folder)}


def issue(signer: BatchSigner, common_name: str) -> x509.Certificate:
    (result,) = signer.sign_batch([job(uuid.uuid4().hex, make_csr(common_name))])
    assert result.status == "issued" and result.certificate_pem is not None, result
    return x509.load_pem_x509_certificate(result.certificate_pem.encode())


def openssl_sign(folder: CAFolder, common_name: str, passin: list[str]) -> x509.Certificate:
    """The guide's own `openssl ca -extensions server_cert` on the folder."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    csr_path = folder.intermediate / "csr" / f"{common_name}.csr.pem"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    out = folder.intermediate / "certs" / f"{common_name}.cert.pem"
    openssl(
        "ca", "-config", folder.openssl_cnf_path, "-extensions", "server_cert", "-days", "375",
        "-notext", "-md", "sha256", "-batch", *passin, "-in", csr_path, "-out", out,
    )  # fmt: skip
    return x509.load_pem_x509_certificate(out.read_bytes())


@pytest.fixture
def own_ca(tmp_path: Path) -> CAFolder:
    return make_alice_ca(tmp_path / "ca")


@pytest.fixture
def own_signer(own_ca: CAFolder, store: ResultsStore) -> BatchSigner:
    return BatchSigner(load_authority(own_ca.root), store)


def test_index_txt_gets_what_casign_issues_and_revokes(
    own_ca: CAFolder, own_signer: BatchSigner, store: ResultsStore
) -> None:
    issued = [issue(own_signer, f"host{n}.example.com") for n in range(3)]
    report = sync_folder(own_ca, store)
    assert report is not None and report.appended == 3 and report.written
    assert index_lines(own_ca) == list(store.index_lines())  # the store's own lines, in order
    assert all(cert.serial_number >= CASIGN_SERIAL_FLOOR for cert in issued)
    assert (own_ca.intermediate / "serial").read_text() == "1000\n"  # openssl's own, untouched

    again = sync_folder(own_ca, store)
    assert again is not None and not again.changed  # nothing new: nothing written

    serial = format_serial(issued[1].serial_number)
    RevocationStore(store).revoke(serial, "superseded")
    assert sync_folder(own_ca, store) is not None
    assert by_serial(own_ca)[serial].startswith("R\t")
    assert by_serial(own_ca)[serial].split("\t")[2].endswith(",superseded")
    assert index_lines(own_ca) == list(store.index_lines())


def test_openssl_ca_lines_are_adopted_and_its_revocations_carried(
    own_ca: CAFolder, own_signer: BatchSigner, store: ResultsStore
) -> None:
    casign_made = issue(own_signer, "casign.example.com")
    sync_folder(own_ca, store)
    openssl_made = openssl_sign(own_ca, "openssl.example.com", [])
    assert openssl_made.serial_number == 0x1000
    openssl("ca", "-config", own_ca.openssl_cnf_path, "-revoke",
            own_ca.intermediate / "certs" / "openssl.example.com.cert.pem",
            "-crl_reason", "keyCompromise")  # fmt: skip

    report = sync_folder(own_ca, store)
    assert report is not None and report.adopted == 1, report
    entry = store.index_entry("1000")
    assert entry is not None and entry.revocation_reason == "keyCompromise"
    assert store.certificate("1000") is not None  # from newcerts/1000.pem
    assert (own_ca.intermediate / "serial").read_text() == "1001\n"

    # openssl ca -revoke of a certificate casign issued: the store revokes it too.
    casign_pem = own_ca.intermediate / "casign.pem"
    casign_pem.write_bytes(casign_made.public_bytes(serialization.Encoding.PEM))
    openssl("ca", "-config", own_ca.openssl_cnf_path, "-revoke", casign_pem,
            "-crl_reason", "superseded")  # fmt: skip
    report = sync_folder(own_ca, store)
    assert report is not None and report.revoked_in_store == 1
    casign_serial = format_serial(casign_made.serial_number)
    revoked = store.index_entry(casign_serial)
    assert revoked is not None and revoked.revocation_reason == "superseded"
    audit = [line for line in store.audit_entries() if '"revoked"' in line]
    assert any('"openssl ca"' in line and casign_serial in line for line in audit)


def test_a_line_openssl_ca_lost_to_a_casign_write_comes_back_from_newcerts(
    own_ca: CAFolder, own_signer: BatchSigner, store: ResultsStore
) -> None:
    issue(own_signer, "casign.example.com")
    sync_folder(own_ca, store)
    before = own_ca.index_path.read_text(encoding="utf-8")
    openssl_made = openssl_sign(own_ca, "raced.example.com", [])
    # casign replaced index.txt with what it had read just before `openssl ca` renamed its own:
    own_ca.index_path.write_text(before, encoding="utf-8")
    state_path = own_ca.intermediate / STATE_NAME
    state = json.loads(state_path.read_text(encoding="utf-8"))
    stat = own_ca.index_path.stat()
    state["index"] = [stat.st_ino, stat.st_size, stat.st_mtime_ns]
    state_path.write_text(json.dumps(state), encoding="utf-8")

    report = sync_folder(own_ca, store)
    assert report is not None and report.adopted == 1 and report.appended == 1, report
    serial = format_serial(openssl_made.serial_number)
    assert serial in by_serial(own_ca)
    assert store.certificate(serial) is not None


def test_one_writer_at_a_time_and_a_switch_to_turn_it_off(
    own_ca: CAFolder, own_signer: BatchSigner, store: ResultsStore
) -> None:
    issue(own_signer, "locked.example.com")
    with folder_lock(own_ca, wait=True):  # another process's sync under way
        assert sync_folder(own_ca, store, wait=False) is None
        assert index_lines(own_ca) == []
    assert sync_folder(own_ca, store, wait=False) is not None
    assert len(index_lines(own_ca)) == 1

    assert index_sync_enabled(own_ca)
    settings = own_ca.settings_path.read_text(encoding="utf-8")
    own_ca.settings_path.chmod(0o644)
    own_ca.settings_path.write_text(settings + "index_sync = false\n", encoding="utf-8")
    assert not index_sync_enabled(own_ca)


def test_a_folder_kept_with_another_store_is_left_alone(
    own_ca: CAFolder, own_signer: BatchSigner, store: ResultsStore, redis_url: str
) -> None:
    issue(own_signer, "first.example.com")
    sync_folder(own_ca, store)
    other = ResultsStore.from_url(redis_url, f"casign-test:{uuid.uuid4().hex[:12]}")
    try:
        with pytest.raises(FolderBound, match="another store"):
            sync_folder(own_ca, other)
        assert other.index.count() == 0  # nothing of the folder taken into it
        (own_ca.intermediate / STATE_NAME).unlink()
        report = sync_folder(own_ca, other)  # the operator's choice: adopt it there
        assert report is not None and report.adopted == 1
    finally:
        for key in other.client.scan_iter(match=f"{other.prefix}*"):
            other.client.delete(key)
        other.client.close()


# --- end to end: a real worker, openssl ca, openssl ocsp, casign revoke and crl -------------


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_casign_and_openssl_ca_take_turns_on_one_folder(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str, tmp_path: Path
) -> None:
    passphrase = tmp_path / "pass.txt"
    write_secret(passphrase, secrets.token_urlsafe(24))
    root_passphrase = tmp_path / "root.pass"
    write_secret(root_passphrase, secrets.token_urlsafe(24))
    made = run_casign(
        "init", tmp_path / "ca", "--key-type", "rsa2048", "--passphrase-file", passphrase,
        "--root-passphrase-file", root_passphrase,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    folder = CAFolder(tmp_path / "ca")
    passin = ["-passin", f"file:{passphrase}"]
    env = {
        "CASIGN_BROKER_URL": broker_url,
        "CASIGN_STORE_URL": redis_url,
        "CASIGN_STORE_PREFIX": store.prefix.rstrip(":"),
        "CASIGN_QUEUE": queue,
    }
    worker = start_worker(folder.root, broker_url, redis_url, store, queue, tmp_path / "w.log")
    producer = Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue)

    def casign_issues(*names: str) -> list[str]:
        job_ids = [producer.submit(make_csr(name)) for name in names]
        results = list(producer.results(job_ids, timeout=RESULT_TIMEOUT))
        assert all(result.ok and result.serial for result in results), results
        return [str(result.serial) for result in results]

    try:
        first = casign_issues("a.example.com", "b.example.com", "c.example.com")
        wait_for(lambda: set(first) <= set(by_serial(folder)), "casign's lines in index.txt")

        made_by_openssl = openssl_sign(folder, "legacy.example.com", passin)
        legacy = format_serial(made_by_openssl.serial_number)
        assert legacy == "1000"

        later = casign_issues("d.example.com", "e.example.com")
        wait_for(lambda: store.index_entry(legacy) is not None, "the openssl line adopted")
        wait_for(lambda: set(later) <= set(by_serial(folder)), "the later lines in index.txt")
        assert list(by_serial(folder)) == [*first, legacy, *later]
        assert (folder.intermediate / "serial").read_text() == "1001\n"

        revoked = run_casign(
            "revoke", "--ca", folder.root, legacy, "--reason", "keyCompromise", env=env
        )
        assert revoked.returncode == 0, revoked.stderr
        wait_for(lambda: by_serial(folder)[legacy].startswith("R\t"), "R in index.txt")

        # openssl ca -gencrl on the folder lists what casign revoked.
        openssl("ca", "-config", folder.openssl_cnf_path, "-gencrl", *passin,
                "-out", tmp_path / "openssl.crl.pem")  # fmt: skip
        openssl_crl = x509.load_pem_x509_crl((tmp_path / "openssl.crl.pem").read_bytes())
        assert [each.serial_number for each in openssl_crl] == [0x1000]

        # openssl ocsp -index answers for a casign serial, and for the revoked openssl one.
        issuer = folder.intermediate_cert_path
        casign_cert = tmp_path / "casign.pem"
        casign_cert.write_text(store.certificate(first[0]) or "", encoding="ascii")
        legacy_cert = folder.intermediate / "certs" / "legacy.example.com.cert.pem"
        openssl("ocsp", "-issuer", issuer, "-cert", casign_cert, "-cert", legacy_cert,
                "-no_nonce", "-reqout", tmp_path / "req.der")  # fmt: skip
        openssl("ocsp", "-index", folder.index_path, "-CA", issuer, "-rsigner", issuer,
                "-rkey", folder.intermediate_key_path, *passin,
                "-reqin", tmp_path / "req.der", "-respout", tmp_path / "resp.der")  # fmt: skip
        answer = openssl("ocsp", "-respin", tmp_path / "resp.der", "-issuer", issuer,
                         "-cert", casign_cert, "-cert", legacy_cert,
                         "-CAfile", folder.chain_path, "-no_nonce")  # fmt: skip
        assert "Response verify OK" in answer.stderr
        assert f"{casign_cert}: good" in answer.stdout
        assert f"{legacy_cert}: revoked" in answer.stdout

        # The next casign CRL lists the certificate openssl ca made and casign revoked.
        crl = run_casign("crl", "--ca", folder.root, "-o", tmp_path / "casign.crl.pem", env=env)
        assert crl.returncode == 0, crl.stderr
        casign_crl = x509.load_pem_x509_crl((tmp_path / "casign.crl.pem").read_bytes())
        assert [each.serial_number for each in casign_crl] == [0x1000]
        assert "starting it again" not in worker.log()
    finally:
        producer.close()
        worker.stop()
        shutil.rmtree(folder.root / "intermediate" / "csr", ignore_errors=True)

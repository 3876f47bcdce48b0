"""The CRL: what `openssl crl -verify` says about it, its number, its entries, and its speed."""

from __future__ import annotations

import re
import secrets
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from casign.cli import main as casign_main
from core.index import IndexEntry, Status, format_serial
from core.revocation import parse_revocation_field
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from tests.openssl_cli import openssl
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.crl import RevokedEntryCache, build_crl, make_crl, seed_crl_number, write_crl_files
from worker.issuance import BatchSigner

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

REASONS = ["keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged"]


@pytest.fixture(scope="module")
def crl_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    """A CA of its own: these tests write crl/ and crlnumber in it."""
    return make_alice_ca(tmp_path_factory.mktemp("crl") / "ca")


@pytest.fixture(scope="module")
def crl_authority(crl_ca: CAFolder) -> SigningAuthority:
    return load_authority(crl_ca.root)


def issue_and_revoke(
    authority: SigningAuthority, store: ResultsStore, count: int, revoke: int
) -> tuple[list[str], dict[str, str]]:
    """Issue `count` certificates and revoke the first `revoke` with varied reasons."""
    results = BatchSigner(authority, store).sign_batch(
        [job(f"crl-{index}", make_csr(f"crl{index}.example.com")) for index in range(count)]
    )
    serials = [result.serial for result in results if result.serial]
    assert len(serials) == count
    revocations = RevocationStore(store)
    reasons = {}
    for index, serial in enumerate(serials[:revoke]):
        reasons[serial] = REASONS[index % len(REASONS)]
        revocations.revoke(serial, reasons[serial])
    return serials, reasons


def crl_serials(text: str) -> set[str]:
    return set(re.findall(r"Serial Number: ([0-9A-F]+)", text))


def test_openssl_verifies_the_crl_and_lists_exactly_the_revoked_serials(
    crl_ca: CAFolder, crl_authority: SigningAuthority, store: ResultsStore, tmp_path: Path
) -> None:
    serials, reasons = issue_and_revoke(crl_authority, store, 8, 5)
    published = make_crl(crl_authority, RevocationStore(store))
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(published.pem)

    shown = openssl(
        "crl", "-CAfile", crl_ca.chain_path, "-verify", "-in", crl_path, "-noout", "-text"
    )

    assert "verify OK" in shown.stderr + shown.stdout
    assert crl_serials(shown.stdout) == set(reasons)
    assert not crl_serials(shown.stdout) & set(serials[5:])
    for serial, reason in reasons.items():
        block = shown.stdout.split(f"Serial Number: {serial}")[1].split("Serial Number:")[0]
        expected = {"keyCompromise": "Key Compromise", "superseded": "Superseded"}.get(reason)
        assert "X509v3 CRL Reason Code" in block
        if expected:
            assert expected in block
    assert "Issuer: C = GB, O = Alice Ltd, CN = Alice Ltd Intermediate CA" in shown.stdout
    assert f"X509v3 CRL Number: \n                {published.number}" in shown.stdout
    assert "X509v3 Authority Key Identifier" in shown.stdout
    crl = published.crl
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == crl_authority.key_identifier
    assert aki.authority_cert_issuer is None  # crl_ext: keyid:always, nothing else
    assert crl.next_update_utc - crl.last_update_utc == timedelta(days=7)  # type: ignore[operator]


def test_crl_numbers_increase_and_an_older_crl_never_replaces_a_newer(
    crl_authority: SigningAuthority, store: ResultsStore
) -> None:
    issue_and_revoke(crl_authority, store, 2, 1)
    revocations = RevocationStore(store)
    first = make_crl(crl_authority, revocations)
    second = make_crl(crl_authority, revocations)
    assert second.number == first.number + 1
    assert revocations.publish_crl(first.crl, first.number) is False
    latest = revocations.latest_crl()
    assert latest is not None
    assert latest.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (
        second.number
    )


def test_the_counter_continues_from_openssls_crlnumber_file(
    crl_ca: CAFolder, crl_authority: SigningAuthority, store: ResultsStore
) -> None:
    counter = crl_ca.intermediate / "crlnumber"
    counter.write_text("2A\n")
    revocations = RevocationStore(store)
    assert seed_crl_number(crl_ca, revocations) == 0x2A
    published = make_crl(crl_authority, revocations)
    assert published.number == 0x2A
    write_crl_files(crl_ca, [published])
    assert counter.read_text() == "2B\n"  # what `openssl ca -gencrl` would use next
    assert (crl_ca.intermediate / "crl" / "intermediate.crl.pem").read_bytes() == published.pem


def test_casign_crl_command_writes_pem_and_der(
    crl_ca: CAFolder, store: ResultsStore, redis_url: str, tmp_path: Path
) -> None:
    authority = load_authority(crl_ca.root)
    _, reasons = issue_and_revoke(authority, store, 3, 2)
    runner = CliRunner()
    env = {"CASIGN_STORE_PREFIX": store.prefix.rstrip(":")}
    base = ["crl", "--ca", str(crl_ca.root), "--store", redis_url]

    pem = runner.invoke(casign_main, [*base, "-o", str(tmp_path / "crl.pem")], env=env)
    der = runner.invoke(casign_main, [*base, "--der", "-o", str(tmp_path / "crl.der")], env=env)

    assert pem.exit_code == 0 and der.exit_code == 0, pem.output + der.output
    for path, form in ((tmp_path / "crl.pem", "PEM"), (tmp_path / "crl.der", "DER")):
        shown = openssl(
            "crl", "-inform", form, "-CAfile", crl_ca.chain_path, "-verify", "-in", path,
            "-noout", "-text",
        )  # fmt: skip
        assert crl_serials(shown.stdout) == set(reasons)


def test_openssl_ca_gencrl_on_the_exported_index_agrees(
    crl_ca: CAFolder, store: ResultsStore, redis_url: str, tmp_path: Path
) -> None:
    """The exported index is one `openssl ca -gencrl` reads, and its CRL lists what ours does."""
    authority = load_authority(crl_ca.root)
    _, reasons = issue_and_revoke(authority, store, 6, 4)
    env = {"CASIGN_STORE_PREFIX": store.prefix.rstrip(":")}
    exported = CliRunner().invoke(
        casign_main, ["index", "export", "--ca", str(crl_ca.root), "--store", redis_url], env=env
    )
    assert exported.exit_code == 0, exported.output
    (crl_ca.intermediate / "index.txt").write_text(exported.output)

    theirs = openssl(
        "ca", "-config", crl_ca.openssl_cnf_path, "-gencrl", "-out", tmp_path / "openssl.crl.pem"
    )
    shown = openssl("crl", "-in", tmp_path / "openssl.crl.pem", "-noout", "-text")
    assert theirs.returncode == 0
    assert crl_serials(shown.stdout) == set(reasons)
    ours = make_crl(authority, RevocationStore(store)).crl
    assert {format_serial(entry.serial_number) for entry in ours} == set(reasons)


def test_openssl_revocation_fields_become_entry_extensions(
    crl_authority: SigningAuthority,
) -> None:
    """What `openssl ca -revoke -crl_compromise/-crl_hold` writes is read too."""
    now = datetime.now(UTC)
    lines = [
        "R\t300101000000Z\t250101000000Z,keyTime,20241231000000Z\t0A\tunknown\t/CN=a",
        "R\t300101000000Z\t250101000000Z,certificateHold,holdInstruction\t0B\tunknown\t/CN=b",
        "R\t300101000000Z\t250101000000Z\t0C\tunknown\t/CN=c",
    ]
    crl = build_crl(crl_authority, lines, 7, now)
    by_serial = {entry.serial_number: entry for entry in crl}
    a = by_serial[0x0A].extensions
    assert a.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    assert a.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc == datetime(
        2024, 12, 31, tzinfo=UTC
    )
    b = by_serial[0x0B].extensions.get_extension_for_class(x509.CRLReason).value
    assert b.reason is x509.ReasonFlags.certificate_hold
    assert len(by_serial[0x0C].extensions) == 0  # no reason given, no reason code
    assert parse_revocation_field("250101000000Z,unspecified").reason is None


def test_a_crl_of_100000_revoked_certificates(
    crl_ca: CAFolder, crl_authority: SigningAuthority, store: ResultsStore, tmp_path: Path
) -> None:
    count = 100_000
    revoked_at = datetime(2026, 1, 1, tzinfo=UTC)
    expires = datetime(2027, 1, 1, tzinfo=UTC)
    pipe = store.client.pipeline(transaction=False)
    serials: set[int] = set()
    for index in range(count):
        serial = secrets.randbits(159) | (1 << 64)
        serials.add(serial)
        entry = IndexEntry(Status.VALID, expires, serial, f"/CN=host{index}.example.com")
        line = entry.revoked(
            revoked_at + timedelta(seconds=index), REASONS[index % len(REASONS)]
        ).to_openssl_line()
        pipe.hset(store.key("revoked"), format_serial(serial), line)
        if index % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    revocations = RevocationStore(store)
    assert revocations.count_revoked() == count

    cache = RevokedEntryCache()
    started = time.perf_counter()
    published = make_crl(crl_authority, revocations, cache=cache)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    make_crl(crl_authority, revocations, cache=cache)
    warm = time.perf_counter() - started
    print(
        f"\nCRL with {published.entries} entries ({len(published.der) / 1e6:.1f} MB DER): "
        f"built, signed and published in {cold:.2f} s; again with the entry cache {warm:.2f} s"
    )

    assert published.entries == count
    assert {entry.serial_number for entry in published.crl} == serials
    crl_path = tmp_path / "big.crl.der"
    crl_path.write_bytes(published.der)
    started = time.perf_counter()
    checked = openssl(
        "crl", "-inform", "DER", "-CAfile", crl_ca.chain_path, "-verify", "-in", crl_path, "-noout"
    )
    print(f"openssl crl -verify of it: {time.perf_counter() - started:.2f} s")
    assert "verify OK" in checked.stderr + checked.stdout

"""The CRL: what `openssl crl -verify` says about it, its number, its entries, its speed, its
validity (BR 4.9.7), the atomic number-and-snapshot, and partitioned CRLs (shards)."""

from __future__ import annotations

import re
import secrets
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509

import worker.crl
from casign.cli import main as casign_main
from core.errors import ConfigurationError
from core.index import IndexEntry, Status, format_serial
from core.revocation import parse_revocation_field
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from tests.openssl_cli import openssl
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.crl import (
    PublishedCRL,
    RevokedEntryCache,
    build_crl,
    crl_days,
    make_crl,
    make_crls,
    seed_crl_number,
    write_crl_files,
)
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


# -- validity (BR 4.9.7) ------------------------------------------------------------------------


def test_crl_days_above_ten_is_refused_when_the_ca_is_loaded(tmp_path: Path) -> None:
    folder = make_alice_ca(tmp_path / "ca")
    assert "crl_days = 7" in folder.settings_path.read_text()  # what init writes
    settings = folder.settings_path.read_text().replace("crl_days = 7", "crl_days = 30")
    folder.settings_path.write_text(settings)

    with pytest.raises(ConfigurationError, match=r"crl_days = 30 .*at most 10 days.*BR 4\.9\.7"):
        load_authority(folder.root)

    folder.settings_path.write_text(settings.replace("crl_days = 30", "crl_days = 10"))
    assert crl_days(folder) == 10


# -- one atomic step for the number and the revoked set ---------------------------------------


def test_a_crl_drawn_after_a_revocation_lists_it_though_an_older_run_is_still_signing(
    crl_authority: SigningAuthority, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A draws, then a revocation, then run B: B is numbered higher and lists it; A,
    finishing last, does not replace B as the latest."""
    serials, _ = issue_and_revoke(crl_authority, store, 3, 1)
    revocations = RevocationStore(store)
    drawn = threading.Event()
    release = threading.Event()
    real_build = worker.crl.build_crl
    first_call = threading.Lock()

    def build_pausing_once(*args: Any, **kwargs: Any) -> x509.CertificateRevocationList:
        if first_call.acquire(blocking=False):  # run A only
            drawn.set()
            assert release.wait(30)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(worker.crl, "build_crl", build_pausing_once)
    results: list[PublishedCRL] = []
    run_a = threading.Thread(target=lambda: results.append(make_crl(crl_authority, revocations)))
    run_a.start()
    assert drawn.wait(30)
    revocations.revoke(serials[1], "superseded")
    run_b = make_crl(crl_authority, revocations)
    release.set()
    run_a.join(30)
    [run_a_crl] = results

    assert run_b.number > run_a_crl.number
    assert serials[1] in {format_serial(entry.serial_number) for entry in run_b.crl}
    assert serials[1] not in {format_serial(entry.serial_number) for entry in run_a_crl.crl}
    latest = revocations.latest_crl()
    assert (
        latest is not None
        and latest.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        == run_b.number
    )


def test_concurrent_crl_runs_list_every_revocation_made_before_their_number_was_drawn(
    crl_authority: SigningAuthority, store: ResultsStore
) -> None:
    """Two CRL runs in a loop while a third thread revokes: after each revocation the counter
    is read (c); every CRL numbered above c was drawn after it and must list it."""
    serials, _ = issue_and_revoke(crl_authority, store, 40, 0)
    revocations = RevocationStore(store)
    counter_key = store.keys.crl_number
    revoked_before: list[tuple[str, int]] = []
    crls: list[PublishedCRL] = []
    done = threading.Event()

    def revoke_all() -> None:
        for serial in serials:
            revocations.revoke(serial, "superseded")
            revoked_before.append((serial, int(store.client.get(counter_key) or 0)))
        done.set()

    def make_crls_until_done() -> None:
        while not done.is_set():
            crls.append(make_crl(crl_authority, revocations))

    threads = [threading.Thread(target=revoke_all)] + [
        threading.Thread(target=make_crls_until_done) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert len(crls) >= 4
    for published in crls:
        listed = {format_serial(entry.serial_number) for entry in published.crl}
        missing = [
            s for s, counter in revoked_before if counter < published.number and s not in listed
        ]
        assert not missing, f"CRL {published.number} misses {missing}"
    assert len({published.number for published in crls}) == len(crls)


# -- partitioned CRLs ---------------------------------------------------------------------------

SHARDS = 3
SHARD_URL = "http://pki.example.com/crl/intermediate-{shard}.crl"


@pytest.fixture(scope="module")
def sharded_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    """A CA with crl_shards = 3 whose profiles all name the `{shard}` CRL URL."""
    folder = make_alice_ca(tmp_path_factory.mktemp("sharded") / "ca")
    profiles = re.sub(r"crl_distribution_points = .*\n", "", folder.profiles_path.read_text())
    profiles = re.sub(
        r"(\[profiles\.\w+\]\n)", rf'\1crl_distribution_points = ["{SHARD_URL}"]\n', profiles
    )
    folder.profiles_path.write_text(profiles)
    with folder.settings_path.open("a") as settings:
        settings.write(f"crl_shards = {SHARDS}\n")
    return folder


@pytest.fixture(scope="module")
def sharded_authority(sharded_ca: CAFolder) -> SigningAuthority:
    return load_authority(sharded_ca.root)


def crl_dp_url(certificate: x509.Certificate) -> str:
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    [point] = list(points)
    assert point.full_name is not None
    [name] = point.full_name
    return str(name.value)


def test_each_shard_verifies_lists_exactly_its_serials_and_is_scoped_by_a_critical_idp(
    sharded_ca: CAFolder, sharded_authority: SigningAuthority, store: ResultsStore, tmp_path: Path
) -> None:
    serials, reasons = issue_and_revoke(sharded_authority, store, 18, 12)
    published = make_crls(sharded_authority, RevocationStore(store))

    assert [each.shard for each in published] == list(range(SHARDS))
    assert len({each.number for each in published}) == 1  # one number, one snapshot, all shards
    seen: dict[str, list[int]] = {}
    for each in published:
        path = tmp_path / f"shard-{each.shard}.pem"
        path.write_bytes(each.pem)
        shown = openssl(
            "crl", "-CAfile", sharded_ca.chain_path, "-verify", "-in", path, "-noout", "-text"
        )
        assert "verify OK" in shown.stderr + shown.stdout
        for serial in crl_serials(shown.stdout):
            seen.setdefault(serial, []).append(each.shard or 0)
        idp = each.crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical
        assert [str(name.value) for name in idp.value.full_name or []] == [
            SHARD_URL.replace("{shard}", str(each.shard))
        ]
        assert "X509v3 Issuing Distribution Point: critical" in shown.stdout
        assert each.crl.next_update_utc is not None
        assert each.crl.next_update_utc - each.crl.last_update_utc <= timedelta(days=10)
    assert set(seen) == set(reasons)
    for serial in serials:
        certificate = x509.load_pem_x509_certificate(
            (store.certificate(serial) or "").encode("ascii")
        )
        shard = int(serial, 16) % SHARDS
        assert crl_dp_url(certificate) == SHARD_URL.replace("{shard}", str(shard))
        if serial in reasons:
            assert seen[serial] == [shard]  # in exactly its own shard


def test_openssl_path_validation_with_crl_checking_against_a_shard(
    sharded_ca: CAFolder, sharded_authority: SigningAuthority, store: ResultsStore, tmp_path: Path
) -> None:
    serials, reasons = issue_and_revoke(sharded_authority, store, 24, 12)
    published = {each.shard: each for each in make_crls(sharded_authority, RevocationStore(store))}
    by_shard: dict[int, dict[str, list[str]]] = {}
    for serial in serials:
        kind = "revoked" if serial in reasons else "good"
        by_shard.setdefault(int(serial, 16) % SHARDS, {}).setdefault(kind, []).append(serial)
    shard, groups = next((k, g) for k, g in sorted(by_shard.items()) if len(g) == 2)
    crl_path = tmp_path / "shard.pem"
    crl_path.write_bytes(published[shard].pem)

    def verify(serial: str) -> str:
        cert_path = tmp_path / f"{serial}.pem"
        cert_path.write_text(store.certificate(serial) or "")
        checked = openssl(
            "verify", "-crl_check", "-CRLfile", crl_path, "-CAfile", sharded_ca.chain_path,
            cert_path, check=False,
        )  # fmt: skip
        return checked.stdout + checked.stderr

    assert f"{tmp_path}/{groups['good'][0]}.pem: OK" in verify(groups["good"][0])
    assert "certificate revoked" in verify(groups["revoked"][0])
    # A certificate of another shard is outside this CRL's scope (its IDP names another URL).
    other = next(s for s in serials if int(s, 16) % SHARDS != shard)
    assert "different CRL scope" in verify(other)


def test_casign_crl_writes_every_shard(
    sharded_ca: CAFolder, store: ResultsStore, redis_url: str, tmp_path: Path
) -> None:
    authority = load_authority(sharded_ca.root)
    _, reasons = issue_and_revoke(authority, store, 9, 6)
    env = {"CASIGN_STORE_PREFIX": store.prefix.rstrip(":")}
    base = ["crl", "--ca", str(sharded_ca.root), "--store", redis_url]

    made = CliRunner().invoke(
        casign_main, [*base, "--der", "-o", str(tmp_path / "crl.der")], env=env
    )

    assert made.exit_code == 0, made.output
    listed: set[str] = set()
    for shard in range(SHARDS):
        for path, form in (
            (tmp_path / f"crl-{shard}.der", "DER"),
            (sharded_ca.intermediate / "crl" / f"intermediate-{shard}.crl.pem", "PEM"),
        ):
            shown = openssl(
                "crl", "-inform", form, "-CAfile", sharded_ca.chain_path, "-verify", "-in", path,
                "-noout", "-text",
            )  # fmt: skip
            assert "verify OK" in shown.stderr + shown.stdout
            listed |= crl_serials(shown.stdout)
        latest = RevocationStore(store).latest_crl(shard)
        assert latest is not None
    assert listed == set(reasons)
    assert not (tmp_path / "crl.der").exists()


def test_without_crl_shards_there_is_one_crl_and_no_idp(
    crl_authority: SigningAuthority, store: ResultsStore
) -> None:
    issue_and_revoke(crl_authority, store, 2, 1)
    [published] = make_crls(crl_authority, RevocationStore(store))
    assert published.shard is None
    with pytest.raises(x509.ExtensionNotFound):
        published.crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)


def test_shards_and_shard_urls_must_agree(tmp_path: Path) -> None:
    folder = make_alice_ca(tmp_path / "ca", base_url="http://pki.example.com")
    with folder.settings_path.open("a") as settings:
        settings.write("crl_shards = 4\n")
    with pytest.raises(ConfigurationError, match=r"crl_distribution_points must name each shard"):
        load_authority(folder.root)

    folder.settings_path.write_text(folder.settings_path.read_text().replace("= 4", "= 1"))
    with pytest.raises(ConfigurationError, match=r"crl_shards = 1 is outside 2 to 256"):
        load_authority(folder.root)

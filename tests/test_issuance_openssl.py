"""What `BatchSigner` issues, checked by the real `openssl` binary (verify, x509, ca, crl, ocsp)."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from casign.cli import main as casign_main
from core.errors import Retryable
from core.index import IndexEntry, Status, openssl_oneline
from store.results import Issued, ResultsStore
from tests.cas import make_alice_ca
from tests.csrs import job
from tests.openssl_cli import openssl as run_openssl
from tests.softhsm_token import SOFTHSM_AVAILABLE, SOFTHSM_SKIP_REASON, SoftHsmToken
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner
from worker.profiles import baseline_max_days

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

GUIDE_SUBJECT = (
    ("C", "US"),
    ("ST", "California"),
    ("L", "Mountain View"),
    ("O", "Alice Ltd"),
    ("OU", "Alice Ltd Web Services"),
    ("CN", "www.example.com"),
)
_OIDS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
}
# A request per profile that the profile accepts: subject and SANs.
PROFILE_REQUESTS: dict[str, tuple[tuple[tuple[str, str], ...], list[x509.GeneralName]]] = {
    "server_cert": (GUIDE_SUBJECT, []),
    "usr_cert": ((("CN", "alice@example.com"),), [x509.RFC822Name("alice@example.com")]),
    "tls_server": ((("CN", "www.example.com"),), [x509.DNSName("www.example.com")]),
}
PURPOSE = {"server_cert": "sslserver", "usr_cert": "sslclient", "tls_server": "sslserver"}


# -- helpers ---------------------------------------------------------------------------------


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_openssl(*args, check=check, timeout=30)


def build_csr(
    key: CertificateIssuerPrivateKeyTypes,
    subject: tuple[tuple[str, str], ...],
    san: list[x509.GeneralName] | None = None,
) -> str:
    """A PEM CSR for `subject` (short names, in order), also for Ed25519 keys."""
    name = x509.Name([x509.NameAttribute(_OIDS[label], value) for label, value in subject])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def issue(
    signer: BatchSigner, csr_pem: str, profile: str = "server_cert", **fields: object
) -> x509.Certificate:
    job_id = str(fields.pop("job_id", uuid.uuid4().hex))
    (result,) = signer.sign_batch([job(job_id, csr_pem, profile, **fields)])
    assert result.status == "issued", f"{result.code}: {result.message}"
    assert result.certificate_pem is not None
    return x509.load_pem_x509_certificate(result.certificate_pem.encode())


def write_cert(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def extension_lines(text: str) -> list[str]:
    """The stripped lines of the `X509v3 extensions:` block of `openssl x509 -text`."""
    lines = text.splitlines()
    start = lines.index("        X509v3 extensions:") + 1
    end = next(
        i for i in range(start, len(lines)) if lines[i].startswith("    Signature Algorithm")
    )
    return [line.strip() for line in lines[start:end]]


def without_san(lines: list[str]) -> list[str]:
    """The extension lines minus subjectAltName (header and its one value line)."""
    at = lines.index("X509v3 Subject Alternative Name:")
    return lines[:at] + lines[at + 2 :]


def openssl_dates(path: Path) -> tuple[datetime, datetime]:
    out = openssl("x509", "-in", path, "-noout", "-startdate", "-enddate").stdout
    fields = dict(line.split("=", 1) for line in out.splitlines())
    not_before, not_after = (
        datetime.strptime(fields[name], "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)
        for name in ("notBefore", "notAfter")
    )
    return not_before, not_after


def colon_hex(data: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in data)


def even_hex(value: int) -> str:
    """Upper-case hex with an even number of digits, as `openssl x509 -serial` prints."""
    digits = f"{value:X}"
    return digits.zfill(len(digits) + len(digits) % 2)


def integer_bytes(value: int) -> bytes:
    """The magnitude of a positive INTEGER, as OpenSSL prints it."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def leaf_key(kind: str) -> CertificateIssuerPrivateKeyTypes:
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


@dataclass(frozen=True)
class Backend:
    """A signer with its CA: the intermediate key in a file, or in a fresh SoftHSM token."""

    signer: BatchSigner
    authority: SigningAuthority
    chain_path: Path


@pytest.fixture(params=["file", "softhsm"])
def backend(
    request: pytest.FixtureRequest,
    signer: BatchSigner,
    authority: SigningAuthority,
    chain_path: Path,
    store: ResultsStore,
    tmp_path: Path,
) -> Backend:
    if request.param == "file":
        return Backend(signer, authority, chain_path)
    if not SOFTHSM_AVAILABLE:
        pytest.skip(SOFTHSM_SKIP_REASON)
    token: SoftHsmToken = request.getfixturevalue("softhsm_token")
    folder = make_alice_ca(tmp_path / "hsm-ca", intermediate_key_uri=token.key_uri("intermediate"))
    hsm_authority = load_authority(folder.root)
    return Backend(BatchSigner(hsm_authority, store), hsm_authority, folder.chain_path)


@pytest.fixture(scope="module")
def leaf_keys() -> dict[str, CertificateIssuerPrivateKeyTypes]:
    return {kind: leaf_key(kind) for kind in ("rsa2048", "p256", "ed25519")}


@pytest.fixture
def ca_copy(ca_folder: CAFolder, tmp_path: Path) -> Path:
    """A copy of the session CA folder whose openssl.cnf files name the copy (for `openssl ca`)."""
    copy = tmp_path / "ca"
    shutil.copytree(ca_folder.root, copy, ignore=shutil.ignore_patterns("store", "redis.*"))
    for cnf in (copy / "openssl.cnf", copy / "intermediate" / "openssl.cnf"):
        cnf.chmod(0o644)
        text = cnf.read_text(encoding="utf-8")
        assert str(ca_folder.root) in text
        cnf.write_text(text.replace(str(ca_folder.root), str(copy)), encoding="utf-8")
    return copy


def openssl_ca_sign(ca_dir: Path, csr_pem: str, extensions: str, out: Path) -> x509.Certificate:
    """The guide's own command: `openssl ca -extensions ... -days 375 -notext -md sha256`."""
    csr_path = ca_dir / "intermediate" / "csr" / f"{out.stem}.csr.pem"
    csr_path.write_text(csr_pem, encoding="ascii")
    openssl(
        "ca", "-config", ca_dir / "intermediate" / "openssl.cnf", "-extensions", extensions,
        "-days", "375", "-notext", "-md", "sha256", "-batch", "-in", csr_path, "-out", out,
    )  # fmt: skip
    return x509.load_pem_x509_certificate(out.read_bytes())


# -- chain and profiles ----------------------------------------------------------------------


@pytest.mark.parametrize("key_kind", ["rsa2048", "p256", "ed25519"])
@pytest.mark.parametrize("profile", ["server_cert", "usr_cert", "tls_server"])
def test_openssl_verify_accepts_every_profile_and_key_type(
    backend: Backend,
    leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes],
    tmp_path: Path,
    profile: str,
    key_kind: str,
) -> None:
    subject, san = PROFILE_REQUESTS[profile]
    csr_pem = build_csr(leaf_keys[key_kind], subject, san)
    if profile == "tls_server" and key_kind == "ed25519":
        # BR 6.1.5: RSA and ECDSA only (tests/test_key_quality.py has the rest).
        (refused,) = backend.signer.sign_batch([job(uuid.uuid4().hex, csr_pem, profile)])
        assert refused.code == "key.type_not_allowed", refused.message
        return
    certificate = issue(backend.signer, csr_pem, profile)
    path = write_cert(tmp_path / "leaf.pem", certificate)

    verified = openssl(
        "verify", "-x509_strict", "-purpose", PURPOSE[profile], "-CAfile", backend.chain_path, path
    )
    assert verified.stdout.strip() == f"{path}: OK"

    lines = extension_lines(openssl("x509", "-in", path, "-noout", "-text").stdout)
    usage = lines[lines.index("X509v3 Key Usage: critical") + 1]
    # keyEncipherment only makes sense for (and is only kept for) an RSA subject key, and the
    # Baseline Requirements profile leaves it out even then (RSA key exchange is gone from TLS).
    assert ("Key Encipherment" in usage) == (key_kind == "rsa2048" and profile != "tls_server")
    assert "X509v3 Subject Alternative Name:" in lines


def test_server_cert_has_exactly_the_guides_extensions(
    backend: Backend,
    leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes],
    tmp_path: Path,
) -> None:
    signer, authority = backend.signer, backend.authority
    certificate = issue(signer, build_csr(leaf_keys["rsa2048"], GUIDE_SUBJECT), "server_cert")
    path = write_cert(tmp_path / "server.pem", certificate)
    text = openssl("x509", "-in", path, "-noout", "-text").stdout

    ski = x509.SubjectKeyIdentifier.from_public_key(leaf_keys["rsa2048"].public_key()).digest
    assert extension_lines(text) == [
        "X509v3 Basic Constraints:",
        "CA:FALSE",
        "Netscape Cert Type:",
        "SSL Server",
        "Netscape Comment:",
        "OpenSSL Generated Server Certificate",
        "X509v3 Subject Key Identifier:",
        colon_hex(ski),
        "X509v3 Authority Key Identifier:",
        f"keyid:{colon_hex(authority.key_identifier)}",
        "DirName:/C=GB/O=Alice Ltd/CN=Alice Ltd Root CA",
        # keyid,issuer:always: the issuer certificate's own issuer name and serial number
        f"serial:{colon_hex(integer_bytes(authority.intermediate.serial_number))}",
        "X509v3 Key Usage: critical",
        "Digital Signature, Key Encipherment",
        "X509v3 Extended Key Usage:",
        "TLS Web Server Authentication",
        "X509v3 Subject Alternative Name:",
        "DNS:www.example.com",
    ]
    assert "Signature Algorithm: sha256WithRSAEncryption" in text
    assert "Issuer: C = GB, O = Alice Ltd, CN = Alice Ltd Intermediate CA" in text
    assert (
        "Subject: C = US, ST = California, L = Mountain View, O = Alice Ltd, "
        "OU = Alice Ltd Web Services, CN = www.example.com" in text
    )


def test_usr_cert_has_exactly_the_guides_extensions(
    backend: Backend,
    leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes],
    tmp_path: Path,
) -> None:
    signer, authority = backend.signer, backend.authority
    subject, san = PROFILE_REQUESTS["usr_cert"]
    certificate = issue(signer, build_csr(leaf_keys["rsa2048"], subject, san), "usr_cert")
    path = write_cert(tmp_path / "client.pem", certificate)
    text = openssl("x509", "-in", path, "-noout", "-text").stdout

    ski = x509.SubjectKeyIdentifier.from_public_key(leaf_keys["rsa2048"].public_key()).digest
    assert extension_lines(text) == [
        "X509v3 Basic Constraints:",
        "CA:FALSE",
        "Netscape Cert Type:",
        "SSL Client, S/MIME",
        "Netscape Comment:",
        "OpenSSL Generated Client Certificate",
        "X509v3 Subject Key Identifier:",
        colon_hex(ski),
        "X509v3 Authority Key Identifier:",
        colon_hex(authority.key_identifier),  # keyid,issuer: the key id alone when there is one
        "X509v3 Key Usage: critical",
        "Digital Signature, Non Repudiation, Key Encipherment",
        "X509v3 Extended Key Usage:",
        "TLS Web Client Authentication, E-mail Protection",
        "X509v3 Subject Alternative Name:",
        "email:alice@example.com",
    ]
    assert "Signature Algorithm: sha256WithRSAEncryption" in text


@pytest.mark.parametrize("profile", ["server_cert", "usr_cert"])
def test_extensions_and_index_line_match_what_openssl_ca_makes(
    signer: BatchSigner,
    store: ResultsStore,
    ca_copy: Path,
    leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes],
    tmp_path: Path,
    profile: str,
) -> None:
    """The same CSR through casign and through the guide's `openssl ca -extensions PROFILE`."""
    subject, san = PROFILE_REQUESTS[profile]
    subject = GUIDE_SUBJECT[:-1] + subject[-1:]
    csr_pem = build_csr(leaf_keys["rsa2048"], subject, san)
    ours = issue(signer, csr_pem, profile)
    theirs = openssl_ca_sign(ca_copy, csr_pem, profile, tmp_path / "theirs.pem")
    ours_path = write_cert(tmp_path / "ours.pem", ours)

    ours_lines = extension_lines(openssl("x509", "-in", ours_path, "-noout", "-text").stdout)
    theirs_lines = extension_lines(
        openssl("x509", "-in", tmp_path / "theirs.pem", "-noout", "-text").stdout
    )
    # The guide's cnf copies no SAN from the CSR; casign adds one (browsers ignore the CN).
    assert without_san(ours_lines) == theirs_lines
    assert ours.subject == theirs.subject
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert (ours.not_valid_after_utc - ours.not_valid_before_utc) == (
        theirs.not_valid_after_utc - theirs.not_valid_before_utc
    )

    (openssl_line,) = (ca_copy / "intermediate" / "index.txt").read_text().splitlines()
    (our_line,) = store.index_lines()
    ours_fields, theirs_fields = our_line.split("\t"), openssl_line.split("\t")
    assert len(ours_fields) == len(theirs_fields) == 6
    assert ours_fields[0] == theirs_fields[0] == "V"
    assert len(ours_fields[1]) == len(theirs_fields[1]) == 13  # UTCTime YYMMDDHHMMSSZ
    assert ours_fields[2] == theirs_fields[2] == ""
    assert ours_fields[4] == theirs_fields[4] == "unknown"
    assert ours_fields[5] == theirs_fields[5]


def test_validity_is_375_days_by_default_and_days_is_honoured(
    signer: BatchSigner, leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes], tmp_path: Path
) -> None:
    csr_pem = build_csr(leaf_keys["rsa2048"], GUIDE_SUBJECT)
    default_path = write_cert(tmp_path / "default.pem", issue(signer, csr_pem))
    short_path = write_cert(tmp_path / "short.pem", issue(signer, csr_pem, days=90))

    not_before, not_after = openssl_dates(default_path)
    assert not_after - not_before == timedelta(days=375)
    # Backdated 5 minutes (the profile's backdate_seconds), never before the CA's notBefore.
    backdated = max(
        datetime.now(UTC) - timedelta(minutes=5), signer.authority.intermediate.not_valid_before_utc
    )
    assert abs(not_before - backdated) < timedelta(minutes=1)
    not_before, not_after = openssl_dates(short_path)
    assert not_after - not_before == timedelta(days=90)


def test_days_beyond_the_profile_maximum_is_refused(
    signer: BatchSigner, leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes]
) -> None:
    csr_pem = build_csr(leaf_keys["rsa2048"], GUIDE_SUBJECT)
    (result,) = signer.sign_batch([job("too-long", csr_pem, "server_cert", days=826)])
    assert (result.status, result.code) == ("refused", "request.validity_too_long")


def test_tls_server_follows_the_baseline_requirements(
    signer: BatchSigner,
    chain_path: Path,
    leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes],
    tmp_path: Path,
) -> None:
    subject, san = PROFILE_REQUESTS["tls_server"]
    path = write_cert(
        tmp_path / "tls.pem",
        issue(signer, build_csr(leaf_keys["p256"], subject, san), "tls_server"),
    )
    text = openssl("x509", "-in", path, "-noout", "-text").stdout
    assert "Netscape" not in text
    lines = extension_lines(text)
    assert lines[lines.index("X509v3 Extended Key Usage:") + 1] == "TLS Web Server Authentication"

    not_before, not_after = openssl_dates(path)
    maximum = baseline_max_days(not_before.date())
    # BR 6.3.2 counts both ends of the validity period, so "200 days" ends one second short.
    assert not_after - not_before == timedelta(days=maximum) - timedelta(seconds=1)
    if not_before.date() >= datetime(2026, 3, 15).date():
        assert maximum <= 200


# -- serials and idempotency -----------------------------------------------------------------


def test_thousand_serials_are_distinct_positive_and_random_enough(
    signer: BatchSigner, store: ResultsStore, leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes]
) -> None:
    csr_pem = build_csr(leaf_keys["p256"], (("CN", "www.example.com"),))
    results = signer.sign_batch([job(f"serial-{n}", csr_pem) for n in range(1000)])
    assert all(result.status == "issued" for result in results)
    serials = [
        x509.load_pem_x509_certificate(result.certificate_pem.encode()).serial_number
        for result in results
        if result.certificate_pem
    ]
    assert len(serials) == len(set(serials)) == 1000
    assert all(0 < serial < 2**159 for serial in serials)  # BR 7.1
    assert all(serial.bit_length() > 64 for serial in serials)
    assert [result.serial for result in results] == [even_hex(serial) for serial in serials]
    assert store.count_issued() == store.count_serials() == 1000


def test_resigning_the_same_job_returns_the_same_certificate(
    signer: BatchSigner, leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes]
) -> None:
    csr_pem = build_csr(leaf_keys["rsa2048"], GUIDE_SUBJECT)
    (first,) = signer.sign_batch([job("same-job", csr_pem)])
    (second,) = signer.sign_batch([job("same-job", csr_pem)])
    assert first.status == second.status == "issued"
    assert first.certificate_pem == second.certificate_pem
    assert first.serial == second.serial

    other_csr = build_csr(leaf_keys["p256"], GUIDE_SUBJECT)
    (reused,) = signer.sign_batch([job("same-job", other_csr)])
    assert (reused.status, reused.code) == ("refused", "request.job_id_reused")


def test_a_redelivered_unpublished_job_is_signed_again_byte_for_byte(
    authority: SigningAuthority,
    store: ResultsStore,
    leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stored record fixes the TBS; RSA PKCS#1 v1.5 is deterministic, so the bytes repeat."""
    csr_pem = build_csr(leaf_keys["rsa2048"], GUIDE_SUBJECT)
    lost: list[str] = []

    def publish_fails(issued: Iterable[Issued], *_: object) -> None:
        lost.extend(item.certificate_pem for item in issued)
        raise Retryable("results store went away")

    crashing = BatchSigner(authority, store)
    monkeypatch.setattr(crashing.store, "publish", publish_fails)
    with pytest.raises(Retryable):
        crashing.sign_batch([job("redelivered", csr_pem)])
    monkeypatch.undo()
    assert store.job_state("redelivered")["state"] == "reserved"

    (result,) = BatchSigner(authority, store).sign_batch([job("redelivered", csr_pem)])
    assert result.status == "issued"
    assert [result.certificate_pem] == lost
    assert store.count_issued() == 1


# -- index.txt -------------------------------------------------------------------------------


def test_index_line_is_what_openssl_ca_would_write(
    signer: BatchSigner,
    store: ResultsStore,
    leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes],
    tmp_path: Path,
) -> None:
    path = write_cert(
        tmp_path / "leaf.pem", issue(signer, build_csr(leaf_keys["rsa2048"], GUIDE_SUBJECT))
    )
    out = openssl(
        "x509", "-in", path, "-noout", "-serial", "-enddate", "-subject", "-nameopt", "compat"
    ).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines())
    expiry = datetime.strptime(fields["notAfter"], "%b %d %H:%M:%S %Y GMT")

    (line,) = store.index_lines()
    assert line == "\t".join(
        ["V", expiry.strftime("%y%m%d%H%M%SZ"), "", fields["serial"], "unknown", fields["subject"]]
    )
    serial = line.split("\t")[3]
    assert serial == serial.upper() and len(serial) % 2 == 0
    assert fields["subject"] == (
        "/C=US/ST=California/L=Mountain View/O=Alice Ltd/OU=Alice Ltd Web Services/CN=www.example.com"
    )


def test_a_slash_inside_a_subject_value_is_escaped_in_the_index(
    signer: BatchSigner, store: ResultsStore, leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes]
) -> None:
    subject = (("C", "GB"), ("O", "Alice/Bob Ltd"), ("CN", "www.example.com"))
    certificate = issue(signer, build_csr(leaf_keys["p256"], subject))

    (line,) = store.index_lines()
    fields = line.split("\t")
    assert len(fields) == 6
    assert fields[5] == r"/C=GB/O=Alice\/Bob Ltd/CN=www.example.com"
    assert IndexEntry.from_openssl_line(line) == IndexEntry.for_certificate(certificate)
    assert IndexEntry.from_openssl_line(line).to_openssl_line() == line


def test_control_characters_in_a_name_cannot_break_an_index_line() -> None:
    """The CSR policy refuses these; the index escapes them anyway (defence in depth)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Alice\tLtd\nV\t991231235959Z"),
            x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com/CN=evil"),
        ]
    )
    subject = openssl_oneline(name)
    assert "\t" not in subject and "\n" not in subject
    # Split where OpenSSL would, on every `/` not escaped: still two attributes.
    assert re.split(r"(?<!\\)/", subject)[1:] == [
        r"O=Alice\x09Ltd\x0AV\x09991231235959Z",
        r"CN=www.example.com\/CN=evil",
    ]
    entry = IndexEntry(
        status=Status.VALID,
        expires=datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC),
        serial=0x10,
        subject=subject,
    )
    line = entry.to_openssl_line()
    assert line.count("\t") == 5
    assert IndexEntry.from_openssl_line(line) == entry


# -- the exported index with openssl ca -gencrl / -revoke and openssl ocsp -------------------


def test_exported_index_works_with_openssl_ca_crl_and_ocsp(
    signer: BatchSigner,
    store: ResultsStore,
    redis_url: str,
    store_prefix: str,
    ca_copy: Path,
    leaf_keys: dict[str, CertificateIssuerPrivateKeyTypes],
    tmp_path: Path,
) -> None:
    intermediate = ca_copy / "intermediate"
    cnf = intermediate / "openssl.cnf"
    chain = intermediate / "certs" / "ca-chain.cert.pem"
    issuer = intermediate / "certs" / "intermediate.cert.pem"
    server = write_cert(
        tmp_path / "server.pem", issue(signer, build_csr(leaf_keys["rsa2048"], GUIDE_SUBJECT))
    )
    subject, san = PROFILE_REQUESTS["usr_cert"]
    client = write_cert(
        tmp_path / "client.pem",
        issue(signer, build_csr(leaf_keys["p256"], subject, san), "usr_cert"),
    )
    slashed = (("C", "GB"), ("O", "Alice/Bob Ltd"), ("CN", "www.example.org"))
    write_cert(tmp_path / "slashed.pem", issue(signer, build_csr(leaf_keys["ed25519"], slashed)))

    exported = CliRunner().invoke(
        casign_main,
        [
            "index",
            "export",
            "--ca",
            str(ca_copy),
            "--store",
            redis_url,
            "-o",
            str(intermediate / "index.txt"),
        ],
        env={"CASIGN_STORE_PREFIX": store_prefix},
    )
    assert exported.exit_code == 0, exported.output
    assert (intermediate / "index.txt").read_text().splitlines() == list(store.index_lines())

    openssl("ca", "-gencrl", "-config", cnf, "-out", tmp_path / "crl.pem")
    crl = openssl("crl", "-in", tmp_path / "crl.pem", "-noout", "-text", "-CAfile", chain)
    assert "verify OK" in crl.stderr
    assert "No Revoked Certificates." in crl.stdout

    revoked = openssl("ca", "-config", cnf, "-revoke", server, "-crl_reason", "keyCompromise")
    server_serial = even_hex(x509.load_pem_x509_certificate(server.read_bytes()).serial_number)
    assert "Database updated" in revoked.stderr
    status = {
        line.split("\t")[3]: line.split("\t")[0]
        for line in (intermediate / "index.txt").read_text().splitlines()
    }
    assert len(status) == 3
    assert [serial for serial, state in status.items() if state == "R"] == [server_serial]

    openssl("ca", "-gencrl", "-config", cnf, "-out", tmp_path / "crl2.pem")
    crl = openssl("crl", "-in", tmp_path / "crl2.pem", "-noout", "-text").stdout
    listed = [
        line.split(":", 1)[1].strip() for line in crl.splitlines() if "Serial Number:" in line
    ]
    assert listed == [server_serial]
    assert "Key Compromise" in crl

    # openssl ocsp as a one-shot responder reading the same index (request and response files).
    openssl(
        "ocsp", "-issuer", issuer, "-cert", server, "-cert", client, "-no_nonce",
        "-reqout", tmp_path / "req.der",
    )  # fmt: skip
    openssl(
        "ocsp", "-index", intermediate / "index.txt", "-CA", issuer, "-rsigner", issuer,
        "-rkey", intermediate / "private" / "intermediate.key.pem",
        "-reqin", tmp_path / "req.der", "-respout", tmp_path / "resp.der",
    )  # fmt: skip
    answer = openssl(
        "ocsp", "-respin", tmp_path / "resp.der", "-issuer", issuer, "-cert", server,
        "-cert", client, "-CAfile", chain, "-no_nonce",
    )  # fmt: skip
    assert "Response verify OK" in answer.stderr
    assert f"{server}: revoked" in answer.stdout
    assert f"{client}: good" in answer.stdout

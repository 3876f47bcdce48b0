"""serverkeygen keys wrapped under a secret the client shares with the server (RFC 7030 4.4.1.1):
`openssl cms -decrypt -secretkey -secretkeyid` opens what the server seals and `openssl cms
-verify` checks the server signed it; `casign est enroll` does the same itself; the server seals
only under a secret listed for the client asking, and does not start with a secret file others
may read.

One deployment serves the module, as in test_est: a real worker, `casign est` as a process, its
clients added with `casign est client add --key-secret`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from core.errors import ConfigurationError, RefusalCode
from est.client import build_csr
from est.key_envelope import (
    KeyEncryptionKey,
    SealedKeyError,
    open_key_sealed_with_secret,
    seal_key,
)
from est.key_secrets import DECRYPT_KEY_ID, load_key_encryption_key, requested_secret_identifier
from est.refusals import EstRefusal
from est.settings import load_settings, settings_path
from est.wire import parse_csr, private_key_pkcs8
from tests.cas import make_alice_ca
from tests.est_service import (
    EstDeployment,
    add_password_client,
    basic,
    issue_server_certificate,
    make_deployment,
    running,
    write_private,
)
from tests.openssl_cli import openssl
from tests.test_est import base64_file, enroll_with_curl, open_with_openssl, public_pem
from tests.test_est_sealed_key import (
    issued,
    openssl_signed_key_package,
    openssl_verified_key,
    server_signer,
)

pytestmark = pytest.mark.slow

SETTINGS = """\
default_label = "usr_cert"
wait_seconds = 60
"""
# Each client's secrets: est.toml name -> (identifier, size in octets).
FLEET_SECRETS = {"fleet-aes256": ("a1b2c3d4e5f60718", 32), "fleet-aes128": ("0f0e", 16)}
OTHER_SECRET = ("5e5e5e5e", 24)


def secret_file(directory: Path, name: str, size: int) -> Path:
    """A secret as `openssl rand -hex` writes it (hex, a line break), private to its owner."""
    path = directory / f"{name}.kek"
    write_private(path, secrets.token_bytes(size).hex().encode() + b"\n")
    return path


def secret_hex(path: Path) -> str:
    return path.read_text().strip()


@pytest.fixture(scope="module")
def est(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str, redis_url: str
) -> Iterator[EstDeployment]:
    deployment = make_deployment(
        tmp_path_factory.mktemp("est-kek"), broker_url, redis_url, SETTINGS
    )
    yield from running(_configured(deployment))


def _configured(deployment: EstDeployment) -> EstDeployment:
    issue_server_certificate(deployment)
    listed = []
    for name, (identifier, size) in FLEET_SECRETS.items():
        listed += ["--key-secret", f"{identifier}={secret_file(deployment.directory, name, size)}"]
    add_password_client(deployment, "kek-fleet", *listed)
    identifier, size = OTHER_SECRET
    other = secret_file(deployment.directory, "other", size)
    add_password_client(deployment, "kek-other", "--key-secret", f"{identifier}={other}")
    deployment.start_server()
    return deployment


def secret_csr(
    directory: Path, name: str, identifier: bytes, recipient: x509.Certificate | None = None
) -> Path:
    """A base64 CSR whose DecryptKeyIdentifier is `identifier` (and, with `recipient`, whose
    AsymmetricDecryptKeyIdentifier names that certificate too)."""
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), name, [], recipient, identifier)
    der_path = directory / f"{name}.csr.der"
    der_path.write_bytes(csr.public_bytes(serialization.Encoding.DER))
    return base64_file(der_path)


# --- the envelope, with openssl on either side ------------------------------------------------


@pytest.mark.parametrize(("size", "wrap"), [(16, "128"), (24, "192"), (32, "256")])
def test_openssl_opens_a_key_sealed_under_a_secret_and_verifies_the_server(
    tmp_path: Path, size: int, wrap: str
) -> None:
    kek = KeyEncryptionKey(secrets.token_bytes(8), secrets.token_bytes(size))
    made = ec.generate_private_key(ec.SECP256R1())
    sealed = tmp_path / "sealed.der"
    sealed.write_bytes(seal_key(private_key_pkcs8(made), kek, server_signer("ec")))
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", sealed).stdout
    assert "d.kekri:" in printed and f"id-aes{wrap}-wrap" in printed
    assert "pkcs7-signedData" in printed and "aes-256-cbc" in printed
    secret_args = ("-secretkey", kek.secret.hex(), "-secretkeyid", kek.identifier.hex())
    openssl(
        "cms", "-decrypt", "-inform", "DER", "-in", sealed, *secret_args,
        "-out", tmp_path / "signed.der",
    )  # fmt: skip
    assert openssl_verified_key(tmp_path) == made.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Another secret of the same identifier does not open it.
    wrong = ("-secretkey", secrets.token_bytes(size).hex(), "-secretkeyid", kek.identifier.hex())
    refused = openssl("cms", "-decrypt", "-inform", "DER", "-in", sealed, *wrong, check=False)
    assert refused.returncode != 0


def test_the_client_opens_what_openssl_sealed_under_the_secret_and_nothing_else(
    tmp_path: Path,
) -> None:
    """Another implementation's answer: `openssl cms -sign`, then `openssl cms -encrypt
    -secretkey -secretkeyid` (a KEKRecipientInfo, content type data)."""
    signer, made = openssl_signed_key_package(tmp_path)
    kek = KeyEncryptionKey(bytes.fromhex("c0ffee"), secrets.token_bytes(32))
    openssl(
        "cms", "-encrypt", "-binary", "-aes256", "-outform", "DER", "-in", tmp_path / "signed.p7",
        "-secretkey", kek.secret.hex(), "-secretkeyid", kek.identifier.hex(),
        "-out", tmp_path / "sealed.der",
    )  # fmt: skip
    sealed = (tmp_path / "sealed.der").read_bytes()
    assert open_key_sealed_with_secret(sealed, kek, signer.certificate) == made
    with pytest.raises(SealedKeyError, match="does not unwrap"):
        wrong = KeyEncryptionKey(kek.identifier, secrets.token_bytes(32))
        open_key_sealed_with_secret(sealed, wrong, signer.certificate)
    with pytest.raises(SealedKeyError, match="not for the secret beef"):
        open_key_sealed_with_secret(
            sealed, KeyEncryptionKey(b"\xbe\xef", kek.secret), signer.certificate
        )
    with pytest.raises(SealedKeyError, match="does not fit a secret of 16"):
        open_key_sealed_with_secret(
            sealed, KeyEncryptionKey(kek.identifier, kek.secret[:16]), signer.certificate
        )
    with pytest.raises(SealedKeyError, match="not signed by the EST server"):
        open_key_sealed_with_secret(sealed, kek, server_signer("ec").certificate)


def test_a_key_encryption_key_is_16_24_or_32_octets_and_hides_its_secret() -> None:
    secret = secrets.token_bytes(32)
    assert secret.hex() not in repr(KeyEncryptionKey(b"\x01", secret))
    assert repr(secret) not in repr(KeyEncryptionKey(b"\x01", secret))
    for size in (0, 15, 20, 33):
        with pytest.raises(ValueError, match="16, 24 or 32 octets"):
            KeyEncryptionKey(b"\x01", bytes(size))
    with pytest.raises(ValueError, match="identifier"):
        KeyEncryptionKey(b"", secret)


def test_the_csr_names_its_secret_by_an_octet_string() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = parse_csr(
        build_csr(key, "device", [], None, b"\x0a\x1b").public_bytes(serialization.Encoding.DER)
    )
    assert requested_secret_identifier(csr) == b"\x0a\x1b"
    assert requested_secret_identifier(build_csr(key, "device", [])) is None
    as_text = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .add_attribute(DECRYPT_KEY_ID, b"0a1b", _tag=_ASN1Type.UTF8String)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(EstRefusal) as caught:
        requested_secret_identifier(as_text)
    assert (caught.value.code, caught.value.status) == (RefusalCode.CSR_MALFORMED, 400)
    assert "DecryptKeyIdentifier" in caught.value.message


# --- the secret's file ---------------------------------------------------------------------------


def test_a_secret_file_is_taken_only_private_owned_and_of_a_key_size(tmp_path: Path) -> None:
    good = secret_file(tmp_path, "good", 24)
    kek = load_key_encryption_key(good, b"\x01", "key secret")
    assert kek.secret.hex() == secret_hex(good)

    def refused(path: Path) -> str:
        with pytest.raises(ConfigurationError) as caught:
            load_key_encryption_key(path, b"\x01", "key secret")
        message = str(caught.value)
        assert str(path) in message
        return message

    loose = secret_file(tmp_path, "loose", 32)
    loose.chmod(0o640)
    assert "mode 0640" in refused(loose) and secret_hex(loose) not in refused(loose)
    write_private(tmp_path / "raw", b"\xff" * 32)  # raw octets are not the form it takes
    assert "not UTF-8 text" in refused(tmp_path / "raw")
    write_private(tmp_path / "short", b"00" * 20 + b"\n")
    assert "32, 48 or 64 hex digits" in refused(tmp_path / "short")
    if os.geteuid() == 0:  # only root can give a file away to test the owner check
        theirs = secret_file(tmp_path, "theirs", 32)
        os.chown(theirs, 65534, -1)
        assert "owned by uid 65534" in refused(theirs)


def casign(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casign", *args],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


def test_a_listed_secret_file_left_open_stops_the_server_at_start(
    tmp_path: Path, redis_url: str, broker_url: str
) -> None:
    folder = make_alice_ca(tmp_path / "ca")
    ca = str(folder.root)
    password = tmp_path / "password"
    write_private(password, b"a long enough password\n")
    secret = secret_file(tmp_path, "fleet", 32)
    added = casign(
        "est", "client", "add", "fleet", "--ca", ca, "--password-file", str(password),
        "--key-secret", f"0A1B={secret}",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    (listing,) = load_settings(settings_path(folder.root)).clients["fleet"].key_secrets
    assert (listing.id, listing.file) == ("0a1b", str(secret))
    assert secret_hex(secret) not in settings_path(folder.root).read_text()
    secret.chmod(0o644)
    env = {**os.environ, "CASIGN_STORE_PREFIX": "casign-test:est-kek-loose"}
    served = casign(
        "est", "--ca", ca, "--port", "0", "--broker", broker_url, "--store", redis_url, env=env
    )
    assert served.returncode == 2, served.stderr
    assert str(secret) in served.stderr and "chmod 600" in served.stderr
    assert "'fleet'" in served.stderr and "Traceback" not in served.stderr
    assert secret_hex(secret) not in served.stderr + served.stdout
    # `client add` reads the file as the server would, and refuses it the same way.
    again = casign(
        "est", "client", "add", "more", "--ca", ca, "--password-file", str(password),
        "--key-secret", f"0a1c={secret}",
    )  # fmt: skip
    assert again.returncode != 0 and "chmod 600" in again.stderr
    assert "more" not in load_settings(settings_path(folder.root)).clients


# --- the server, with curl and openssl as a device ---------------------------------------------


@pytest.mark.parametrize("name", sorted(FLEET_SECRETS))
def test_serverkeygen_wraps_the_key_under_the_named_secret(
    est: EstDeployment, tmp_path: Path, name: str
) -> None:
    identifier, _ = FLEET_SECRETS[name]
    secret = secret_hex(est.directory / f"{name}.kek")
    body = secret_csr(tmp_path, f"{name}@example.com", bytes.fromhex(identifier))
    answer = enroll_with_curl(
        est, body, "--user", basic(est, "kek-fleet"), operation="serverkeygen"
    )
    public, certificate = open_with_openssl(
        est, answer, tmp_path, "-secretkey", secret, "-secretkeyid", identifier
    )
    assert public == public_pem(certificate)
    assert certificate.subject.rfc4514_string() == f"CN={name}@example.com"
    assert secret not in est.server_log.read_text()


def test_serverkeygen_refuses_a_secret_not_listed_for_the_client(
    est: EstDeployment, tmp_path: Path
) -> None:
    others, _ = OTHER_SECRET
    taken = enroll_with_curl(
        est, secret_csr(tmp_path, "taken@example.com", bytes.fromhex(others)), "--user",
        basic(est, "kek-fleet"), operation="serverkeygen",
    )  # fmt: skip
    assert (taken.status, taken.code) == (403, RefusalCode.EST_KEY_RECIPIENT_UNKNOWN)
    assert others in taken.body.decode()
    unknown = enroll_with_curl(
        est, secret_csr(tmp_path, "unknown@example.com", b"\x99"), "--user",
        basic(est, "kek-fleet"), operation="serverkeygen",
    )  # fmt: skip
    assert (unknown.status, unknown.code) == (403, RefusalCode.EST_KEY_RECIPIENT_UNKNOWN)
    # A secret and a certificate at once: which one should open the key?
    fleet_id, _ = FLEET_SECRETS["fleet-aes256"]
    recipient = issued("device", ec.generate_private_key(ec.SECP256R1()))
    both = enroll_with_curl(
        est, secret_csr(tmp_path, "both@example.com", bytes.fromhex(fleet_id), recipient),
        "--user", basic(est, "kek-fleet"), operation="serverkeygen",
    )  # fmt: skip
    assert (both.status, both.code) == (400, RefusalCode.EST_KEY_RECIPIENT_AMBIGUOUS)


def test_casign_est_enroll_has_its_key_wrapped_under_its_secret_and_opens_it(
    est: EstDeployment, tmp_path: Path
) -> None:
    server = ("--server", est.url, "--cacert", str(est.trust_path))
    fleet = ("--user", "kek-fleet", "--password-file", str(est.passwords["kek-fleet"]))
    identifier, size = FLEET_SECRETS["fleet-aes128"]
    secret = est.directory / "fleet-aes128.kek"
    done = est.casign(
        "est", "enroll", *server, *fleet, "--cn", "gina@example.com", "--serverkeygen",
        "--seal-key", "--secret-key-file", str(secret), "--secret-key-id", identifier,
        "--out", str(tmp_path / "kek"),
    )  # fmt: skip
    assert "sealed under its secret" in done.stdout
    assert secret_hex(secret) not in done.stdout + done.stderr
    key_path = tmp_path / "kek" / "gina@example.com.key.pem"
    assert key_path.stat().st_mode & 0o777 == 0o400
    made = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    issued_pem = (tmp_path / "kek" / "gina@example.com.cert.pem").read_bytes()
    assert made.public_key() == x509.load_pem_x509_certificate(issued_pem).public_key()
    # The server wraps under its own copy: a client holding another secret cannot open it.
    stale = secret_file(tmp_path, "stale", size)
    unopened = est.casign(
        "est", "enroll", *server, *fleet, "--cn", "hank@example.com", "--serverkeygen",
        "--seal-key", "--secret-key-file", str(stale), "--secret-key-id", identifier,
        "--out", str(tmp_path / "stale"), check=False,
    )  # fmt: skip
    assert unopened.returncode == 2 and "does not unwrap" in unopened.stderr
    assert not (tmp_path / "stale").exists()
    others, _ = OTHER_SECRET
    refused = est.casign(
        "est", "enroll", *server, *fleet, "--cn", "ivan@example.com", "--serverkeygen",
        "--seal-key", "--secret-key-file", str(est.directory / "other.kek"),
        "--secret-key-id", others, "--out", str(tmp_path / "refused"), check=False,
    )  # fmt: skip
    assert refused.returncode == 3
    assert f"refused [{RefusalCode.EST_KEY_RECIPIENT_UNKNOWN}]" in refused.stderr
    assert not (tmp_path / "refused").exists()

"""The PKCS#11 key backend against a real SoftHSM token made fresh for each test."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import threading
import traceback
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from core.errors import ConfigurationError, Retryable
from core.keys import KeyType
from keystore import SigningKey, generate_key, load_signing_key, parse_key_uri
from keystore.pkcs11 import Pkcs11EcPrivateKey, Pkcs11KeyBackend, Pkcs11RsaPrivateKey
from tests.softhsm_token import SOFTHSM_AVAILABLE, SOFTHSM_SKIP_REASON, SoftHsmToken

pytestmark = pytest.mark.skipif(not SOFTHSM_AVAILABLE, reason=SOFTHSM_SKIP_REASON)

MAKE_TOKEN = Path(__file__).resolve().parents[1] / "softhsm" / "make-token.sh"
NOW = datetime.datetime.now(datetime.UTC)
DATA = b"to be signed " * 50


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca_certificate(key: SigningKey, **sign_options: object) -> x509.Certificate:
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name("casign test CA"))
        .issuer_name(name("casign test CA"))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return builder.sign(key, **sign_options)  # type: ignore[arg-type]


def leaf_certificate(
    ca: x509.Certificate, ca_key: SigningKey, **sign_options: object
) -> x509.Certificate:
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name("www.example.test"))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("www.example.test")]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(ca_key, **sign_options)  # type: ignore[arg-type]


def write_pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False)


def openssl_verifies(tmp_path: Path, ca: x509.Certificate, leaf: x509.Certificate) -> None:
    ca_pem = write_pem(tmp_path / "ca.pem", ca)
    leaf_pem = write_pem(tmp_path / "leaf.pem", leaf)
    for certificate in (ca_pem, leaf_pem):
        result = openssl("verify", "-CAfile", ca_pem, certificate)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == f"{certificate}: OK"


def openssl_signature_algorithm(tmp_path: Path, certificate: x509.Certificate) -> str:
    pem = write_pem(tmp_path / "inspect.pem", certificate)
    text = openssl("x509", "-in", pem, "-noout", "-text").stdout
    return next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if "Signature Algorithm" in line
    )


@pytest.mark.parametrize(
    ("key_type", "expected_class", "openssl_algorithm"),
    [
        (KeyType.RSA2048, Pkcs11RsaPrivateKey, "sha256WithRSAEncryption"),
        (KeyType.P256, Pkcs11EcPrivateKey, "ecdsa-with-SHA256"),
        (KeyType.P384, Pkcs11EcPrivateKey, "ecdsa-with-SHA256"),
    ],
)
def test_token_key_signs_ca_and_leaf_certificates(
    softhsm_token: SoftHsmToken,
    tmp_path: Path,
    key_type: KeyType,
    expected_class: type,
    openssl_algorithm: str,
) -> None:
    uri = softhsm_token.key_uri("ca")
    generated = generate_key(uri, key_type)
    key = load_signing_key(uri)
    assert isinstance(key, expected_class)
    assert key.public_key() == generated.public_key()
    assert key.public_key() is key.public_key()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert key.curve.name == key_type.curve.name
    else:
        assert key.key_size == key_type.rsa_bits

    ca = ca_certificate(key, algorithm=hashes.SHA256())
    leaf = leaf_certificate(ca, key, algorithm=hashes.SHA256())

    ca.verify_directly_issued_by(ca)
    leaf.verify_directly_issued_by(ca)
    openssl_verifies(tmp_path, ca, leaf)
    assert openssl_signature_algorithm(tmp_path, leaf) == openssl_algorithm


def test_rsa_pss_certificates_verify(softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    key = generate_key(softhsm_token.key_uri("ca"), KeyType.RSA2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)

    ca = ca_certificate(key, algorithm=hashes.SHA256(), rsa_padding=pss)
    leaf = leaf_certificate(ca, key, algorithm=hashes.SHA256(), rsa_padding=pss)

    leaf.verify_directly_issued_by(ca)
    openssl_verifies(tmp_path, ca, leaf)
    assert openssl_signature_algorithm(tmp_path, leaf) == "rsassaPss"


@pytest.mark.parametrize("salt_length", [0, 20, padding.PSS.DIGEST_LENGTH, padding.PSS.MAX_LENGTH])
@pytest.mark.parametrize("algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_rsa_pss_signature_uses_the_padding_salt_and_mgf(
    softhsm_token: SoftHsmToken,
    algorithm: hashes.HashAlgorithm,
    salt_length: int | padding._MaxLength | padding._DigestLength,
) -> None:
    key = generate_key(softhsm_token.key_uri("ca"), KeyType.RSA2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=salt_length)

    signature = key.sign(DATA, pss, algorithm)

    key.public_key().verify(signature, DATA, pss, algorithm)
    if isinstance(salt_length, int):
        # The verifier's explicit salt length must match what the token used.
        other = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=salt_length + 1)
        with pytest.raises(InvalidSignature):
            key.public_key().verify(signature, DATA, other, algorithm)


@pytest.mark.parametrize("algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.P256, KeyType.P384])
def test_sha2_signatures_verify(
    softhsm_token: SoftHsmToken,
    tmp_path: Path,
    key_type: KeyType,
    algorithm: hashes.HashAlgorithm,
) -> None:
    key = generate_key(softhsm_token.key_uri("ca"), key_type)

    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(DATA, padding.PKCS1v15(), algorithm)
        key.public_key().verify(signature, DATA, padding.PKCS1v15(), algorithm)
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        signature = key.sign(DATA, ec.ECDSA(algorithm))
        key.public_key().verify(signature, DATA, ec.ECDSA(algorithm))

    ca = ca_certificate(key, algorithm=algorithm)
    openssl_verifies(tmp_path, ca, leaf_certificate(ca, key, algorithm=algorithm))


def test_crl_signed_by_token_key_verifies(softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    key = generate_key(softhsm_token.key_uri("ca"), KeyType.P256)
    ca = ca_certificate(key, algorithm=hashes.SHA256())
    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(12345)
        .revocation_date(NOW - datetime.timedelta(minutes=1))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(NOW - datetime.timedelta(minutes=1))
        .next_update(NOW + datetime.timedelta(days=1))
        .add_revoked_certificate(revoked)
        .sign(key, hashes.SHA256())
    )

    assert crl.is_signature_valid(key.public_key())
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    result = openssl("crl", "-in", crl_pem, "-noout", "-CAfile", write_pem(tmp_path / "ca.pem", ca))
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stdout + result.stderr


def test_unsupported_hash_is_refused(softhsm_token: SoftHsmToken) -> None:
    key = generate_key(softhsm_token.key_uri("ca"), KeyType.P256)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    with pytest.raises(UnsupportedAlgorithm, match="SHA-256, SHA-384 or SHA-512"):
        key.sign(DATA, ec.ECDSA(hashes.SHA1()))


def test_key_is_made_sensitive_and_non_extractable(softhsm_token: SoftHsmToken) -> None:
    uri = softhsm_token.key_uri("ca")
    key = generate_key(uri, KeyType.RSA2048)
    assert isinstance(key, rsa.RSAPrivateKey)

    with pytest.raises(TypeError, match="non-extractable"):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    with pytest.raises(TypeError, match="non-extractable"):
        key.private_numbers()

    # Ask the token itself, from another process.
    listing = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            softhsm_token.module_path,
            "--token-label",
            softhsm_token.token_label,
            "--login",
            "--pin",
            "env:TEST_PIN",
            "--list-objects",
            "--type",
            "privkey",
        ],
        env={
            **os.environ,
            **softhsm_token.env,
            "TEST_PIN": softhsm_token.pin_file.read_text().strip(),
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    access = next(line for line in listing.splitlines() if "Access:" in line)
    assert "never extractable" in access
    assert "always sensitive" in access
    usage = next(line for line in listing.splitlines() if "Usage:" in line)
    assert usage.split(":", 1)[1].strip() == "sign"


def test_generation_refuses_an_existing_label(softhsm_token: SoftHsmToken) -> None:
    uri = softhsm_token.key_uri("ca")
    generate_key(uri, KeyType.P256)
    with pytest.raises(ConfigurationError, match="already holds an object labelled 'ca'") as caught:
        generate_key(uri, KeyType.P256)
    assert str(parse_key_uri(uri)) in str(caught.value)


def test_key_is_found_by_percent_encoded_id(softhsm_token: SoftHsmToken) -> None:
    made = generate_key(
        softhsm_token.key_uri("ca").replace(";object=ca", ";object=ca;id=%FF%00%7f"), KeyType.P256
    )
    by_id = softhsm_token.key_uri("ca").replace(";object=ca", ";id=%ff%00%7F")

    key = load_signing_key(by_id)

    assert key.public_key() == made.public_key()
    with pytest.raises(ConfigurationError, match="no private key with id ff007e"):
        load_signing_key(by_id.replace("%7F", "%7E"))


def test_token_is_found_by_serial(softhsm_token: SoftHsmToken) -> None:
    made = generate_key(softhsm_token.key_uri("ca"), KeyType.P256)
    token = pkcs11.lib(softhsm_token.module_path).get_token(token_label=softhsm_token.token_label)
    serial = token.serial.decode()
    by_serial = softhsm_token.key_uri("ca").replace(
        f"token={softhsm_token.token_label}", f"serial={serial}"
    )

    assert load_signing_key(by_serial).public_key() == made.public_key()
    with pytest.raises(ConfigurationError, match="name the token with token=LABEL or serial="):
        load_signing_key(by_serial.replace(f"serial={serial};", ""))


def test_wrong_pin_names_the_uri_and_never_the_pin(
    softhsm_token: SoftHsmToken, tmp_path: Path
) -> None:
    generate_key(softhsm_token.key_uri("ca"), KeyType.P256)
    Pkcs11KeyBackend().close()  # log out, so the next load must log in again
    wrong_pin = "wrong-" + os.urandom(8).hex()
    wrong_pin_file = tmp_path / "wrong-pin"
    wrong_pin_file.write_text(wrong_pin)
    wrong_pin_file.chmod(0o600)
    uri = softhsm_token.key_uri("ca").replace(str(softhsm_token.pin_file), str(wrong_pin_file))

    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(uri)

    message = str(caught.value)
    assert message.startswith(
        f"{parse_key_uri(uri)}: login to token 'casign-test' failed (PinIncorrect)"
    )
    right_pin = softhsm_token.pin_file.read_text().strip()
    for pin in (wrong_pin, right_pin):
        assert pin not in message
        assert pin not in "".join(traceback.format_exception(caught.value))


def test_login_without_a_pin_source_is_refused(softhsm_token: SoftHsmToken) -> None:
    Pkcs11KeyBackend().close()
    uri = f"pkcs11:token={softhsm_token.token_label};object=ca"
    with pytest.raises(ConfigurationError, match=r"needs a login; name its PIN with pin-source="):
        load_signing_key(uri)


def test_missing_token_is_named(softhsm_token: SoftHsmToken) -> None:
    uri = softhsm_token.key_uri("ca").replace("token=casign-test", "token=no-such-token")
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(uri)
    assert str(caught.value).startswith(f"{parse_key_uri(uri)}: no token labelled 'no-such-token'")
    assert "tokens present: 'casign-test'" in str(caught.value)


def test_missing_object_is_named(softhsm_token: SoftHsmToken) -> None:
    uri = softhsm_token.key_uri("no-such-key")
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(uri)
    assert str(caught.value) == (
        f"{parse_key_uri(uri)}: no private key labelled 'no-such-key' on token 'casign-test'"
    )


def test_missing_module_is_named(softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-pkcs11.so"
    uri = softhsm_token.key_uri("ca").replace(softhsm_token.module_path, str(missing))
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(uri)
    assert str(caught.value).startswith(
        f"{parse_key_uri(uri)}: cannot load the PKCS#11 module {missing}"
    )


def test_token_failure_while_signing_is_retryable_then_reopens(softhsm_token: SoftHsmToken) -> None:
    uri = softhsm_token.key_uri("ca")
    key = generate_key(uri, KeyType.RSA2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    key.sign(DATA, padding.PKCS1v15(), hashes.SHA256())
    # As after an HSM reset: every session this process had is gone.
    pkcs11.lib(softhsm_token.module_path).reinitialize()

    with pytest.raises(Retryable) as caught:
        key.sign(DATA, padding.PKCS1v15(), hashes.SHA256())
    assert str(caught.value).startswith(f"{parse_key_uri(uri)}: the token failed while signing")

    signature = key.sign(DATA, padding.PKCS1v15(), hashes.SHA256())
    key.public_key().verify(signature, DATA, padding.PKCS1v15(), hashes.SHA256())


def test_forked_child_signs_with_a_key_loaded_in_the_parent(softhsm_token: SoftHsmToken) -> None:
    key = generate_key(softhsm_token.key_uri("ca"), KeyType.P256)
    assert isinstance(key, Pkcs11EcPrivateKey)
    key.sign(DATA, ec.ECDSA(hashes.SHA256()))  # the parent's session is open before the fork

    signatures = []
    for _ in range(2):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            status = 1
            try:
                os.close(read_end)
                signature = key.sign(DATA, ec.ECDSA(hashes.SHA256()))
                reopened = key._token.pid == os.getpid()
                os.write(write_end, (b"reopened:" if reopened else b"shared:") + signature)
                status = 0
            except BaseException:
                os.write(write_end, traceback.format_exc().encode())
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            report = reader.read()
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0, report.decode(errors="replace")
        assert report.startswith(b"reopened:")
        signatures.append(report.removeprefix(b"reopened:"))

    for signature in signatures:
        key.public_key().verify(signature, DATA, ec.ECDSA(hashes.SHA256()))
    # The children's own module state did not disturb the parent's session.
    key.public_key().verify(
        key.sign(DATA, ec.ECDSA(hashes.SHA256())), DATA, ec.ECDSA(hashes.SHA256())
    )


def test_threads_share_the_session_safely(softhsm_token: SoftHsmToken) -> None:
    key = generate_key(softhsm_token.key_uri("ca"), KeyType.P256)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signatures: list[bytes] = []

    def sign_some() -> None:
        for _ in range(20):
            signatures.append(key.sign(DATA, ec.ECDSA(hashes.SHA384())))

    threads = [threading.Thread(target=sign_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(signatures) == 80
    for signature in signatures:
        key.public_key().verify(signature, DATA, ec.ECDSA(hashes.SHA384()))


@pytest.mark.skipif(
    shutil.which("pkcs11-tool") is None, reason="pkcs11-tool (opensc) is not installed"
)
def test_make_token_script_prints_a_uri_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "hsm"
    run = subprocess.run(
        ["bash", str(MAKE_TOKEN), str(directory), "script token", "intermediate", "p256"],
        capture_output=True,
        text=True,
        check=True,
    )
    uri = next(line for line in run.stdout.splitlines() if line.startswith("pkcs11:"))
    assert f"export SOFTHSM2_CONF={directory / 'softhsm2.conf'}" in run.stdout.splitlines()
    for secret in ("so-pin", "user-pin"):
        assert (directory / secret).stat().st_mode & 0o777 == 0o400
        assert (directory / secret).read_text().strip() not in run.stdout + run.stderr

    monkeypatch.setenv("SOFTHSM2_CONF", str(directory / "softhsm2.conf"))
    backend = Pkcs11KeyBackend()
    backend.close()
    try:
        key = load_signing_key(uri)
        assert isinstance(key, Pkcs11EcPrivateKey)
        key.public_key().verify(
            key.sign(DATA, ec.ECDSA(hashes.SHA256())), DATA, ec.ECDSA(hashes.SHA256())
        )
    finally:
        backend.close()

    again = subprocess.run(
        ["bash", str(MAKE_TOKEN), str(directory), "script token", "intermediate"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1
    assert "already has a token labelled 'script token'" in again.stderr

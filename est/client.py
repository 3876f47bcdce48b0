"""An EST client (RFC 7030) for scripts: cacerts, csrattrs, simpleenroll, simplereenroll and
serverkeygen over HTTPS, waiting out `202 Accepted` as `Retry-After` asks.

serverkeygen may ask for the key sealed to a certificate whose key the client holds (RFC 7030
4.4.1.2), or under a secret it shares with the server (4.4.1.1); the client then opens it, and
takes it only when the server's TLS certificate signed it.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from est.key_envelope import (
    KeyEncryptionKey,
    SealedKeyError,
    open_key_sealed_with_secret,
    open_sealed_key,
)
from est.key_recipients import ASYMMETRIC_DECRYPT_KEY_ID, key_identifier
from est.key_secrets import DECRYPT_KEY_ID
from est.wire import PKCS10_TYPE, load_certs_only, split_serverkeygen, wrap_base64

BASE_PATH = "/.well-known/est"
_MAX_ANSWER_BYTES = 1024 * 1024
_LONGEST_RETRY_AFTER = 300


class EstError(Exception):
    """The server refused (`status`, `code` and its sentence) or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}" if code else message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    retry_after: str | None
    body: bytes
    server_certificate: bytes | None = None  # DER, as TLS showed it


@dataclass(frozen=True)
class KeyRecipient:
    """A certificate and its key, to have serverkeygen's key sealed to (RFC 7030 4.4.1.2)."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _refusal(answer: Answer) -> EstError:
    """The server's `CODE: sentence`, or the status alone when the body is not of that form."""
    text = answer.body.decode("utf-8", errors="replace").strip()
    code, colon, sentence = text.partition(": ")
    if colon and code and " " not in code:
        return EstError(answer.status, code, sentence)
    return EstError(answer.status, "", f"HTTP {answer.status} {text[:200]}".strip())


class EstSession:
    """Talks to one EST server, authenticating with a client certificate or HTTP Basic."""

    def __init__(
        self,
        server_url: str,
        *,
        cacert: Path | None = None,
        label: str | None = None,
        certificate: Path | None = None,
        key: Path | None = None,
        username: str | None = None,
        password: bytes | None = None,
        timeout: float = 60.0,
    ) -> None:
        url = urllib.parse.urlsplit(server_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"{server_url!r} is not an https:// URL")
        self.host, self.port = url.hostname, url.port or 443
        self.prefix = url.path.rstrip("/") + BASE_PATH + (f"/{label}" if label else "")
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(cacert) if cacert else None)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if certificate is not None:
            self.context.load_cert_chain(certificate, key)
        self._authorization: str | None = None
        if username is not None and password is not None:
            token = base64.b64encode(username.encode() + b":" + password).decode("ascii")
            self._authorization = f"Basic {token}"

    def _exchange(self, method: str, operation: str, body: bytes | None = None) -> Answer:
        headers = {"Accept": "*/*"}
        if self._authorization:
            headers["Authorization"] = self._authorization
        if body is not None:
            headers["Content-Type"] = PKCS10_TYPE
            headers["Content-Transfer-Encoding"] = "base64"
        connection = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=self.timeout
        )
        try:
            connection.request(method, f"{self.prefix}/{operation}", body=body, headers=headers)
            # Read now: the connection lets its socket go with the answer when it closes.
            tls = connection.sock
            server_certificate = tls.getpeercert(binary_form=True) if tls is not None else None
            response = connection.getresponse()
            data = response.read(_MAX_ANSWER_BYTES)
            return Answer(
                response.status,
                response.getheader("Content-Type", ""),
                response.getheader("Retry-After"),
                data,
                server_certificate,
            )
        except (OSError, http.client.HTTPException) as exc:
            raise EstError(0, "", f"cannot talk to {self.host}:{self.port}: {exc}") from None
        finally:
            connection.close()

    def _ask(self, method: str, operation: str, body: bytes | None = None) -> Answer:
        """Ask; after `202 Accepted`, ask again when Retry-After says, until the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._exchange(method, operation, body)
            if answer.status == 200:
                return answer
            if answer.status != 202:
                raise _refusal(answer)
            try:
                wait = min(int(answer.retry_after or "5"), _LONGEST_RETRY_AFTER)
            except ValueError:
                wait = 5
            if time.monotonic() + wait > deadline:
                raise EstError(202, "", f"still not signed after {self.timeout:g} s")
            time.sleep(wait)

    def cacerts(self) -> list[x509.Certificate]:
        """The CA certificates (RFC 7030 4.1)."""
        return load_certs_only(self._ask("GET", "cacerts").body)

    def csrattrs(self) -> bytes:
        """The DER CsrAttrs the server wants a CSR to carry (RFC 7030 4.5)."""
        return base64.b64decode(b"".join(self._ask("GET", "csrattrs").body.split()))

    def _enroll(self, operation: str, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        body = wrap_base64(csr.public_bytes(serialization.Encoding.DER))
        certificates = load_certs_only(self._ask("POST", operation, body).body)
        if not certificates:
            raise EstError(200, "", "the server answered with no certificate")
        return certificates[0]

    def simpleenroll(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        return self._enroll("simpleenroll", csr)

    def simplereenroll(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        return self._enroll("simplereenroll", csr)

    def serverkeygen(
        self,
        csr: x509.CertificateSigningRequest,
        recipient: KeyRecipient | KeyEncryptionKey | None = None,
    ) -> tuple[bytes, x509.Certificate]:
        """(PKCS#8 DER key, certificate) made by the server for the CSR's names (RFC 7030 4.4).

        With `recipient`, a certificate and its key or a shared secret (whose identifier the CSR
        must carry, see `build_csr`), the key must come sealed to it and signed by the server's
        TLS certificate; it is opened here.
        """
        body = wrap_base64(csr.public_bytes(serialization.Encoding.DER))
        answer = self._ask("POST", "serverkeygen", body)
        parts = split_serverkeygen(answer.body, answer.content_type)
        certificate = parts.certificates[0]
        if recipient is None:
            if parts.sealed:
                raise EstError(200, "", "the server sealed the key, and no recipient was named")
            return parts.key_der, certificate
        if not parts.sealed:
            raise EstError(
                200, "", "the server answered with a key not sealed to the recipient asked for"
            )
        if answer.server_certificate is None:
            raise EstError(200, "", "the server's TLS certificate is unknown: cannot check the key")
        server = x509.load_der_x509_certificate(answer.server_certificate)
        try:
            if isinstance(recipient, KeyEncryptionKey):
                key_der = open_key_sealed_with_secret(parts.key_der, recipient, server)
            else:
                key_der = open_sealed_key(
                    parts.key_der, recipient.certificate, recipient.key, server
                )
        except SealedKeyError as exc:
            raise EstError(200, "", f"the sealed key does not open: {exc}") from None
        return key_der, certificate


def general_name(text: str) -> x509.GeneralName:
    """`DNS:name`, `IP:address`, `email:address` or `URI:uri` as a subjectAltName entry."""
    kind, colon, value = text.partition(":")
    kind = kind.strip().upper()
    if not colon or not value:
        raise ValueError(f"{text!r} is not KIND:VALUE (DNS, IP, email, URI)")
    if kind == "DNS":
        return x509.DNSName(value)
    if kind == "IP":
        return x509.IPAddress(ipaddress.ip_address(value))
    if kind == "EMAIL":
        return x509.RFC822Name(value)
    if kind == "URI":
        return x509.UniformResourceIdentifier(value)
    raise ValueError(f"{text!r}: the kind is not DNS, IP, email or URI")


def _signed(
    builder: x509.CertificateSigningRequestBuilder, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateSigningRequest:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def build_csr(
    key: CertificateIssuerPrivateKeyTypes,
    common_name: str,
    sans: list[str],
    key_recipient: x509.Certificate | None = None,
    secret_identifier: bytes | None = None,
) -> x509.CertificateSigningRequest:
    """A CSR for `common_name` with the subjectAltNames `sans` (KIND:VALUE), signed by `key`;
    with `key_recipient`, asking serverkeygen to seal the key to it (RFC 7030 4.4.1.2), with
    `secret_identifier`, to wrap it under the shared secret of that identifier (4.4.1.1)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if key_recipient is not None:
        builder = builder.add_attribute(
            ASYMMETRIC_DECRYPT_KEY_ID, key_identifier(key_recipient), _tag=_ASN1Type.OctetString
        )
    if secret_identifier is not None:
        builder = builder.add_attribute(
            DECRYPT_KEY_ID, secret_identifier, _tag=_ASN1Type.OctetString
        )
    if sans:
        names = [general_name(text) for text in sans]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _signed(builder, key)


def renewal_csr(
    current: x509.Certificate, key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateSigningRequest:
    """A CSR with the subject and subjectAltName of `current` (RFC 7030 4.2.2), signed by `key`."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(current.subject)
    try:
        names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(names.value, critical=names.critical)
    except x509.ExtensionNotFound:
        pass
    return _signed(builder, key)


def _issuing_key(key: object) -> CertificateIssuerPrivateKeyTypes:
    from cryptography.hazmat.primitives.asymmetric import ed448

    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise ValueError(f"a {type(key).__name__} cannot sign a CSR")
    return key


def load_pkcs8(der: bytes) -> CertificateIssuerPrivateKeyTypes:
    """The key of a serverkeygen answer (unencrypted PKCS#8 DER)."""
    return _issuing_key(serialization.load_der_private_key(der, password=None))


def load_recipient(cert_path: Path, key_path: Path) -> KeyRecipient:
    """The certificate (the first in the file) and unencrypted PEM key to seal a key to."""
    certificate = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"a {type(key).__name__} cannot open a sealed key (RSA or EC only)")
    if key.public_key() != certificate.public_key():
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    return KeyRecipient(certificate, key)


def load_pem_key(pem: bytes, passphrase: str | None) -> CertificateIssuerPrivateKeyTypes:
    """A PEM private key, decrypted with `passphrase` when it is encrypted."""
    password = passphrase.encode() if passphrase else None
    return _issuing_key(serialization.load_pem_private_key(pem, password=password))

"""An RFC 6960 OCSP responder over HTTP (GET and POST, appendix A.1), answering from the store.

It signs with the delegated OCSP certificate and key the worker side keeps in the CA folder
(`intermediate/certs/ocsp.cert.pem`, `intermediate/private/ocsp.key.pem`); it never opens the
intermediate's key. A renewed delegate certificate is picked up without a restart.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from core.errors import ConfigurationError, Retryable
from core.index import format_serial
from core.layout import intermediate_cert_path, ocsp_cert_path, ocsp_key_path
from core.revocation import revocation_info
from store.results import ResultsStore

log = logging.getLogger("casign.ocsp")

MAX_REQUEST_BYTES = 16 * 1024  # a one-certificate request is ~100 bytes; a nonce adds ~40
RESPONSE_LIFETIME = timedelta(hours=1)  # nextUpdate: how long a client may cache an answer
OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class ResponderIdentity:
    """The issuer answered for, and the delegate that signs the answers."""

    issuer: x509.Certificate
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    issuer_hashes: dict[str, tuple[bytes, bytes]]  # hash name -> (issuerNameHash, issuerKeyHash)

    @classmethod
    def load(cls, ca_root: Path) -> ResponderIdentity:
        """Read and check the intermediate certificate and the delegate's certificate and key."""
        cert_path, key_path = ocsp_cert_path(ca_root), ocsp_key_path(ca_root)
        try:
            issuer = x509.load_pem_x509_certificate(intermediate_cert_path(ca_root).read_bytes())
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"{exc.filename} is missing; make the OCSP responder's certificate with "
                f"`casign ocsp-cert --ca {ca_root}` on the signing side"
            ) from None
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot read the OCSP responder's files: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"{key_path}: an OCSP signing key must be RSA or ECDSA")
        _check_delegate(issuer, certificate, key, cert_path)
        hashes_by_name = {
            name: _issuer_hashes(issuer, certificate, algorithm())
            for name, algorithm in _HASHES.items()
        }
        return cls(issuer, certificate, key, hashes_by_name)


def _check_delegate(
    issuer: x509.Certificate,
    certificate: x509.Certificate,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    cert_path: Path,
) -> None:
    """RFC 6960 4.2.2.2: the delegate is issued by the CA and carries id-kp-OCSPSigning."""
    try:
        certificate.verify_directly_issued_by(issuer)
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except Exception as exc:
        raise ConfigurationError(
            f"{cert_path} is not an OCSP certificate issued by the intermediate ({exc})"
        ) from None
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
        raise ConfigurationError(f"{cert_path} lacks the OCSPSigning extended key usage")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) != certificate.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise ConfigurationError(f"{cert_path} does not match the OCSP key file")


def _issuer_hashes(
    issuer: x509.Certificate, issued: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    """The CertID hashes (RFC 6960 4.1.1) of `issuer`, as every client computes them.

    issuerKeyHash is over the BIT STRING of the issuer's key, which cryptography does not
    expose for every key type; a request for a certificate it issued computes it exactly.
    """
    request = ocsp.OCSPRequestBuilder().add_certificate(issued, issuer, algorithm).build()
    return request.issuer_name_hash, request.issuer_key_hash


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


class OCSPResponder:
    """Turns a DER OCSPRequest into a DER OCSPResponse; never raises."""

    def __init__(self, ca_root: Path, store: ResultsStore) -> None:
        self.ca_root = ca_root.absolute()
        self.store = store
        self._lock = threading.Lock()
        self._identity = ResponderIdentity.load(self.ca_root)
        self._loaded_stamp = self._stamp()

    def _stamp(self) -> tuple[float, float]:
        try:
            return (
                ocsp_cert_path(self.ca_root).stat().st_mtime,
                ocsp_key_path(self.ca_root).stat().st_mtime,
            )
        except OSError:
            return (0.0, 0.0)

    def identity(self) -> ResponderIdentity:
        """The delegate, reloaded when the worker has renewed its files."""
        stamp = self._stamp()
        if stamp != self._loaded_stamp:
            with self._lock:
                if stamp != self._loaded_stamp:
                    try:
                        self._identity = ResponderIdentity.load(self.ca_root)
                        self._loaded_stamp = stamp
                    except ConfigurationError as exc:  # half-renewed: keep the previous one
                        log.warning("keeping the previous OCSP certificate: %s", exc)
        return self._identity

    def respond(self, request_der: bytes) -> bytes:
        """The DER answer to `request_der`: signed, or an unsuccessful status."""
        try:
            request = ocsp.load_der_ocsp_request(request_der)
            # Touch what the answer needs, so a request cryptography cannot read is refused here.
            _ = (request.serial_number, request.hash_algorithm, request.extensions)
        except Exception as exc:  # ValueError, or NotImplementedError for several CertIDs
            log.info("malformed OCSP request: %s", exc)
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        try:
            return self._signed_answer(request, datetime.now(UTC))
        except Retryable as exc:
            log.warning("store unavailable, answered tryLater: %s", exc)
            return _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
        except Exception:
            log.exception("OCSP request failed")
            return _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)

    def _signed_answer(self, request: ocsp.OCSPRequest, now: datetime) -> bytes:
        identity = self.identity()
        algorithm = request.hash_algorithm
        status, revoked_at, reason = ocsp.OCSPCertStatus.UNKNOWN, None, None
        # An issuer other than ours is "unknown" (RFC 6960 2.2), as openssl ocsp -index says.
        if identity.issuer_hashes.get(algorithm.name) == (
            request.issuer_name_hash,
            request.issuer_key_hash,
        ):
            entry = self.store.index_entry(format_serial(request.serial_number))
            revocation = revocation_info(entry) if entry is not None else None
            if revocation is not None:
                status = ocsp.OCSPCertStatus.REVOKED
                revoked_at, reason = revocation.revoked_at, revocation.reason
            elif entry is not None:
                status = ocsp.OCSPCertStatus.GOOD  # expired but known and unrevoked is good
        this_update = now.replace(microsecond=0)
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=request.issuer_name_hash,
                issuer_key_hash=request.issuer_key_hash,
                serial_number=request.serial_number,
                algorithm=algorithm,
                cert_status=status,
                this_update=this_update,
                next_update=this_update + RESPONSE_LIFETIME,
                revocation_time=revoked_at,
                revocation_reason=reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, identity.certificate)
            .certificates([identity.certificate])
        )
        try:
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value
            builder = builder.add_extension(nonce, critical=False)  # RFC 8954: echo the nonce
        except x509.ExtensionNotFound:
            pass
        response = builder.sign(identity.key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)


class OCSPRequestHandler(BaseHTTPRequestHandler):
    """GET /{url-encoded base64 DER} and POST application/ocsp-request (RFC 6960 A.1)."""

    server: OCSPServer
    server_version = "casign-ocsp"
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may take to send its request

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path.lstrip("/")
        try:
            der = base64.b64decode(urllib.parse.unquote(path), validate=True)
        except (binascii.Error, ValueError):
            der = b""
        self._answer(der, cacheable=True)

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_REQUEST_BYTES:
            self.close_connection = True  # the body, if any, is left unread
            self._answer(b"", cacheable=False)
            return
        self._answer(self.rfile.read(length), cacheable=False)

    def _answer(self, request_der: bytes, cacheable: bool) -> None:
        body = (
            self.server.responder.respond(request_der)
            if request_der
            else _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        )
        self.send_response(200)
        self.send_header("Content-Type", OCSP_RESPONSE_TYPE)
        self.send_header("Content-Length", str(len(body)))
        if cacheable:  # RFC 5019 6.2
            seconds = int(RESPONSE_LIFETIME.total_seconds())
            self.send_header("Cache-Control", f"max-age={seconds}, public, no-transform")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class OCSPServer(ThreadingHTTPServer):
    """A threading HTTP server that carries its responder."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], responder: OCSPResponder) -> None:
        self.responder = responder
        super().__init__(address, OCSPRequestHandler)


def make_server(ca_root: Path, store: ResultsStore, host: str, port: int) -> OCSPServer:
    """A responder for the CA at `ca_root` bound to host:port (port 0 picks a free one)."""
    return OCSPServer((host, port), OCSPResponder(ca_root, store))

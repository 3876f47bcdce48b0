"""What a producer trusts: a root certificate of its own choosing, never what the store says.

Whoever can write to the store could hand a producer any certificate and any chain. So every
certificate a producer is answered with is checked before it is reported issued: it is one
certificate, for the key of the CSR the producer sent, under the serial the answer names, and
(given a trust anchor) it chains to the anchor through the intermediates the store offers,
valid now, is no CA, and has the extended key usage its profile is for. Path building and signature
checks are `cryptography`'s (`x509.verification`, with the Web PKI rules for CA certificates).
The chain a producer hands out (`ca-chain.cert.pem`) is the one a certificate was validated by.
Once a path is validated, the next certificates its issuer signed are checked by that signature
and their validity alone (the path above them is the same), while every link is still valid.
"""

from __future__ import annotations

import hashlib
import logging
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from core.errors import ConfigurationError, RefusalCode
from core.index import format_serial
from core.messages import JobResult, SignRequest
from core.signatures import IssuerKey

# The extended key usage a certificate of each built-in profile must carry to be accepted
# (worker/profiles.py and the OCSP delegate's `ocsp`); other profiles are checked for key,
# chain and end-entity status only.
PROFILE_USAGES: Mapping[str, tuple[str, ObjectIdentifier]] = {
    "server_cert": ("serverAuth", ExtendedKeyUsageOID.SERVER_AUTH),
    "tls_server": ("serverAuth", ExtendedKeyUsageOID.SERVER_AUTH),
    "usr_cert": ("clientAuth", ExtendedKeyUsageOID.CLIENT_AUTH),
    "ocsp": ("OCSPSigning", ExtendedKeyUsageOID.OCSP_SIGNING),
}

AnchorSpec = str | bytes | os.PathLike[str]

log = logging.getLogger("casign.producer")
_warned_without_anchor = False


def warn_without_anchor() -> None:
    """Say once per process that answers are taken without a trust anchor."""
    global _warned_without_anchor  # noqa: PLW0603 (one warning per process, not per producer)
    if not _warned_without_anchor:
        _warned_without_anchor = True
        log.warning(
            "no trust anchor: each certificate is checked against its CSR's key and its serial "
            "only, and the CA chain is taken from the store as it is; give the root "
            "certificate (Producer(..., trust_anchor=...), casign --trust-anchor FILE)"
        )


def _spki(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        raise ValueError("not a public key")
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _fingerprint(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _hex_fingerprint(text: str) -> bytes | None:
    """SHA-256 written as 64 hex digits, with or without colons (`openssl x509 -fingerprint`)."""
    digits = text.strip().replace(":", "")
    if len(digits) == 64 and all(char in string.hexdigits for char in digits):
        return bytes.fromhex(digits)
    return None


@dataclass(frozen=True)
class TrustAnchor:
    """The root certificate a producer trusts: itself, or only its SHA-256 fingerprint (then the
    root is taken from the store's chain when, and only when, its fingerprint is this one)."""

    fingerprint: bytes
    certificate: x509.Certificate | None = None

    @classmethod
    def parse(cls, spec: AnchorSpec) -> TrustAnchor:
        """From a root certificate (PEM text or bytes, or the path of a PEM file) or its SHA-256."""
        if isinstance(spec, bytes):
            return cls.from_pem(spec, "the trust anchor")
        if isinstance(spec, str) and "-----BEGIN" in spec:
            return cls.from_pem(spec.encode("ascii", "replace"), "the trust anchor")
        if isinstance(spec, str) and (digest := _hex_fingerprint(spec)) is not None:
            return cls(digest)
        path = Path(spec)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the trust anchor {str(path)!r} ({exc.strerror}); give the root "
                "certificate's PEM file or its SHA-256 fingerprint"
            ) from None
        return cls.from_pem(data, str(path))

    @classmethod
    def from_pem(cls, data: bytes, where: str) -> TrustAnchor:
        try:
            certificates = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ConfigurationError(f"{where} holds no PEM certificate") from None
        if len(certificates) != 1:
            raise ConfigurationError(
                f"{where} holds {len(certificates)} certificates; give the one root certificate"
            )
        (root,) = certificates
        return cls(_fingerprint(root), root)

    @property
    def hex(self) -> str:
        return self.fingerprint.hex()

    def root_among(self, certificates: list[x509.Certificate]) -> x509.Certificate | None:
        """The anchor itself, or the certificate among `certificates` that has its fingerprint."""
        if self.certificate is not None:
            return self.certificate
        for certificate in certificates:
            if _fingerprint(certificate) == self.fingerprint:
                return certificate
        return None


class Untrusted(Exception):
    """A certificate that must not be reported issued; the message says which check failed."""


def untrusted(result: JobResult, reason: str) -> JobResult:
    """The answer reported instead of `result`: failed, `result.untrusted`, no certificate."""
    return JobResult(
        job_id=result.job_id,
        status="failed",
        serial=result.serial,
        code=RefusalCode.RESULT_UNTRUSTED,
        message=f"the certificate the store answered with is not trusted: {reason}",
        fingerprint=result.fingerprint,
    )


class ResultCheck:
    """Checks issued results against their requests and, given one, a trust anchor.

    `store_chain` reads the chain the store offers; it is read again only when a certificate
    does not validate with the chain read before (a renewed intermediate).
    """

    def __init__(self, anchor: TrustAnchor | None, store_chain: Callable[[], str | None]) -> None:
        self.anchor = anchor
        self._store_chain = store_chain
        self._offered: _OfferedChain | None = None
        self._validated: str | None = None
        self._issuer: _ValidatedIssuer | None = None

    def check(self, result: JobResult, request: SignRequest) -> JobResult:
        """`result` itself when it is trusted (or not an issued one), else `untrusted(...)`."""
        if not result.ok:
            return result
        if self.anchor is None:
            warn_without_anchor()
        try:
            self._check_issued(result, request)
        except Untrusted as why:
            return untrusted(result, str(why))
        return result

    def check_unrequested(self, result: JobResult) -> JobResult:
        """`result` of a job whose request this producer does not hold: its certificate checked
        against the anchor (the key it certifies cannot be: the CSR is not here)."""
        if not result.ok:
            return result
        if self.anchor is None:
            warn_without_anchor()
            return result
        try:
            certificates = x509.load_pem_x509_certificates((result.certificate_pem or "").encode())
            if len(certificates) != 1:
                raise Untrusted(f"the answer holds {len(certificates)} certificates, not one")
            self._validate_to_anchor(certificates[0], self.anchor)
        except (ValueError, UnicodeEncodeError):
            return untrusted(result, "the answer's certificate is not a PEM certificate")
        except Untrusted as why:
            return untrusted(result, str(why))
        return result

    def chain_pem(self) -> str | None:
        """The CA chain to hand out with the certificates: with an anchor, the one that last
        validated a certificate (None before any did); without, the store's as it is."""
        if self.anchor is not None:
            return self._validated
        warn_without_anchor()
        return self._store_chain()

    def _check_issued(self, result: JobResult, request: SignRequest) -> None:
        if not result.certificate_pem:
            raise Untrusted("the answer carries no certificate")
        try:
            certificates = x509.load_pem_x509_certificates(result.certificate_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise Untrusted("the answer's certificate is not a PEM certificate") from None
        if len(certificates) != 1:
            raise Untrusted(f"the answer holds {len(certificates)} certificates, not one")
        (certificate,) = certificates
        try:
            requested_key = _spki(x509.load_pem_x509_csr(request.csr_pem.encode()).public_key())
            issued_key = _spki(certificate.public_key())
        except (ValueError, TypeError, UnicodeEncodeError):
            raise Untrusted("the certificate's or the CSR's public key cannot be read") from None
        if issued_key != requested_key:
            raise Untrusted("the certificate is for another key than the CSR's")
        if result.serial != format_serial(certificate.serial_number):
            raise Untrusted(f"the answer names serial {result.serial}, not the certificate's")
        if self.anchor is None:
            return  # anyone who can write to the store could have made the rest up
        chain_pem = self._validate_to_anchor(certificate, self.anchor)
        # After path validation, which has parsed the extensions already (a few microseconds).
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            pass
        else:
            if constraints.value.ca:
                raise Untrusted("the certificate is a CA certificate")
        usage = PROFILE_USAGES.get(request.profile)
        if usage is not None and usage[1] not in _extended_key_usages(certificate):
            raise Untrusted(
                f"the certificate lacks the {usage[0]} usage of profile {request.profile!r}"
            )
        self._validated = chain_pem

    def _validate_to_anchor(self, certificate: x509.Certificate, anchor: TrustAnchor) -> str:
        """The chain PEM (intermediates, then the root) that takes `certificate` to `anchor`."""
        issuer = self._issuer
        if issuer is not None and issuer.signed(certificate):
            return issuer.chain_pem
        problem = ""
        for fresh in (False, True):
            offered = self._offered_chain(anchor, fresh)
            if offered.builder is None:
                problem = (
                    "the store's chain holds no certificate with the trust anchor's fingerprint"
                )
                continue
            try:
                # Built for each certificate: a verifier checks validity at its build time.
                verifier = offered.builder.build_client_verifier()
                verified = verifier.verify(certificate, offered.intermediates)
            except verification.VerificationError as exc:
                problem = f"it does not chain to the trust anchor {anchor.hex[:16]}... ({exc})"
                continue
            chain_pem = "".join(offered.pem_of(link) for link in verified.chain[1:])
            self._issuer = _ValidatedIssuer.of(verified.chain, chain_pem)
            return chain_pem
        raise Untrusted(problem)

    def _offered_chain(self, anchor: TrustAnchor, fresh: bool) -> _OfferedChain:
        """The store's chain, parsed once for as long as it stays the same text."""
        if self._offered is None or fresh:
            text = self._store_chain() or ""
            if self._offered is None or self._offered.text != text:
                self._offered = _OfferedChain.parse(text, anchor)
        return self._offered


@dataclass
class _OfferedChain:
    """The CA chain as the store offers it, ready to validate certificates against an anchor."""

    text: str
    intermediates: list[x509.Certificate]
    builder: verification.PolicyBuilder | None  # None: no root with the anchor's fingerprint
    pems: dict[int, str]

    @classmethod
    def parse(cls, text: str, anchor: TrustAnchor) -> _OfferedChain:
        try:
            offered = x509.load_pem_x509_certificates(text.encode("ascii")) if text else []
        except (ValueError, UnicodeEncodeError):
            offered = []
        root = anchor.root_among(offered)
        intermediates = [cert for cert in offered if _fingerprint(cert) != anchor.fingerprint]
        builder = None
        if root is not None:
            builder = (
                verification.PolicyBuilder()
                .store(verification.Store([root]))
                .extension_policies(
                    ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                    ee_policy=verification.ExtensionPolicy.permit_all(),
                )
            )
        known = [*intermediates, *([root] if root is not None else [])]
        return cls(text, intermediates, builder, {id(cert): _pem(cert) for cert in known})

    def pem_of(self, certificate: x509.Certificate) -> str:
        """The PEM of a certificate of this chain (the verifier hands back these very objects)."""
        return self.pems.get(id(certificate)) or _pem(certificate)


@dataclass(frozen=True)
class _ValidatedIssuer:
    """The issuer of a certificate that path validation took to the anchor, and that path.

    Another certificate this issuer signed, with the same signature algorithm, has the same path
    above it: checking its signature and its validity is what validating the path again would
    add (the issuer's own links were checked and are checked again for validity here). A path
    with name constraints is not kept: those apply to each certificate's own names.
    """

    issuer_key: IssuerKey  # the issuer's public key, parsed once
    chain_pem: str
    signature_algorithm: ObjectIdentifier
    valid_from: datetime  # every link of the path is valid from then ...
    valid_until: datetime  # ... until then

    @classmethod
    def of(cls, path: list[x509.Certificate], chain_pem: str) -> _ValidatedIssuer | None:
        """From a validated path (the certificate first, the root last)."""
        certificate, links = path[0], path[1:]
        if not links:  # the certificate is the anchor itself: nothing above it to keep
            return None
        for link in links:
            try:
                link.extensions.get_extension_for_class(x509.NameConstraints)
            except x509.ExtensionNotFound:
                continue
            return None
        return cls(
            IssuerKey(links[0]),
            chain_pem,
            certificate.signature_algorithm_oid,
            max(link.not_valid_before_utc for link in links),
            min(link.not_valid_after_utc for link in links),
        )

    def signed(self, certificate: x509.Certificate) -> bool:
        """Whether this issuer signed `certificate` and both are valid now."""
        now = datetime.now(UTC)
        if not self.valid_from <= now <= self.valid_until:
            return False
        if certificate.signature_algorithm_oid != self.signature_algorithm:
            return False
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            return False
        try:
            self.issuer_key.check(certificate, certificate.tbs_certificate_bytes)
        except (InvalidSignature, ValueError, TypeError):
            return False  # path validation says what is wrong with it
        return True


def _extended_key_usages(certificate: x509.Certificate) -> list[ObjectIdentifier]:
    try:
        return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []

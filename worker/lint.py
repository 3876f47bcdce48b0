"""Lint before sign: the to-be-signed certificate, signed with a throwaway key of the CA key's
type, is run through the profile's pkilint linter; an error or a fatal finding refuses it.

As Boulder's `linter` package: the throwaway signature makes a whole certificate that pkilint can
read without the CA key ever signing something the linter has not seen. Throwaway keys (one per
key type and size) and pkilint's validators are made once per process, on first use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from pkilint import finding_filter, loader
from pkilint.cabf import serverauth
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity

from core.errors import RefusalCode, Rejected
from worker.profiles import LinterName
from worker.web_names import is_dns_name

_REFUSING = ValidationFindingSeverity.ERROR  # ERROR and FATAL (FATAL is 0, ERROR 1)
_SHOWN_FINDINGS = 3
_PKIX_DOMAIN_SYNTAX = "pkix.invalid_domain_name_syntax"
_PKIX_URI_SYNTAX = "pkix.invalid_uri_syntax"
# RFC 3986 4.3 absolute-URI: scheme ":" hier-part, printable ASCII without spaces.
_ABSOLUTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+$")


@dataclass(frozen=True, slots=True)
class Finding:
    """One pkilint finding: its code (`cabf.internal_domain_name`), severity, message and where."""

    code: str
    severity: str
    message: str | None
    path: str

    def describe(self) -> str:
        detail = f" ({self.message})" if self.message else ""
        return f"{self.severity} {self.code}{detail} at {self.path}"


def findings(der: bytes, linter: LinterName) -> list[Finding]:
    """The error and fatal findings of `linter` on a DER certificate (none when it is off)."""
    if linter == "off":
        return []
    document = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "to-be-signed")
    results: Sequence[Any]
    if linter == "pkilint-br-serverauth":
        certificate_type = serverauth.determine_certificate_type(document)
        validator, filters = _serverauth_validator(certificate_type)
        results, _ = finding_filter.filter_results(filters, validator.validate(document.root))
    else:
        results = _rfc5280_validator().validate(document.root)
    return [
        Finding(
            code=description.finding.code,
            severity=str(description.finding.severity),
            message=description.message,
            path=result.node.path,
        )
        for result in results
        for description in result.finding_descriptions
        if description.finding.severity <= _REFUSING
        and not _is_narrower_than_rfc5280(description.finding.code, result.node)
    ]


def _is_narrower_than_rfc5280(code: str, node: Any) -> bool:
    """Two of pkilint's RFC 5280 syntax checks use the `validators` package's web rules, which
    are narrower than the RFCs: its domain check knows no wildcard label (RFC 6125 6.4.3's
    `*.example.com`, which the guide's server_cert issues; the BR linter drops that finding for
    a wildcard-aware check of its own), and its URI check knows only web URLs (it refuses
    `spiffe://`, `urn:` and `mailto:` URIs, absolute URIs as RFC 5280 4.2.1.6 asks). Such a
    finding is dropped when the value is a wildcard over a valid name, or an absolute URI."""
    if code == _PKIX_DOMAIN_SYNTAX:
        value = str(node.pdu)
        return value.startswith("*.") and is_dns_name(value[2:], wildcard=False)
    if code == _PKIX_URI_SYNTAX:
        return _ABSOLUTE_URI.match(str(node.pdu)) is not None
    return False


def lint_tbs(
    tbs: x509.CertificateBuilder,
    ca_key: CertificateIssuerPrivateKeyTypes,
    algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None,
    linter: LinterName,
) -> None:
    """Sign `tbs` with a throwaway key like `ca_key` and lint it; raise Rejected (`lint.failed`)
    naming the findings when the linter reports an error or a fatal finding, or cannot run."""
    if linter == "off":
        return
    throwaway = throwaway_key_like(ca_key)
    der = tbs.sign(throwaway, algorithm).public_bytes(serialization.Encoding.DER)
    try:
        found = findings(der, linter)
    except Exception as exc:  # a linter that cannot read what we built: refuse, never skip
        raise Rejected(
            RefusalCode.LINT_FAILED,
            f"{linter} could not lint the certificate ({type(exc).__name__}); nothing was signed",
        ) from exc
    if found:
        shown = "; ".join(finding.describe() for finding in found[:_SHOWN_FINDINGS])
        more = f" and {len(found) - _SHOWN_FINDINGS} more" if len(found) > _SHOWN_FINDINGS else ""
        raise Rejected(
            RefusalCode.LINT_FAILED,
            f"the certificate would fail {linter}: {shown}{more}; nothing was signed",
        )


def prepare(linters: Sequence[LinterName], ca_key: CertificateIssuerPrivateKeyTypes) -> None:
    """Make the throwaway key and the validators `linters` need now, not at the first request."""
    wanted = {linter for linter in linters if linter != "off"}
    if not wanted:
        return
    throwaway_key_like(ca_key)
    if "pkilint-rfc5280" in wanted:
        _rfc5280_validator()
    if "pkilint-br-serverauth" in wanted:
        _serverauth_validator(serverauth.serverauth_constants.CertificateType.DV_FINAL_CERTIFICATE)


def throwaway_key_like(
    ca_key: CertificateIssuerPrivateKeyTypes,
) -> CertificateIssuerPrivateKeyTypes:
    """A key of this process of the same algorithm and size (or curve) as `ca_key`."""
    if isinstance(ca_key, rsa.RSAPrivateKey):
        return _throwaway_rsa(ca_key.key_size)
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        return _throwaway_ec(type(ca_key.curve))
    if isinstance(ca_key, ed25519.Ed25519PrivateKey):
        return _throwaway_edwards("ed25519")
    if isinstance(ca_key, ed448.Ed448PrivateKey):
        return _throwaway_edwards("ed448")
    raise TypeError(f"no throwaway key for a CA key of type {type(ca_key).__name__}")


@cache
def _throwaway_rsa(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


@cache
def _throwaway_ec(curve: type[ec.EllipticCurve]) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve())


@cache
def _throwaway_edwards(kind: str) -> ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey:
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    return ed25519.Ed25519PrivateKey.generate()


@cache
def _rfc5280_validator() -> Any:
    """pkilint's RFC 5280 certificate linter, as its `lint_pkix_cert` command builds it."""
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


@cache
def _serverauth_validator(certificate_type: Any) -> tuple[Any, list[Any]]:
    """pkilint's CA/B Forum TLS BR linter for one certificate type, as `lint_cabf_serverauth_cert`
    builds it, with the finding filters it applies by default."""
    validator = certificate.create_pkix_certificate_validator_container(
        serverauth.create_decoding_validators(),
        serverauth.create_validators(certificate_type),
    )
    return validator, serverauth.create_serverauth_finding_filters(certificate_type)

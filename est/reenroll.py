"""Re-enrollment (RFC 7030 4.2.2): the holder of a casign certificate asks for its successor.

The client authenticates with the certificate it holds, which must be issued by this CA's
intermediate, known to the store and not revoked; the new CSR's subject and subjectAltName
must equal that certificate's (the key may change). The EST client it was enrolled by is read
back from the job id the certificate was issued under (`est:CLIENT:...`), so the successor is
held to that client's labels, rate and producer identity.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from core.errors import RefusalCode as Code
from core.index import format_serial
from core.revocation import revocation_info
from est.refusals import EstRefusal
from store.results import ResultsStore

JOB_PREFIX = "est"


def job_id_for(client: str, digest: str) -> str:
    """The job id of an enrollment by `client`: `est:CLIENT:DIGEST`."""
    return f"{JOB_PREFIX}:{client}:{digest}"


def client_of_job(job_id: str | None) -> str | None:
    """The EST client a job id names, or None for a job that did not come through EST."""
    if job_id is None:
        return None
    prefix, _, rest = job_id.partition(":")
    client, _, digest = rest.rpartition(":")
    return client if prefix == JOB_PREFIX and client and digest else None


def current_certificate(
    peer: x509.Certificate | None, intermediate: x509.Certificate
) -> x509.Certificate:
    """The TLS client certificate, when this CA's intermediate issued it."""
    if peer is not None and peer.issuer == intermediate.subject:
        try:
            peer.verify_directly_issued_by(intermediate)
            return peer
        except (InvalidSignature, ValueError, TypeError):
            pass
    raise EstRefusal(
        Code.EST_CERTIFICATE_REQUIRED,
        "re-enrollment needs the TLS client certificate this CA issued to the client",
    )


def enrolling_client(store: ResultsStore, certificate: x509.Certificate) -> str:
    """The EST client `certificate` was enrolled by; refused when revoked or not from EST.

    Blocking (two Redis reads): run it off the event loop.
    """
    serial = format_serial(certificate.serial_number)
    entry = store.index_entry(serial)
    if entry is None:
        raise EstRefusal(
            Code.EST_CERTIFICATE_UNKNOWN, f"certificate {serial} is not in this CA's index"
        )
    if revocation_info(entry) is not None:
        raise EstRefusal(Code.EST_CERTIFICATE_REVOKED, f"certificate {serial} is revoked")
    # The store's `serials` hash maps each serial to the job it was issued for.
    client = client_of_job(store.serial_owner(serial))
    if client is None:
        raise EstRefusal(
            Code.EST_CERTIFICATE_UNKNOWN,
            f"certificate {serial} was not enrolled over EST; enroll with simpleenroll",
        )
    return client


def _names(extensions: x509.Extensions) -> set[x509.GeneralName]:
    try:
        return set(extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def _derived_from_common_name(subject: x509.Name) -> set[x509.GeneralName]:
    """The SAN a profile with san_from_common_name adds when the CSR asked for none."""
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {x509.DNSName(str(names[0].value))} if len(names) == 1 else set()


def check_same_names(csr: x509.CertificateSigningRequest, certificate: x509.Certificate) -> None:
    """RFC 7030 4.2.2: the subject and subjectAltName of the CSR are the certificate's.

    A CSR without subjectAltName also matches a certificate whose only SAN is its CN as a DNS
    name: the signer adds that for profiles like server_cert, and a client could not ask for it.
    """
    if csr.subject != certificate.subject:
        raise EstRefusal(
            Code.EST_SUBJECT_MISMATCH,
            f"the CSR's subject {csr.subject.rfc4514_string()!r} is not the current "
            f"certificate's {certificate.subject.rfc4514_string()!r} (RFC 7030 4.2.2)",
        )
    requested, current = _names(csr.extensions), _names(certificate.extensions)
    if requested == current:
        return
    if not requested and current == _derived_from_common_name(certificate.subject):
        return
    raise EstRefusal(
        Code.EST_SAN_MISMATCH,
        "the CSR's subjectAltName is not the current certificate's (RFC 7030 4.2.2)",
    )

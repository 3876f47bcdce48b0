"""Which certificate a server-made key may be sealed to (RFC 7030 4.4.1.2).

A client asks for its key sealed by putting the AsymmetricDecryptKeyIdentifier attribute in the
CSR it sends to serverkeygen: the key identifier of a certificate it holds the key of. The
server seals only to a certificate it has a reason to trust for that client:

- the TLS client certificate of this very connection: the client proved it holds its key in
  the handshake, so nobody else can open what is sealed to it; or
- a certificate the operator listed for the client in est.toml (`key_recipients`), for a
  client that authenticates with a password, or that keeps its keys under another certificate.

A certificate's key identifier is its subjectKeyIdentifier, or for one without that extension
the SHA-1 of its public key (RFC 5280 4.2.1.2, method 1), as `openssl x509 -ext` would show it
had it one. An identifier that names neither is refused `est.key_recipient_unknown`; a named
certificate whose key cannot receive one (not RSA or EC P-256/384/521, keyUsage without
keyEncipherment or keyAgreement, out of its validity) is refused `est.key_recipient_unusable`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509

from core.errors import ConfigurationError
from core.errors import RefusalCode as Code
from est.admission import EstClient, load_client_certificates
from est.key_envelope import can_seal_to
from est.refusals import EstRefusal
from est.settings import EstSettings
from est.wire import octet_string_attribute

ASYMMETRIC_DECRYPT_KEY_ID = x509.ObjectIdentifier("1.2.840.113549.1.9.16.2.54")
_MAX_IDENTIFIER_BYTES = 64  # RFC 5280 4.2.1.2 identifiers are 20 bytes; room for others


def key_identifier(certificate: x509.Certificate) -> bytes:
    """The certificate's subjectKeyIdentifier, else the RFC 5280 4.2.1.2 (1) one of its key."""
    try:
        return certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def requested_key_identifier(csr: x509.CertificateSigningRequest) -> bytes | None:
    """The key identifier the CSR's AsymmetricDecryptKeyIdentifier names, or None without one."""
    return octet_string_attribute(
        csr,
        ASYMMETRIC_DECRYPT_KEY_ID,
        "AsymmetricDecryptKeyIdentifier (RFC 7030 4.4.1.2)",
        _MAX_IDENTIFIER_BYTES,
    )


def _load_recipients(path: str, client: str) -> list[x509.Certificate]:
    certificates = load_client_certificates(path, client, "key recipient")
    for certificate in certificates:
        reason = can_seal_to(certificate)
        if reason is not None:
            raise ConfigurationError(
                f"EST client {client!r}: key recipient {certificate.subject.rfc4514_string()} "
                f"in {path} cannot receive a key: {reason}"
            )
    return certificates


class KeyRecipients:
    """The certificates each client may have its server-made keys sealed to, by identifier."""

    def __init__(self, settings: EstSettings) -> None:
        self._listed: dict[str, dict[bytes, x509.Certificate]] = {}
        for name, entry in settings.clients.items():
            listed = self._listed.setdefault(name, {})
            for path in entry.key_recipients:
                for certificate in _load_recipients(path, name):
                    listed[key_identifier(certificate)] = certificate

    def choose(
        self, client: EstClient, identifier: bytes, peer: x509.Certificate | None
    ) -> x509.Certificate:
        """The certificate `identifier` names for `client` on a connection whose TLS client
        certificate is `peer`; EstRefusal when it names none it may use."""
        if peer is not None and key_identifier(peer) == identifier:
            chosen = peer
        else:
            found = self._listed.get(client.name, {}).get(identifier)
            if found is None:
                raise EstRefusal(
                    Code.EST_KEY_RECIPIENT_UNKNOWN,
                    f"the AsymmetricDecryptKeyIdentifier {identifier.hex()} names neither this "
                    f"connection's client certificate nor a key recipient listed for EST client "
                    f"{client.name!r}",
                )
            chosen = found
        reason = can_seal_to(chosen)
        now = datetime.now(UTC)
        if reason is None and not chosen.not_valid_before_utc <= now <= chosen.not_valid_after_utc:
            reason = f"it is valid only from {chosen.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            reason += f"{chosen.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        if reason is not None:
            raise EstRefusal(
                Code.EST_KEY_RECIPIENT_UNUSABLE,
                f"the key cannot be sealed to {chosen.subject.rfc4514_string()}: {reason}",
            )
        return chosen

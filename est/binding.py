"""Channel binding (RFC 7030 3.5): proof that a CSR was made over this very TLS session.

A client held to it (`channel_binding = true` in its `est.toml` entry) puts the base64 of the
session's `tls-unique` value (RFC 5929 3: the first Finished message of the handshake) in its
CSR's challengePassword attribute. A CSR replayed over another session, or relayed by a
machine in the middle that holds its own session with this server, then carries the wrong value.

TLS 1.3 has no `tls-unique` (RFC 8446 C.5); its replacement, `tls-exporter` (RFC 9266), needs
the TLS exporter, which Python's `ssl` does not expose. So a bound client must connect with
TLS 1.2 (`curl --tls-max 1.2`); over TLS 1.3 it is refused, saying so.
"""

from __future__ import annotations

import base64
import hmac
import ssl

from cryptography import x509
from cryptography.x509.oid import AttributeOID

from core.errors import RefusalCode as Code
from est.refusals import EstRefusal


def session_binding(tls: ssl.SSLObject | ssl.SSLSocket | None) -> bytes:
    """The base64 `tls-unique` value of the session, as the CSR should carry it."""
    if tls is None:
        raise EstRefusal(
            Code.EST_CHANNEL_BINDING_UNAVAILABLE, "channel binding needs a TLS connection"
        )
    version = tls.version()
    if version != "TLSv1.2":
        raise EstRefusal(
            Code.EST_CHANNEL_BINDING_UNAVAILABLE,
            f"this client is held to channel binding (RFC 7030 3.5), which needs TLS 1.2's "
            f"tls-unique; {version} has none and this server offers no tls-exporter "
            "(RFC 9266): connect with TLS 1.2",
        )
    value = tls.get_channel_binding("tls-unique")
    if not value:
        raise EstRefusal(
            Code.EST_CHANNEL_BINDING_UNAVAILABLE, "the TLS session gave no tls-unique value"
        )
    return base64.b64encode(value)


def check_channel_binding(
    csr: x509.CertificateSigningRequest, tls: ssl.SSLObject | ssl.SSLSocket | None
) -> None:
    """RFC 7030 3.5: the CSR's challengePassword is the base64 tls-unique of this session."""
    expected = session_binding(tls)
    try:
        given = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        raise EstRefusal(
            Code.EST_CHANNEL_BINDING,
            "the CSR carries no challengePassword; this client must put the base64 tls-unique "
            "value of its TLS session there (RFC 7030 3.5)",
        ) from None
    if not hmac.compare_digest(given.strip(), expected):
        raise EstRefusal(
            Code.EST_CHANNEL_BINDING,
            "the CSR's challengePassword is not this TLS session's tls-unique value "
            "(RFC 7030 3.5): make the CSR after the handshake, on the connection that sends it",
        )

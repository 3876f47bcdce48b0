"""Object identifiers casign writes or reads that cryptography has no name for."""

from __future__ import annotations

from cryptography.x509 import ObjectIdentifier

# The guide's nsCertType (a BIT STRING) and nsComment (an IA5String): Netscape's certificate
# extensions, still written by `openssl ca -extensions server_cert|usr_cert`.
NS_CERT_TYPE_OID = ObjectIdentifier("2.16.840.1.113730.1.1")
NS_COMMENT_OID = ObjectIdentifier("2.16.840.1.113730.1.13")

"""Which shared secret a server-made key may be wrapped under (RFC 7030 4.4.1.1).

A client that shares a symmetric secret with the server asks for its serverkeygen key sealed
under it by putting the DecryptKeyIdentifier attribute in its CSR: the identifier of the secret,
an OCTET STRING. The server seals only under a secret the operator listed for that very client
in est.toml (`key_secrets = [{ id = "HEX", file = "/path" }]`); any other identifier is refused
`est.key_recipient_unknown`, a CSR that names a certificate too `est.key_recipient_ambiguous`.

A secret file holds the secret in hex (32, 48 or 64 digits for AES-128, -192 or -256 key wrap;
`openssl rand -hex 32 > FILE` makes one, and it is what `openssl cms -secretkey` takes), and
must be owned by the user the server runs as and closed to group and others, or the server does
not start (`core.secret_source`). The secret never leaves this process except wrapped: errors
name its file and identifier, never its value.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509

from core.errors import ConfigurationError
from core.errors import RefusalCode as Code
from core.secret_source import read_secret_file
from est.admission import EstClient
from est.key_envelope import MAX_SECRET_IDENTIFIER_BYTES, KeyEncryptionKey
from est.refusals import EstRefusal
from est.settings import EstSettings
from est.wire import octet_string_attribute

DECRYPT_KEY_ID = x509.ObjectIdentifier("1.2.840.113549.1.9.16.2.37")  # id-aa-decryptKeyID
_SECRET_HEX = re.compile(r"[0-9a-fA-F]{32}(?:[0-9a-fA-F]{16}){0,2}")  # 16, 24 or 32 octets


def requested_secret_identifier(csr: x509.CertificateSigningRequest) -> bytes | None:
    """The secret identifier the CSR's DecryptKeyIdentifier names, or None without one."""
    return octet_string_attribute(
        csr,
        DECRYPT_KEY_ID,
        "DecryptKeyIdentifier (RFC 7030 4.4.1.1)",
        MAX_SECRET_IDENTIFIER_BYTES,
    )


def load_key_encryption_key(path: Path, identifier: bytes, what: str) -> KeyEncryptionKey:
    """The secret in hex in `path` (owned by this process's user, private to it), named by
    `identifier`; ConfigurationError naming `what` and the file, never the secret."""
    text = read_secret_file(path, what, owned=True)
    if not _SECRET_HEX.fullmatch(text):
        raise ConfigurationError(
            f"the {what} file {str(path)!r} does not hold 32, 48 or 64 hex digits (a 16, 24 "
            f"or 32 octet AES key); make one with `openssl rand -hex 32 > {path}`"
        )
    return KeyEncryptionKey(identifier, bytes.fromhex(text))


class KeySecrets:
    """The secrets each client's server-made keys may be wrapped under, by identifier; every
    file is read here, so that a missing or loose one stops the server from starting."""

    def __init__(self, settings: EstSettings) -> None:
        self._listed: dict[str, dict[bytes, KeyEncryptionKey]] = {}
        for name, entry in settings.clients.items():
            listed = self._listed.setdefault(name, {})
            for listing in entry.key_secrets:
                identifier = bytes.fromhex(listing.id)
                what = f"key secret {listing.id} of EST client {name!r}"
                listed[identifier] = load_key_encryption_key(Path(listing.file), identifier, what)

    def choose(self, client: EstClient, identifier: bytes) -> KeyEncryptionKey:
        """The secret `identifier` names for `client`; EstRefusal when it names none of its."""
        found = self._listed.get(client.name, {}).get(identifier)
        if found is None:
            raise EstRefusal(
                Code.EST_KEY_RECIPIENT_UNKNOWN,
                f"the DecryptKeyIdentifier {identifier.hex()} names no key secret listed for EST "
                f"client {client.name!r}",
            )
        return found

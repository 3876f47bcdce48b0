"""Key files: PEM private keys on disk, optionally encrypted with a passphrase."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.errors import ConfigurationError
from core.keys import KeyType, write_private_key
from keystore.backend import SigningKey
from keystore.uri import KeyURI


def check_key_file_mode(path: Path, uri: KeyURI) -> None:
    """Refuse a key file that its group or other users can read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"{uri}: key file mode is {stat.S_IMODE(mode):04o}; "
            f"run `chmod 400 {path}` (group and others must have no access)"
        )


class FileKeyBackend:
    """`file:PATH[?pin-source=file:F|env:VAR]`."""

    def load_private_key(self, uri: KeyURI) -> SigningKey:
        path = Path(uri.path)
        try:
            check_key_file_mode(path, uri)
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"{uri}: cannot read the key file ({exc.strerror})") from None
        passphrase = uri.read_pin()
        try:
            key = serialization.load_pem_private_key(
                data, password=passphrase.encode() if passphrase else None
            )
        except TypeError:
            raise ConfigurationError(
                f"{uri}: the key is encrypted; give its passphrase with pin-source=file:F"
                if passphrase is None
                else f"{uri}: the key is not encrypted but a pin-source was given"
            ) from None
        except ValueError:
            raise ConfigurationError(
                f"{uri}: cannot decrypt or parse the key (wrong passphrase?)"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"{uri}: a CA key must be RSA or ECDSA")
        return key

    def generate_private_key(self, uri: KeyURI, key_type: KeyType) -> SigningKey:
        path = Path(uri.path)
        if path.exists():
            raise ConfigurationError(f"{uri}: refusing to overwrite an existing key file")
        key = key_type.generate()
        write_private_key(path, key, uri.read_pin())
        return key

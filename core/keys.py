"""Software keys: the types a CA or leaf key may be made with, and writing them to disk."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.files import KEY_MODE, write_file_atomically

SoftwareKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class KeyType(StrEnum):
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    P256 = "p256"
    P384 = "p384"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa")

    @property
    def rsa_bits(self) -> int:
        return int(self.value.removeprefix("rsa"))

    @property
    def curve(self) -> ec.EllipticCurve:
        return {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}[self.value]

    def generate(self) -> SoftwareKey:
        """A new software key of this type (RSA exponent 65537)."""
        if self.is_rsa:
            return rsa.generate_private_key(public_exponent=65537, key_size=self.rsa_bits)
        return ec.generate_private_key(self.curve)


def write_private_key(path: Path, key: SoftwareKey, passphrase: str | None) -> None:
    """Write `key` as PKCS#8 PEM, AES-256 encrypted when a passphrase is given, mode 0400.

    An empty passphrase is refused (ValueError): it would write the key unencrypted.
    """
    if passphrase == "":
        raise ValueError("an empty passphrase would leave the key unencrypted")
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase is not None
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    write_file_atomically(path, pem, KEY_MODE, replace=False)

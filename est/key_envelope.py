"""A server-made key sealed for one certificate (RFC 7030 4.4.2), and its opening by the client.

The key goes out as RFC 7030 4.4.2 lays it out, the signature inside the encryption:

    ContentInfo { id-envelopedData, EnvelopedData {          -- RFC 5652 6, to the recipient
        encryptedContentInfo { id-signedData, AES-256-CBC (
            SignedData {                                     -- RFC 5652 5, by the EST server
                eContentType id-ct-KP-aKeyPackage,           -- RFC 5958 3
                eContent AsymmetricKeyPackage { OneAsymmetricKey } }) } } }

The recipient's key decides how the content key travels: an RSA key by key transport with
RSAES-OAEP, SHA-256 and MGF1-SHA-256 (RFC 8017, RFC 4055); an EC key (P-256, P-384, P-521) by
one-pass ECDH with the X9.63 KDF and AES-256 key wrap (RFC 5753, RFC 3394). The recipient is
named by issuer and serial, which every CMS reader matches. `openssl cms -decrypt` opens both.
A secret the client and server share (RFC 7030 4.4.1.1) wraps the content key itself, in a
KEKRecipientInfo named by the secret's identifier, with AES key wrap of the secret's size
(RFC 5652 6.2.3, RFC 3565 2.3.2); `openssl cms -decrypt -secretkey -secretkeyid` opens that.
The client's side opens these, and what `openssl cms -sign | openssl cms -encrypt` makes of a
key package (RSA PKCS#1 v1.5, ECDH with the SHA-1 KDF, the signed ContentInfo as id-data).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from asn1crypto import algos, cms, core, keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.hazmat.primitives.padding import PKCS7

from core.cms import check_signed_attributes
from core.cms import signer_info as cms_signer_info
from core.errors import ConfigurationError

ASYMMETRIC_KEY_PACKAGE = "2.16.840.1.101.2.1.2.78.5"  # id-ct-KP-aKeyPackage, RFC 5958 3
_SIGNED_DATA = "1.2.840.113549.1.7.2"
_DATA = "1.2.840.113549.1.7.1"
# RFC 5753 7.1.4: dhSinglePass-stdDH-sha{256,384,512}kdf-scheme; the KDF's hash by curve size.
_ECDH_SCHEMES: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "secp256r1": ("1.3.132.1.11.1", hashes.SHA256),
    "secp384r1": ("1.3.132.1.11.2", hashes.SHA384),
    "secp521r1": ("1.3.132.1.11.3", hashes.SHA512),
}
# Read, never made: dhSinglePass-stdDH-sha1kdf-scheme (RFC 3278), `openssl cms -encrypt`'s own.
_HASH_OF_SCHEME: dict[str, type[hashes.HashAlgorithm]] = {
    **{oid: hash_type for oid, hash_type in _ECDH_SCHEMES.values()},
    "1.3.133.16.840.63.0.2": hashes.SHA1,
}
_CONTENT_KEY_BYTES = 32  # AES-256, for the content and for the ECDH key-encryption key
_AES_BLOCK = 16
_OID_TAG = b"\x06"
_WRAP_KEY_BYTES = {"aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32}
_WRAP_OF_SIZE = {size: name for name, size in _WRAP_KEY_BYTES.items()}
MAX_SECRET_IDENTIFIER_BYTES = 64  # kekid.keyIdentifier: no bound in RFC 5652; room enough
_OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class SealedKeyError(ValueError):
    """A sealed key that cannot be opened: not for this key, not signed by the server, or
    not of the form RFC 7030 4.4.2 gives."""


@dataclass(frozen=True)
class KeyEncryptionKey:
    """A symmetric secret shared with a client (RFC 7030 4.4.1.1), named by `identifier`:
    16, 24 or 32 octets, for AES-128, -192 or -256 key wrap (RFC 3394)."""

    identifier: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) not in _WRAP_OF_SIZE:
            raise ValueError(
                f"a key-encryption secret is 16, 24 or 32 octets, not {len(self.secret)}"
            )
        if not 0 < len(self.identifier) <= MAX_SECRET_IDENTIFIER_BYTES:
            raise ValueError(
                f"a key-encryption secret's identifier is 1 to {MAX_SECRET_IDENTIFIER_BYTES} octets"
            )


@dataclass(frozen=True)
class KeySigner:
    """The EST server's own certificate and key (its TLS ones), which sign every sealed key."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> KeySigner:
        """The first certificate of `cert_path` (leaf, then chain) and the key of `key_path`."""
        try:
            certificate = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, IndexError) as exc:
            raise ConfigurationError(
                f"cannot load the EST server's certificate and key to sign sealed keys ({exc})"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigurationError(
                f"the EST server's {type(key).__name__} cannot sign sealed keys (RSA or EC only)"
            )
        if key.public_key() != certificate.public_key():
            raise ConfigurationError("the EST server's key is not that of its certificate")
        return cls(certificate, key)


def can_seal_to(certificate: x509.Certificate) -> str | None:
    """None when a key can be sealed to `certificate`, else the sentence saying why not."""
    public_key = certificate.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        needed, usage_bit = "keyEncipherment", "key_encipherment"
        if public_key.key_size < 2048:
            return f"its RSA key has {public_key.key_size} bits; at least 2048 are needed"
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        needed, usage_bit = "keyAgreement", "key_agreement"
        if public_key.curve.name not in _ECDH_SCHEMES:
            return f"its curve {public_key.curve.name} is not P-256, P-384 or P-521"
    else:
        return f"its {type(public_key).__name__} cannot receive a key (RSA or EC only)"
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if not getattr(usage, usage_bit):
        return f"its keyUsage lacks {needed} (RFC 5280 4.2.1.3)"
    return None


# --- sealing (the server) ----------------------------------------------------------------------


def seal_key(
    private_key_der: bytes, recipient: x509.Certificate | KeyEncryptionKey, signer: KeySigner
) -> bytes:
    """The DER ContentInfo of an EnvelopedData to `recipient` (a certificate, or a shared
    secret) holding the SignedData (by `signer`) of the AsymmetricKeyPackage of
    `private_key_der` (PKCS#8, a OneAsymmetricKey v1)."""
    package = core.SequenceOf(spec=core.Any)
    package.append(core.Any.load(private_key_der))
    signed_data = _signed_data(package.dump(), signer)
    content_key, iv = os.urandom(_CONTENT_KEY_BYTES), os.urandom(_AES_BLOCK)
    recipient_info = _recipient_info(content_key, recipient)
    enveloped = cms.EnvelopedData(
        {
            # RFC 5652 6.1: v0 with key transport alone, v2 with key agreement or a KEK (v4).
            "version": "v0" if recipient_info.name == "ktri" else "v2",
            "recipient_infos": [recipient_info],
            "encrypted_content_info": {
                "content_type": _SIGNED_DATA,
                "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
                "encrypted_content": _aes_cbc_encrypt(content_key, iv, signed_data),
            },
        }
    )
    info = cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped})
    return bytes(info.dump())


def _signed_data(content: bytes, signer: KeySigner) -> bytes:
    """The DER SignedData (no ContentInfo around it, RFC 5652 5.2) of `content`, a key package."""
    certificate = _asn1_certificate(signer.certificate)
    signer_info = cms_signer_info(content, ASYMMETRIC_KEY_PACKAGE, certificate, signer.key)
    signed = cms.SignedData(
        {
            "version": "v3",  # RFC 5652 5.1: eContentType is not id-data
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {
                "content_type": ASYMMETRIC_KEY_PACKAGE,
                "content": core.ParsableOctetString(content),
            },
            "certificates": [certificate],
            "signer_infos": [signer_info],
        }
    )
    return bytes(signed.dump())


def _recipient_info(
    content_key: bytes, recipient: x509.Certificate | KeyEncryptionKey
) -> cms.RecipientInfo:
    if isinstance(recipient, KeyEncryptionKey):
        return cms.RecipientInfo(name="kekri", value=_kek_recipient_info(content_key, recipient))
    public_key = recipient.public_key()
    rid = _issuer_and_serial(_asn1_certificate(recipient))
    if isinstance(public_key, rsa.RSAPublicKey):
        oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
        return cms.RecipientInfo(
            name="ktri",
            value=cms.KeyTransRecipientInfo(
                {
                    "version": "v0",  # rid is issuerAndSerialNumber (RFC 5652 6.2.1)
                    "rid": {"issuer_and_serial_number": rid},
                    "key_encryption_algorithm": _OAEP_SHA256,
                    "encrypted_key": public_key.encrypt(content_key, oaep),
                }
            ),
        )
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return cms.RecipientInfo(name="kari", value=_key_agreement(content_key, public_key, rid))
    raise SealedKeyError(f"a {type(public_key).__name__} cannot receive a sealed key")


_OAEP_SHA256 = cms.KeyEncryptionAlgorithm(
    {
        "algorithm": "rsaes_oaep",
        "parameters": {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
        },
    }
)
_AES256_WRAP = cms.KeyEncryptionAlgorithm({"algorithm": "aes256_wrap"})


def _key_agreement(
    content_key: bytes, public_key: ec.EllipticCurvePublicKey, rid: cms.IssuerAndSerialNumber
) -> cms.KeyAgreeRecipientInfo:
    """RFC 5753 3.1.1: an ephemeral key on the recipient's curve, whose ECDH secret through
    the X9.63 KDF gives the key that wraps the content key."""
    scheme, hash_type = _ECDH_SCHEMES[public_key.curve.name]
    ephemeral = ec.generate_private_key(public_key.curve)
    shared = ephemeral.exchange(ec.ECDH(), public_key)
    wrapping_key = _kdf(hash_type, shared, _AES256_WRAP, _CONTENT_KEY_BYTES)
    point = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return cms.KeyAgreeRecipientInfo(
        {
            "version": "v3",
            # RFC 5753 7.1.2: id-ecPublicKey, its parameters left out (the recipient's curve).
            "originator": cms.OriginatorIdentifierOrKey(
                name="originator_key",
                value=keys.PublicKeyInfo({"algorithm": {"algorithm": "ec"}, "public_key": point}),
            ),
            "key_encryption_algorithm": {"algorithm": scheme, "parameters": _AES256_WRAP},
            "recipient_encrypted_keys": [
                {
                    "rid": {"issuer_and_serial_number": rid},
                    "encrypted_key": aes_key_wrap(wrapping_key, content_key),
                }
            ],
        }
    )


def _kek_recipient_info(content_key: bytes, kek: KeyEncryptionKey) -> cms.KEKRecipientInfo:
    """RFC 5652 6.2.3: the content key wrapped under the shared secret, named by its identifier;
    the wrap's parameters absent (RFC 3565 2.3.2)."""
    return cms.KEKRecipientInfo(
        {
            "version": "v4",
            "kekid": {"key_identifier": kek.identifier},
            "key_encryption_algorithm": {"algorithm": _WRAP_OF_SIZE[len(kek.secret)]},
            "encrypted_key": aes_key_wrap(kek.secret, content_key),
        }
    )


class _SharedInfo(core.Sequence):  # type: ignore[misc]  # asn1crypto has no type hints
    """ECC-CMS-SharedInfo (RFC 5753 7.2): what the KDF binds the derived key to."""

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


def _kdf(
    hash_type: type[hashes.HashAlgorithm],
    shared: bytes,
    wrap: cms.KeyEncryptionAlgorithm,
    length: int,
    ukm: bytes | None = None,
) -> bytes:
    info = _SharedInfo({"key_info": wrap, "supp_pub_info": (length * 8).to_bytes(4, "big")})
    if ukm is not None:
        info["entity_u_info"] = ukm
    return X963KDF(algorithm=hash_type(), length=length, sharedinfo=info.dump()).derive(shared)


def _aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    padder = PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _asn1_certificate(certificate: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))


def _issuer_and_serial(certificate: asn1_x509.Certificate) -> cms.IssuerAndSerialNumber:
    return cms.IssuerAndSerialNumber(
        {"issuer": certificate.issuer, "serial_number": certificate.serial_number}
    )


# --- opening (the client) ----------------------------------------------------------------------


def open_sealed_key(
    sealed_der: bytes,
    recipient: x509.Certificate,
    recipient_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    server: x509.Certificate,
) -> bytes:
    """The PKCS#8 DER of the key in `sealed_der`, decrypted with `recipient_key` and signed
    by `server` (the certificate the EST server showed in TLS); SealedKeyError if not."""
    return _opened(sealed_der, lambda infos: _content_key(infos, recipient, recipient_key), server)


def open_key_sealed_with_secret(
    sealed_der: bytes, kek: KeyEncryptionKey, server: x509.Certificate
) -> bytes:
    """The PKCS#8 DER of the key in `sealed_der`, unwrapped with the shared secret `kek`
    (RFC 7030 4.4.1.1) and signed by `server`; SealedKeyError if not."""
    return _opened(sealed_der, lambda infos: _unwrapped_content_key(infos, kek), server)


def _opened(
    sealed_der: bytes, content_key_of: Callable[[Any], bytes], server: x509.Certificate
) -> bytes:
    """The key in `sealed_der`, whose content key `content_key_of` finds among its
    RecipientInfos, in a key package `server` signed."""
    try:
        info = cms.ContentInfo.load(sealed_der, strict=True)
        if info["content_type"].native != "enveloped_data":
            raise SealedKeyError("the sealed key is not a CMS EnvelopedData")
        enveloped = info["content"]
        content_key = content_key_of(enveloped["recipient_infos"])
        encrypted = enveloped["encrypted_content_info"]
        # id-data too: `openssl cms -encrypt` of a signed ContentInfo says data, not signedData.
        if encrypted["content_type"].dotted not in (_SIGNED_DATA, _DATA):
            raise SealedKeyError("the EnvelopedData does not hold a SignedData (RFC 7030 4.4.2)")
        signed_der = _aes_cbc_decrypt(
            content_key, encrypted["content_encryption_algorithm"], encrypted["encrypted_content"]
        )
        package = _verified_content(signed_der, server)
        keys_in = core.SequenceOf.load(package, spec=core.Any)
        if len(keys_in) != 1:
            raise SealedKeyError(f"the key package holds {len(keys_in)} keys, not 1")
        return bytes(keys_in[0].dump())
    except SealedKeyError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, InvalidUnwrap) as exc:
        raise SealedKeyError(f"the sealed key is malformed ({type(exc).__name__})") from None


def _names(rid: Any, certificate: asn1_x509.Certificate) -> bool:
    """Whether a RecipientIdentifier (issuer and serial, or key identifier) names `certificate`."""
    chosen = rid.chosen
    if isinstance(chosen, cms.IssuerAndSerialNumber):
        return bool(
            chosen["serial_number"].native == certificate.serial_number
            and chosen["issuer"] == certificate.issuer
        )
    identifier = chosen["subject_key_identifier"] if isinstance(chosen, core.Sequence) else chosen
    return bool(identifier.native == certificate.key_identifier)


def _content_key(
    recipient_infos: Any,
    recipient: x509.Certificate,
    recipient_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
) -> bytes:
    mine = _asn1_certificate(recipient)
    for choice in recipient_infos:
        info = choice.chosen
        if choice.name == "ktri" and _names(info["rid"], mine):
            if not isinstance(recipient_key, rsa.RSAPrivateKey):
                raise SealedKeyError("the key was sent by key transport to a key that is not RSA")
            return recipient_key.decrypt(
                info["encrypted_key"].native, _rsa_padding(info["key_encryption_algorithm"])
            )
        if choice.name == "kari":
            for encrypted in info["recipient_encrypted_keys"]:
                if _names(encrypted["rid"], mine):
                    if not isinstance(recipient_key, ec.EllipticCurvePrivateKey):
                        raise SealedKeyError("the key was sent by ECDH to a key that is not EC")
                    return _agreed_content_key(info, encrypted, recipient_key)
    raise SealedKeyError("the sealed key is not for this certificate")


def _unwrapped_content_key(recipient_infos: Any, kek: KeyEncryptionKey) -> bytes:
    for choice in recipient_infos:
        if choice.name != "kekri":
            continue
        info = choice.chosen
        if info["kekid"]["key_identifier"].native != kek.identifier:
            continue
        wrap = info["key_encryption_algorithm"]["algorithm"]
        if _WRAP_KEY_BYTES.get(wrap.native) != len(kek.secret):
            raise SealedKeyError(
                f"the key is wrapped by {wrap.dotted}, which does not fit a secret of "
                f"{len(kek.secret)} octets"
            )
        try:
            return aes_key_unwrap(kek.secret, info["encrypted_key"].native)
        except InvalidUnwrap:
            raise SealedKeyError("the secret does not unwrap the content key") from None
    raise SealedKeyError(f"the sealed key is not for the secret {kek.identifier.hex()}")


def _rsa_padding(algorithm: cms.KeyEncryptionAlgorithm) -> padding.AsymmetricPadding:
    if algorithm["algorithm"].native == "rsaes_pkcs1v15":
        return padding.PKCS1v15()
    if algorithm["algorithm"].native != "rsaes_oaep":
        raise SealedKeyError(f"key transport by {algorithm['algorithm'].dotted} is not supported")
    parameters = algorithm["parameters"]
    digest = _OAEP_HASHES[parameters["hash_algorithm"]["algorithm"].native]
    mask_digest = _OAEP_HASHES[parameters["mask_gen_algorithm"]["parameters"]["algorithm"].native]
    return padding.OAEP(padding.MGF1(mask_digest()), digest(), None)


def _agreed_content_key(
    info: cms.KeyAgreeRecipientInfo, encrypted: Any, recipient_key: ec.EllipticCurvePrivateKey
) -> bytes:
    originator = info["originator"]
    if originator.name != "originator_key":
        raise SealedKeyError("the key agreement names no ephemeral originator key")
    point = originator.chosen["public_key"].native
    ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(recipient_key.curve, point)
    algorithm = info["key_encryption_algorithm"]
    hash_type = _HASH_OF_SCHEME.get(algorithm["algorithm"].dotted)
    if hash_type is None:
        raise SealedKeyError(f"key agreement by {algorithm['algorithm'].dotted} is not supported")
    wrap = cms.KeyEncryptionAlgorithm.load(algorithm["parameters"].dump())
    length = _WRAP_KEY_BYTES.get(wrap["algorithm"].native)
    if length is None:
        raise SealedKeyError(f"key wrap by {wrap['algorithm'].dotted} is not supported")
    ukm = info["ukm"].native
    shared = recipient_key.exchange(ec.ECDH(), ephemeral)
    wrapping_key = _kdf(hash_type, shared, wrap, length, ukm)
    return aes_key_unwrap(wrapping_key, encrypted["encrypted_key"].native)


def _aes_cbc_decrypt(key: bytes, algorithm: algos.EncryptionAlgorithm, data: Any) -> bytes:
    if algorithm["algorithm"].native not in ("aes128_cbc", "aes192_cbc", "aes256_cbc"):
        raise SealedKeyError(
            f"content encrypted by {algorithm['algorithm'].dotted} is not supported"
        )
    if len(key) != algorithm.key_length:
        raise SealedKeyError("the content key does not fit its cipher")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(algorithm["parameters"].native)).decryptor()
    padded = decryptor.update(data.native) + decryptor.finalize()
    unpadder = PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _verified_content(signed_der: bytes, server: x509.Certificate) -> bytes:
    """The key package in a SignedData that `server` signed (its DER, or a ContentInfo around
    it, as some servers nest it); SealedKeyError when `server` did not sign it."""
    if core.Sequence.load(signed_der).contents[:1] == _OID_TAG:  # a ContentInfo, not a version
        signed = cms.ContentInfo.load(signed_der)["content"]
    else:
        signed = cms.SignedData.load(signed_der)
    encapsulated = signed["encap_content_info"]
    if encapsulated["content_type"].dotted != ASYMMETRIC_KEY_PACKAGE:
        raise SealedKeyError("the SignedData does not hold an asymmetric key package (RFC 5958)")
    content = encapsulated["content"].native
    (signer_info,) = signed["signer_infos"]
    if not _names(signer_info["sid"], _asn1_certificate(server)):
        raise SealedKeyError("the key package was not signed by the EST server's certificate")
    if signer_info["digest_algorithm"]["algorithm"].native != "sha256":
        raise SealedKeyError("the key package's digest is not SHA-256")
    signed_attrs = signer_info["signed_attrs"]
    found = {attribute["type"].native: attribute["values"] for attribute in signed_attrs}
    digest = found.get("message_digest")
    if digest is None or not hmac.compare_digest(
        digest[0].native, hashlib.sha256(content).digest()
    ):
        raise SealedKeyError("the key package is not what the server signed")
    kinds = found.get("content_type")
    if kinds is None or kinds[0].dotted != ASYMMETRIC_KEY_PACKAGE:
        raise SealedKeyError("the signed content type is not that of the key package")
    public_key = server.public_key()
    try:
        check_signed_attributes(signer_info, public_key)
    except TypeError:
        raise SealedKeyError(f"a {type(public_key).__name__} server key is not supported") from None
    except InvalidSignature:
        raise SealedKeyError("the server's signature on the key package does not verify") from None
    return bytes(content)

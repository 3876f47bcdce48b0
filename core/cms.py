"""Detached CMS signatures (RFC 5652 SignedData, DER) by a CA key, and their check in Python.

Built by hand with asn1crypto so that any key that signs like a `cryptography` key (a key file,
or a PKCS#11 token key from `keystore`) signs the same way: the key signs the DER of the signed
attributes (content type, signing time, message digest; RFC 5652 5.4). What is made verifies
with `openssl cms -verify -binary -inform DER -content FILE -CAfile CHAIN -in SIG`.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

from asn1crypto import algos, cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa


class CMSError(ValueError):
    """The signature is not one, or does not verify; `content_altered` when the signed digest
    is not that of the content (the content changed, not the signature)."""

    def __init__(self, message: str, content_altered: bool = False) -> None:
        super().__init__(message)
        self.content_altered = content_altered


def sign_detached(content: bytes, certificate: x509.Certificate, key: Any) -> bytes:
    """A DER CMS SignedData over `content`, detached, by `key` (the private key of `certificate`)."""
    cert = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    signer = signer_info(content, "data", cert, key)
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
            "encap_content_info": {"content_type": "data"},
            "certificates": [cert],
            "signer_infos": [signer],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


def signer_info(
    content: bytes, content_type: str, certificate: asn1_x509.Certificate, key: Any
) -> cms.SignerInfo:
    """`key`'s SignerInfo (the private key of `certificate`, named by issuer and serial) over
    `content` of `content_type`: the signed attributes (content type, signing time, message
    digest; RFC 5652 5.4) and the key's SHA-256 signature of their DER (PKCS#1 v1.5 or ECDSA)."""
    attributes = [
        cms.CMSAttribute({"type": "content_type", "values": [content_type]}),
        cms.CMSAttribute(
            {"type": "signing_time", "values": [cms.Time({"utc_time": datetime.now(UTC)})]}
        ),
        cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(content).digest()]}),
    ]
    # DER sorts a SET OF by its members' encodings (X.690 11.6), and openssl re-encodes it so.
    attributes.sort(key=lambda attribute: attribute.dump())
    signed_attrs = cms.CMSAttributes(attributes)
    to_sign = signed_attrs.dump()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
        algorithm = "rsassa_pkcs1v15"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(to_sign, ec.ECDSA(hashes.SHA256()))
        algorithm = "sha256_ecdsa"
    else:
        raise TypeError(f"a {type(key).__name__} cannot sign a CMS signature here")
    return cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                        {"issuer": certificate.issuer, "serial_number": certificate.serial_number}
                    )
                }
            ),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
            "signed_attrs": signed_attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": algorithm}),
            "signature": signature,
        }
    )


def check_signed_attributes(info: cms.SignerInfo, public_key: object) -> None:
    """Raise InvalidSignature unless `public_key` made `info`'s SHA-256 signature (PKCS#1 v1.5
    or ECDSA) of its signed attributes, or TypeError for another kind of key."""
    # The signed attributes as signed: their DER with the SET tag, not the [0] of SignerInfo.
    signed_bytes = b"\x31" + info["signed_attrs"].dump()[1:]
    signature = info["signature"].native
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, signed_bytes, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, signed_bytes, ec.ECDSA(hashes.SHA256()))
    else:
        raise TypeError(f"a {type(public_key).__name__} key is not supported")


def verify_detached(content: bytes, signature_der: bytes, signer: x509.Certificate) -> None:
    """Check that `signer`'s key signed `content` in `signature_der`; raise CMSError if not.

    Only `signer`, given by the caller, is trusted: a certificate inside must be that very one.
    """
    try:
        info = cms.ContentInfo.load(signature_der, strict=True)
        if info["content_type"].native != "signed_data":
            raise CMSError("it is not a CMS SignedData")
        signer_infos = info["content"]["signer_infos"]
        if len(signer_infos) != 1:
            raise CMSError(f"it holds {len(signer_infos)} signer infos, not 1")
        signer_info = signer_infos[0]
        if signer_info["digest_algorithm"]["algorithm"].native != "sha256":
            raise CMSError("its digest is not SHA-256")
        signed_attrs = signer_info["signed_attrs"]
        digests = [
            attribute["values"][0].native
            for attribute in signed_attrs
            if attribute["type"].native == "message_digest"
        ]
        # Strict about the rest too: one certificate, the signer's own, named as the signer.
        signer_der = signer.public_bytes(serialization.Encoding.DER)
        carried = [choice.chosen.dump() for choice in info["content"]["certificates"] or []]
        if carried not in ([], [signer_der]):
            raise CMSError("it carries a certificate that is not the CA's")
        sid = signer_info["sid"].chosen
        expected = asn1_x509.Certificate.load(signer_der)
        if (
            not isinstance(sid, cms.IssuerAndSerialNumber)
            or sid["serial_number"].native != expected.serial_number
            or sid["issuer"].dump() != expected.issuer.dump()
        ):
            raise CMSError("it names another signer than the CA")
    except CMSError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CMSError(f"it is not a CMS signature ({type(exc).__name__})") from None
    public_key = signer.public_key()
    try:
        check_signed_attributes(signer_info, public_key)
    except InvalidSignature:
        raise CMSError("its signature does not verify with the CA's key") from None
    except TypeError:
        raise CMSError(f"a {type(public_key).__name__} signer is not supported") from None
    except (ValueError, KeyError, IndexError) as exc:
        raise CMSError(f"it is not a CMS signature ({type(exc).__name__})") from None
    if len(digests) != 1 or not hmac.compare_digest(digests[0], hashlib.sha256(content).digest()):
        raise CMSError("the content is not what was signed", content_altered=True)

"""Write the hostile-request corpus: `csr/`, `jobs/` and `MANIFEST.toml` next to this file.

Run from anywhere: `python tests/corpus/make_corpus.py`. Every run rewrites the same files with
the same names, fields and expected codes; only the key material (and so the bytes of most
CSRs) changes. `tests/test_corpus.py` reads MANIFEST.toml and runs each entry through the
signer against a real Redis.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for `tests.*` when run directly

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa  # noqa: E402
from cryptography.x509.oid import ExtensionOID, NameOID, ObjectIdentifier  # noqa: E402

from tests import hostile_csrs as hostile  # noqa: E402
from tests import weak_keys  # noqa: E402
from tests.csrs import make_csr  # noqa: E402

PRIVATE_OID = ObjectIdentifier("1.3.6.1.4.1.55555.1.1")
ROOT_CN = "Alice Ltd Root CA"
INTERMEDIATE_CN = "Alice Ltd Intermediate CA"
FOUR_MIB = 4 * 1024 * 1024

# Profiles the corpus signer offers on top of the defaults (none of which refuses wildcards).
EXTRA_PROFILES = """\
[profiles.server_no_wildcards]
description = "server_cert without wildcards, to exercise san.wildcard_not_allowed"
common_name = "fqdn"
san_types = ["DNS", "IP"]
san_from_common_name = true
wildcards = false
key_usage = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["serverAuth"]
"""


@dataclass
class Entry:
    """One hostile request: a CSR payload sent with request fields, or a whole raw job."""

    name: str
    expect: str
    why: str
    csr: str | bytes | None = None
    job: dict[str, object] | None = None
    profile: str = "server_cert"
    days: int | None = None
    san: Sequence[str] = ()
    job_id: str | None = None
    prior: str | None = None  # a CSR signed first under the same job id
    inflate: dict[str, object] | None = None  # a field grown at test time (too big to commit)
    suffix: str = ".pem"


def key_usage(*, key_cert_sign: bool, crl_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def with_organization(common_name: str, organization: str) -> str:
    return make_csr(
        common_name,
        extra_attributes=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)],
    )


def padded_csr(total_pem_bytes: int) -> str:
    """A genuine, well-signed CSR grown past `total_pem_bytes` by an unknown extension."""
    bulk = x509.UnrecognizedExtension(
        PRIVATE_OID, hostile.tlv(0x04, bytes(total_pem_bytes * 3 // 4))
    )
    return make_csr("www.example.com", extensions=[(bulk, False)])


def entries() -> list[Entry]:
    rsa_key = rsa.generate_private_key(65537, 2048)
    modulus = rsa_key.public_key().public_numbers().n
    base = make_csr("www.example.com", key=rsa_key)
    base_der = hostile.pem_to_der(base)
    csr_malformed, bad_char, not_fqdn = (
        "csr.malformed",
        "subject.bad_character",
        "subject.cn_not_fqdn",
    )
    return [
        # --- proof of possession and encoding
        Entry(
            "bad-signature-ec",
            "csr.bad_signature",
            "last signature byte flipped (P-256)",
            csr=hostile.with_tampered_signature(make_csr("www.example.com")),
        ),
        Entry(
            "bad-signature-rsa",
            "csr.bad_signature",
            "last signature byte flipped (RSA)",
            csr=hostile.with_tampered_signature(base),
        ),
        Entry(
            "signed-by-other-key",
            "csr.bad_signature",
            "CSR info re-signed by a different key",
            csr=hostile.to_pem(
                hostile.resign(
                    *hostile.split_request(base_der)[:2], rsa.generate_private_key(65537, 2048)
                )
            ),
        ),
        Entry("over-64kib", "csr.too_large", "a real CSR of about 70 KiB", csr=padded_csr(70_000)),
        Entry("one-mib", "csr.too_large", "a real CSR of about 1 MiB", csr=padded_csr(1 << 20)),
        Entry(
            "not-pem",
            csr_malformed,
            "plain text",
            csr="please sign www.example.com\n",
            suffix=".txt",
        ),
        Entry(
            "certificate-label",
            csr_malformed,
            "CSR DER under a BEGIN CERTIFICATE label",
            csr=hostile.to_pem(base_der, "CERTIFICATE"),
        ),
        Entry(
            "truncated-der",
            csr_malformed,
            "DER cut in half, valid armour",
            csr=hostile.truncated(base),
        ),
        Entry(
            "der-not-pem",
            csr_malformed,
            "raw DER sent as a latin-1 string",
            csr=base_der,
            suffix=".der",
        ),
        Entry(
            "binary-garbage",
            csr_malformed,
            "random-looking bytes sent as a latin-1 string",
            csr=hostile.hashes_expand(7, 700),
            suffix=".bin",
        ),
        Entry(
            "pem-base64-garbage",
            csr_malformed,
            "right armour, body not base64",
            csr="-----BEGIN CERTIFICATE REQUEST-----\n%%%% not base64 ****\n"
            "-----END CERTIFICATE REQUEST-----\n",
        ),
        Entry(
            "pem-valid-base64-not-der",
            csr_malformed,
            "right armour, base64 of text",
            csr=hostile.to_pem(b"hello, certificate authority"),
        ),
        Entry(
            "version-2",
            csr_malformed,
            "CSR version INTEGER 1 (only 0 exists), re-signed",
            csr=hostile.with_version(base, 1, rsa_key),
        ),
        Entry(
            "subject-invalid-utf8",
            csr_malformed,
            "CN is a UTF8String holding byte 0xFF",
            csr=hostile.request_with_subject(
                rsa_key,
                [(hostile.OID_COMMON_NAME, hostile.tlv(hostile.TAG_UTF8_STRING, b"a\xffb.com"))],
            ),
        ),
        Entry(
            "subject-integer-value",
            csr_malformed,
            "CN value is an INTEGER",
            csr=hostile.request_with_subject(
                rsa_key, [(hostile.OID_COMMON_NAME, hostile.der_integer(7))]
            ),
        ),
        Entry(
            "subject-octet-string-cn",
            bad_char,
            "CN is an OCTET STRING, not a DirectoryString",
            profile="usr_cert",
            csr=hostile.request_with_subject(
                rsa_key, [(hostile.OID_COMMON_NAME, hostile.tlv(0x04, b"bob"))]
            ),
        ),
        # --- the key
        Entry(
            "rsa-1024",
            "key.rsa_too_small",
            "RSA 1024",
            csr=make_csr(key=rsa.generate_private_key(65537, 1024)),
        ),
        Entry(
            "rsa-2052",
            "key.rsa_too_small",
            "RSA size not a multiple of 8",
            csr=make_csr(key=rsa.generate_private_key(65537, 2052)),
        ),
        Entry(
            "rsa-16384-crafted",
            "key.rsa_too_small",
            "16384-bit made-up modulus (generating a real one takes minutes); dummy signature",
            csr=hostile.rsa_request(hostile.odd_modulus(16384), 65537),
        ),
        Entry(
            "rsa-exponent-3",
            "key.rsa_exponent",
            "a real e=3 key",
            csr=make_csr(key=rsa.generate_private_key(3, 2048)),
        ),
        Entry(
            "rsa-exponent-1",
            "key.rsa_exponent",
            "e=1 whose signature verifies",
            csr=hostile.rsa_request_with_exponent_one(modulus),
        ),
        Entry(
            "rsa-exponent-even",
            "key.rsa_exponent",
            "e=65536, dummy signature",
            csr=hostile.rsa_request(modulus, 65536),
        ),
        Entry(
            "rsa-exponent-huge",
            "key.rsa_exponent",
            "e=2**256+1",
            csr=hostile.rsa_request(modulus, 2**256 + 1),
        ),
        Entry(
            "ec-secp256k1",
            "key.ec_curve",
            "EC on secp256k1",
            csr=make_csr(key=ec.generate_private_key(ec.SECP256K1())),
        ),
        Entry(
            "dsa",
            "key.unsupported_type",
            "DSA 2048",
            csr=make_csr(key=dsa.generate_private_key(2048)),
        ),
        Entry(
            "ed448",
            "key.unsupported_type",
            "Ed448",
            csr=hostile.edwards_request(ed448.Ed448PrivateKey.generate()),
        ),
        Entry(
            "unknown-key-algorithm",
            "key.unsupported_type",
            "SPKI algorithm GOST R 34.10-2012",
            csr=hostile.request_with_unknown_key_algorithm(rsa_key),
        ),
        # --- the subject
        Entry(
            "cn-missing",
            "subject.cn_missing",
            "O only",
            profile="usr_cert",
            csr=make_csr(
                None, extra_attributes=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bob Ltd")]
            ),
        ),
        Entry(
            "cn-twice",
            "subject.cn_repeated",
            "two CN attributes",
            csr=make_csr(
                "www.example.com",
                extra_attributes=[x509.NameAttribute(NameOID.COMMON_NAME, "evil.example.com")],
            ),
        ),
        Entry(
            "cn-root",
            "subject.cn_is_ca",
            "the root's CN",
            profile="usr_cert",
            csr=make_csr(ROOT_CN),
        ),
        Entry(
            "cn-intermediate-lower",
            "subject.cn_is_ca",
            "the intermediate's CN, lower case",
            profile="usr_cert",
            csr=make_csr(INTERMEDIATE_CN.lower()),
        ),
        Entry(
            "cn-root-fullwidth",
            "subject.cn_is_ca",
            "root CN with a FULLWIDTH A",
            profile="usr_cert",
            csr=make_csr("\uff21lice Ltd Root CA"),
        ),
        Entry(
            "cn-root-trailing-space",
            "subject.cn_is_ca",
            "root CN plus a space",
            profile="usr_cert",
            csr=make_csr(ROOT_CN + " "),
        ),
        Entry("cn-single-label", not_fqdn, "localhost", csr=make_csr("localhost")),
        Entry("cn-underscore", not_fqdn, "underscore", csr=make_csr("www_1.example.com")),
        Entry("cn-trailing-dash", not_fqdn, "label ends in -", csr=make_csr("www-.example.com")),
        Entry("cn-spaces", not_fqdn, "space inside", csr=make_csr("www example.com")),
        Entry("cn-idn-unicode", not_fqdn, "U-label IDN", csr=make_csr("b\u00fccher.example")),
        Entry(
            "cn-kelvin-sign",
            not_fqdn,
            "KELVIN SIGN lower-cases to k",
            csr=make_csr("www.\u212aexample.com"),
        ),
        Entry(
            "cn-equals-comma",
            not_fqdn,
            "RFC 4514 injection in a server CN",
            csr=make_csr("www.example.com,CN=Alice Ltd Root CA"),
        ),
        Entry("cn-nul", bad_char, "NUL in CN", profile="usr_cert", csr=make_csr("bob\x00admin")),
        Entry("cn-tab", bad_char, "TAB in CN", profile="usr_cert", csr=make_csr("bob\tV\t99")),
        Entry(
            "cn-newline",
            bad_char,
            "newline in CN",
            profile="usr_cert",
            csr=make_csr("bob\nV\t491231235959Z"),
        ),
        Entry(
            "cn-bidi-override",
            bad_char,
            "RIGHT-TO-LEFT OVERRIDE in CN",
            profile="usr_cert",
            csr=make_csr("bob\u202emoc.elpmaxe"),
        ),
        Entry(
            "o-escape", bad_char, "ESC in O", csr=with_organization("www.example.com", "A\x1b[2J")
        ),
        Entry(
            "o-slash-cn-forgery",
            bad_char,
            "O=x/CN=root would forge an index.txt attribute",
            csr=with_organization("www.example.com", "Alice Ltd/CN=Alice Ltd Root CA"),
        ),
        Entry(
            "email-attribute-newline",
            bad_char,
            "emailAddress with a newline",
            profile="usr_cert",
            csr=make_csr(
                "bob",
                extra_attributes=[
                    x509.NameAttribute(NameOID.EMAIL_ADDRESS, "bob@example.com\n/CN=evil")
                ],
            ),
        ),
        Entry(
            "cn-65-chars",
            "subject.value_too_long",
            "ub-common-name is 64",
            profile="usr_cert",
            csr=make_csr(None, extra_attributes=[hostile.common_name("c" * 65)]),
        ),
        # --- requested extensions
        Entry(
            "ca-true",
            "csr.ca_requested",
            "basicConstraints CA:TRUE",
            csr=make_csr(extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)]),
        ),
        Entry(
            "ca-pathlen",
            "csr.ca_requested",
            "basicConstraints CA:TRUE, pathlen:0",
            csr=make_csr(extensions=[(x509.BasicConstraints(ca=True, path_length=0), True)]),
        ),
        Entry(
            "key-cert-sign",
            "csr.ca_requested",
            "keyUsage keyCertSign",
            csr=make_csr(extensions=[(key_usage(key_cert_sign=True, crl_sign=False), True)]),
        ),
        Entry(
            "crl-sign",
            "csr.ca_requested",
            "keyUsage cRLSign",
            csr=make_csr(extensions=[(key_usage(key_cert_sign=False, crl_sign=True), True)]),
        ),
        Entry(
            "unknown-critical-extension",
            "csr.unknown_critical_extension",
            "critical private extension",
            csr=make_csr(extensions=[(x509.UnrecognizedExtension(PRIVATE_OID, b"\x05\x00"), True)]),
        ),
        Entry(
            "name-constraints-critical",
            "csr.unknown_critical_extension",
            "critical nameConstraints (a CA extension)",
            csr=make_csr(
                extensions=[(x509.NameConstraints([x509.DNSName("example.com")], None), True)]
            ),
        ),
        Entry(
            "pathlen-with-ca-false",
            csr_malformed,
            "cA FALSE with a pathLenConstraint",
            csr=make_csr(
                extensions=[
                    (
                        x509.UnrecognizedExtension(
                            ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x02\x01\x00"
                        ),
                        False,
                    )
                ]
            ),
        ),
        # --- subjectAltName
        Entry(
            "san-wildcard",
            "san.wildcard_not_allowed",
            "wildcard where the profile refuses it",
            profile="server_no_wildcards",
            csr=make_csr("www.example.com", san=[x509.DNSName("*.example.com")]),
        ),
        Entry(
            "san-uri-in-server",
            "san.type_not_allowed",
            "URI SAN in server_cert",
            csr=make_csr(
                "www.example.com", san=[x509.UniformResourceIdentifier("https://www.example.com/")]
            ),
        ),
        Entry(
            "san-dirname",
            "san.type_not_allowed",
            "DirectoryName SAN in usr_cert",
            profile="usr_cert",
            csr=make_csr(
                "bob",
                san=[
                    x509.DirectoryName(
                        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN)])
                    )
                ],
            ),
        ),
        Entry(
            "san-text-email-in-server",
            "san.type_not_allowed",
            "request asks for email: SAN",
            csr=make_csr("www.example.com"),
            san=["email:bob@example.com"],
        ),
        Entry(
            "san-text-no-prefix",
            "san.malformed",
            "request SAN without a type",
            csr=make_csr("www.example.com"),
            san=["www.example.com"],
        ),
        Entry(
            "san-text-idn",
            "san.malformed",
            "request SAN with a U-label",
            csr=make_csr("www.example.com"),
            san=["DNS:b\u00fccher.example"],
        ),
        Entry(
            "san-text-bad-ip",
            "san.malformed",
            "request SAN IP:999.1.1.1",
            csr=make_csr("www.example.com"),
            san=["IP:999.1.1.1"],
        ),
        Entry(
            "san-text-empty-email",
            "san.malformed",
            "request SAN email: with nothing after it",
            profile="usr_cert",
            csr=make_csr("bob"),
            san=["email:"],
        ),
        Entry(
            "san-x400",
            csr_malformed,
            "x400Address GeneralName",
            csr=hostile.request_with_raw_san(rsa_key, "www.example.com", [hostile.tlv(0xA3, b"")]),
        ),
        Entry(
            "san-ip-network",
            "san.malformed",
            "8-byte iPAddress (a network) in the SAN",
            csr=hostile.request_with_raw_san(
                rsa_key,
                "www.example.com",
                [hostile.tlv(0x87, bytes([192, 0, 2, 0, 255, 255, 255, 0]))],
            ),
        ),
        Entry(
            "san-dns-kelvin-bytes",
            "san.malformed",
            "UTF-8 KELVIN SIGN inside an IA5 dNSName",
            csr=hostile.request_with_raw_san(
                rsa_key, "www.example.com", [hostile.tlv(0x82, "www.\u212aexample.com".encode())]
            ),
        ),
        Entry(
            "san-uri-utf8",
            "san.malformed",
            "UTF-8 inside an IA5 URI",
            profile="usr_cert",
            csr=hostile.request_with_raw_san(
                rsa_key, "bob", [hostile.tlv(0x86, "https://b\u00fccher.example/".encode())]
            ),
        ),
        Entry(
            "tls-server-no-san",
            "san.required",
            "tls_server needs a SAN",
            profile="tls_server",
            csr=make_csr("www.example.com"),
        ),
        # --- key quality and the Baseline Requirements' names (tls_server)
        Entry(
            "rsa-1009-times-q",
            "key.rsa_small_factor",
            "RSA-2048 modulus n = 1009 * q, with a valid proof of possession",
            csr=make_csr("www.example.com", key=weak_keys.small_factor_key()),
        ),
        Entry(
            "rsa-close-primes",
            "key.rsa_fermat",
            "RSA-2048 whose primes are neighbours: Fermat splits it in one round",
            csr=make_csr("www.example.com", key=weak_keys.close_primes_key()),
        ),
        Entry(
            "rsa-roca",
            "key.roca",
            "RSA-2048 with both primes of Infineon's k * M + (65537^a mod M) shape",
            csr=make_csr("www.example.com", key=weak_keys.roca_key()),
        ),
        Entry(
            "ec-point-off-curve",
            "key.ec_point_invalid",
            "P-256 public point (1, 1)",
            csr=weak_keys.off_curve_ec_request(),
        ),
        Entry(
            "tls-server-ed25519",
            "key.type_not_allowed",
            "an Ed25519 key under tls_server (BR 6.1.5)",
            profile="tls_server",
            san=["DNS:www.example.com"],
            csr=hostile.edwards_request(ed25519.Ed25519PrivateKey.generate()),
        ),
        Entry(
            "tls-server-google-o-l",
            "subject.attribute_not_allowed",
            "O=Google LLC, L=Mountain View, CN=www.google.com under tls_server",
            profile="tls_server",
            san=["DNS:www.google.com"],
            csr=make_csr(
                "www.google.com",
                extra_attributes=[
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Google LLC"),
                    x509.NameAttribute(NameOID.LOCALITY_NAME, "Mountain View"),
                ],
            ),
        ),
        Entry(
            "country-uk",
            "subject.country_invalid",
            "C=UK (the ISO 3166 code is GB)",
            csr=make_csr(
                "www.example.com",
                extra_attributes=[x509.NameAttribute(NameOID.COUNTRY_NAME, "UK")],
            ),
        ),
        Entry(
            "tls-server-cn-not-in-san",
            "subject.cn_not_in_san",
            "CN www.google.com, SAN www.example.com only",
            profile="tls_server",
            san=["DNS:www.example.com"],
            csr=make_csr("www.google.com"),
        ),
        Entry(
            "usr-cert-wildcard-cn",
            "subject.cn_wildcard_not_allowed",
            "usr_cert with CN *.example.com",
            profile="usr_cert",
            csr=make_csr("*.example.com"),
        ),
        Entry(
            "tls-server-1500-sans",
            "san.too_many",
            "1,500 DNS names in one CSR",
            profile="tls_server",
            csr=make_csr(
                "host0.example.com",
                san=[x509.DNSName(f"host{index}.example.com") for index in range(1500)],
            ),
        ),
        Entry(
            "san-trailing-dot",
            "san.trailing_dot",
            "DNS:www.example.com. (absolute form)",
            san=["DNS:www.example.com."],
            csr=make_csr("www.example.com"),
        ),
        Entry(
            "tls-server-printer-local",
            "san.internal_name",
            "DNS:printer.local under tls_server",
            profile="tls_server",
            san=["DNS:www.example.com", "DNS:printer.local"],
            csr=make_csr("www.example.com"),
        ),
        Entry(
            "wildcard-co-uk",
            "san.wildcard_on_public_suffix",
            "DNS:*.co.uk",
            san=["DNS:*.co.uk"],
            csr=make_csr("www.example.com"),
        ),
        Entry(
            "tls-server-loopback",
            "san.ip_not_public",
            "IP:127.0.0.1 under tls_server",
            profile="tls_server",
            san=["DNS:www.example.com", "IP:127.0.0.1"],
            csr=make_csr("www.example.com"),
        ),
        # --- the request
        Entry(
            "unknown-profile",
            "request.unknown_profile",
            "profile v3_ca",
            profile="v3_ca",
            csr=make_csr("www.example.com"),
        ),
        Entry("days-zero", "request.validity_invalid", "days 0", days=0, csr=make_csr()),
        Entry("days-negative", "request.validity_invalid", "days -375", days=-375, csr=make_csr()),
        Entry(
            "days-beyond-max",
            "request.validity_too_long",
            "days 826 > 825",
            days=826,
            csr=make_csr(),
        ),
        Entry(
            "days-beyond-baseline",
            "request.validity_too_long",
            "tls_server days 3650",
            profile="tls_server",
            days=3650,
            san=["DNS:www.example.com"],
            csr=make_csr(),
        ),
        Entry(
            "job-id-reused",
            "request.job_id_reused",
            "same job id, another CSR",
            job_id="reused-job-id",
            prior=make_csr("first.example.com"),
            csr=make_csr("second.example.com"),
        ),
        # --- malformed job messages
        Entry(
            "job-missing-csr",
            "request.malformed",
            "no csr_pem",
            job={"job_id": "job-missing-csr", "profile": "server_cert"},
        ),
        Entry(
            "job-empty-csr",
            "request.malformed",
            "csr_pem is the empty string",
            job={"job_id": "job-empty-csr", "csr_pem": ""},
        ),
        Entry(
            "job-days-string",
            "request.malformed",
            "days as a string",
            job={"job_id": "job-days-string", "csr_pem": base, "days": "30"},
        ),
        Entry(
            "job-days-bool",
            "request.malformed",
            "days true",
            job={"job_id": "job-days-bool", "csr_pem": base, "days": True},
        ),
        Entry(
            "job-csr-number",
            "request.malformed",
            "csr_pem a number",
            job={"job_id": "job-csr-number", "csr_pem": 12345},
        ),
        Entry(
            "job-san-string",
            "request.malformed",
            "san not a list",
            job={"job_id": "job-san-string", "csr_pem": base, "san": "DNS:www.example.com"},
        ),
        Entry(
            "job-extra-field",
            "request.malformed",
            "an unknown field",
            job={"job_id": "job-extra-field", "csr_pem": base, "is_ca": True},
        ),
        Entry(
            "job-schema-version-2",
            "request.malformed",
            "a schema this worker does not know",
            job={"job_id": "job-schema-version-2", "schema_version": 2, "csr_pem": base},
        ),
        Entry(
            "job-profile-path",
            "request.malformed",
            "profile name with slashes",
            job={"job_id": "job-profile-path", "csr_pem": base, "profile": "../../v3_ca"},
        ),
        Entry(
            "job-extra-field-4mib",
            "request.malformed",
            "a 4 MiB unknown field (a message over 8 MiB is answered batch.too_large: "
            "tests/test_bounds.py)",
            job={"job_id": "job-extra-field-4mib", "csr_pem": base, "padding": ""},
            inflate={"field": "padding", "size": FOUR_MIB},
        ),
        Entry(
            "job-csr-3mib",
            "request.malformed",
            "csr_pem over the 2 MiB field limit",
            job={"job_id": "job-csr-3mib", "csr_pem": ""},
            inflate={"field": "csr_pem", "size": 3 * 1024 * 1024},
        ),
        Entry(
            "job-id-with-space",
            "request.malformed",
            "job id outside [A-Za-z0-9._:@+-]",
            job={"job_id": "job id with space", "csr_pem": base},
        ),
    ]


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for BMP text
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    raise TypeError(type(value).__name__)


def write(entries: list[Entry]) -> None:
    for folder in ("csr", "jobs"):
        shutil.rmtree(HERE / folder, ignore_errors=True)
        (HERE / folder).mkdir()
    lines = [
        "# The hostile-request corpus, written by make_corpus.py; read by tests/test_corpus.py.",
        "# Each [[entry]] is sent to BatchSigner.sign_batch and must be refused with `expect`.",
        "# csr: a file sent as csr_pem (read as `encoding`), with profile / days / san / job_id.",
        "# job: a file holding the whole raw job as JSON.",
        "# inflate: grow `field` to `size` characters at test time (too big to keep in git).",
        "# prior: a CSR file signed (and issued) first under the same job_id.",
        "",
        EXTRA_PROFILES,
    ]
    for entry in entries:
        record: dict[str, object] = {"name": entry.name}
        if entry.job is not None:
            path = f"jobs/{entry.name}.json"
            (HERE / path).write_text(json.dumps(entry.job, indent=2) + "\n", encoding="utf-8")
            record["job"] = path
        else:
            path = f"csr/{entry.name}{entry.suffix}"
            if isinstance(entry.csr, bytes):
                (HERE / path).write_bytes(entry.csr)
                record["encoding"] = "latin-1"
            else:
                assert entry.csr is not None
                (HERE / path).write_bytes(entry.csr.encode("utf-8"))
            record["csr"] = path
            record["profile"] = entry.profile
            if entry.days is not None:
                record["days"] = entry.days
            if entry.san:
                record["san"] = list(entry.san)
            if entry.job_id is not None:
                record["job_id"] = entry.job_id
        if entry.prior is not None:
            prior_path = f"csr/{entry.name}.prior.pem"
            (HERE / prior_path).write_bytes(entry.prior.encode("utf-8"))
            record["prior"] = prior_path
        if entry.inflate is not None:
            record["inflate"] = entry.inflate
        record["expect"] = entry.expect
        record["why"] = entry.why
        lines.append("[[entry]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in record.items())
        lines.append("")
    (HERE / "MANIFEST.toml").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    write(entries())

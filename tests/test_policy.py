"""The CSR policy, one refusal at a time: each asserts the stable code and the field it names."""

from __future__ import annotations

import contextlib
import ipaddress
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, ObjectIdentifier

from core.errors import RefusalCode as Code
from core.errors import Rejected
from core.messages import SignRequest
from tests import hostile_csrs as hostile
from tests.csrs import job, make_csr
from worker.authority import SigningAuthority
from worker.issuance import BatchSigner
from worker.policy import CheckedRequest, check_request
from worker.profiles import DEFAULT_PROFILES_TOML, ProfileSet

ROOT_CN = "Alice Ltd Root CA"
INTERMEDIATE_CN = "Alice Ltd Intermediate CA"
CA_NAMES = frozenset({ROOT_CN, INTERMEDIATE_CN})
PROFILES = ProfileSet.from_toml(DEFAULT_PROFILES_TOML)
NO_WILDCARDS = ProfileSet.from_toml(
    DEFAULT_PROFILES_TOML
    + """
[profiles.server_no_wildcards]
common_name = "fqdn"
san_types = ["DNS", "IP"]
san_from_common_name = true
wildcards = false
"""
)
PRIVATE_OID = ObjectIdentifier("1.3.6.1.4.1.55555.1.1")  # an arc no CA knows


@cache
def rsa_key(bits: int = 2048, exponent: int = 65537) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(exponent, bits)


@cache
def dsa_key() -> dsa.DSAPrivateKey:
    return dsa.generate_private_key(2048)


def request(csr_pem: str, profile: str = "server_cert", **fields: object) -> SignRequest:
    return SignRequest.model_validate(
        {"job_id": "policy-test", "csr_pem": csr_pem, "profile": profile, **fields}
    )


def accepted(
    csr_pem: str, profile: str = "server_cert", profiles: ProfileSet = PROFILES, **fields: object
) -> CheckedRequest:
    return check_request(request(csr_pem, profile, **fields), profiles, CA_NAMES)


def refused(
    csr_pem: str,
    code: Code,
    names: str,
    profile: str = "server_cert",
    profiles: ProfileSet = PROFILES,
    **fields: object,
) -> Rejected:
    """Assert the request is refused with `code` and a message that mentions `names`."""
    with pytest.raises(Rejected) as caught:
        check_request(request(csr_pem, profile, **fields), profiles, CA_NAMES)
    assert caught.value.code is code, caught.value.message
    assert names in caught.value.message, caught.value.message
    return caught.value


def key_usage(*, key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
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


def test_the_ca_fixture_has_the_names_these_tests_guard(authority: SigningAuthority) -> None:
    assert authority.common_names == CA_NAMES


def test_a_plain_server_request_is_accepted() -> None:
    checked = accepted(make_csr("www.example.com"))
    assert checked.days == 375
    assert checked.subject_alternative_names == (x509.DNSName("www.example.com"),)


# --- proof of possession and the CSR's encoding ----------------------------------------------


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
def test_a_tampered_signature_fails_proof_of_possession(key_kind: str) -> None:
    key = rsa_key() if key_kind == "rsa" else None
    csr = hostile.with_tampered_signature(make_csr("www.example.com", key=key))
    refused(csr, Code.CSR_BAD_SIGNATURE, "signature")


def test_a_csr_signed_by_another_key_fails_proof_of_possession() -> None:
    info, algorithm, _ = hostile.split_request(hostile.pem_to_der(make_csr(key=rsa_key())))
    other = rsa.generate_private_key(65537, 2048)
    refused(
        hostile.to_pem(hostile.resign(info, algorithm, other)), Code.CSR_BAD_SIGNATURE, "signature"
    )


def test_a_csr_over_64_kib_is_refused_before_parsing() -> None:
    bulk = x509.UnrecognizedExtension(PRIVATE_OID, b"\x04\x83\x01\x20\x00" + bytes(0x12000))
    csr = make_csr("www.example.com", extensions=[(bulk, False)])
    assert len(csr) > 64 * 1024
    refused(csr, Code.CSR_TOO_LARGE, "bytes")


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
        "-----BEGIN CERTIFICATE REQUEST-----\n!!!! not base64 !!!!\n-----END CERTIFICATE REQUEST-----\n",
        "-----BEGIN CERTIFICATE REQUEST-----\n",
    ],
    ids=["text", "bare-base64", "base64-garbage", "armour-only"],
)
def test_text_that_is_not_a_pem_csr_is_malformed(text: str) -> None:
    refused(text, Code.CSR_MALFORMED, "PEM")


def test_a_certificate_label_is_not_a_csr() -> None:
    der = hostile.pem_to_der(make_csr("www.example.com"))
    refused(hostile.to_pem(der, "CERTIFICATE"), Code.CSR_MALFORMED, "CERTIFICATE REQUEST")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_der_is_malformed(keep: float) -> None:
    refused(hostile.truncated(make_csr("www.example.com"), keep), Code.CSR_MALFORMED, "DER")


def test_der_sent_as_text_is_malformed() -> None:
    der = hostile.pem_to_der(make_csr("www.example.com"))
    refused(der.decode("latin-1"), Code.CSR_MALFORMED, "PEM")


@pytest.mark.parametrize("version", [1, 2, 255])
def test_a_csr_version_other_than_v1_is_malformed(version: int) -> None:
    # RFC 2986 4.1: version is 0; cryptography raises InvalidVersion, not ValueError.
    csr = hostile.with_version(make_csr("www.example.com", key=rsa_key()), version, rsa_key())
    refused(csr, Code.CSR_MALFORMED, "DER")


# --- the subject's key ------------------------------------------------------------------------


def test_rsa_1024_is_too_small() -> None:
    refused(make_csr(key=rsa_key(1024)), Code.KEY_RSA_TOO_SMALL, "1024 bits")


def test_rsa_size_not_a_multiple_of_8_is_refused() -> None:
    key = rsa_key(2052)
    assert key.key_size == 2052
    refused(make_csr(key=key), Code.KEY_RSA_TOO_SMALL, "multiple of 8")


def test_rsa_above_8192_bits_is_refused() -> None:
    # A made-up 16384-bit modulus: the size check comes before the signature is looked at.
    csr = hostile.rsa_request(hostile.odd_modulus(16384), 65537)
    refused(csr, Code.KEY_RSA_TOO_SMALL, "16384 bits")


def test_rsa_exponent_3_is_refused() -> None:
    key = rsa_key(2048, 3)
    assert x509.load_pem_x509_csr(make_csr(key=key).encode()).is_signature_valid
    refused(make_csr(key=key), Code.KEY_RSA_EXPONENT, "exponent 3")


def test_rsa_exponent_1_is_refused_although_its_signature_verifies() -> None:
    # With e = 1 the "signature" is the PKCS#1 v1.5 encoded digest itself: anyone can make one,
    # so proof of possession proves nothing and the key check has to come first.
    modulus = rsa_key().public_key().public_numbers().n
    csr = hostile.rsa_request_with_exponent_one(modulus)
    # cryptography 50 and later refuse to load such a key at all; older ones verify it.
    with contextlib.suppress(ValueError):
        assert x509.load_pem_x509_csr(csr.encode()).is_signature_valid
    refused(csr, Code.KEY_RSA_EXPONENT, "exponent 1")


@pytest.mark.parametrize("exponent", [0, 2, 4, 65536, 65538, 2**256 + 1, 2**300 + 1])
def test_even_or_out_of_range_rsa_exponents_are_refused(exponent: int) -> None:
    # No private key exists for an even exponent, so the signature is a dummy: the key check
    # must refuse before the signature is checked.
    csr = hostile.rsa_request(rsa_key().public_key().public_numbers().n, exponent)
    refused(csr, Code.KEY_RSA_EXPONENT, f"exponent {exponent}")


def test_ec_on_secp256k1_is_refused() -> None:
    refused(make_csr(key=ec.generate_private_key(ec.SECP256K1())), Code.KEY_EC_CURVE, "secp256k1")


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
def test_nist_curves_are_accepted(curve: ec.EllipticCurve) -> None:
    accepted(make_csr(key=ec.generate_private_key(curve)))


def test_a_dsa_key_is_refused() -> None:
    refused(make_csr(key=dsa_key()), Code.KEY_UNSUPPORTED, "DSA")


def test_an_ed448_key_is_refused() -> None:
    refused(
        hostile.edwards_request(ed448.Ed448PrivateKey.generate()), Code.KEY_UNSUPPORTED, "Ed448"
    )


def test_an_unknown_key_algorithm_is_refused() -> None:
    csr = hostile.request_with_unknown_key_algorithm(rsa_key())
    refused(csr, Code.KEY_UNSUPPORTED, "subjectPublicKeyInfo")


def test_an_ed25519_key_is_accepted() -> None:
    checked = accepted(hostile.edwards_request(ed25519.Ed25519PrivateKey.generate()))
    assert isinstance(checked.csr.public_key(), ed25519.Ed25519PublicKey)


def test_rsa_2048_and_4096_are_accepted() -> None:
    accepted(make_csr(key=rsa_key()))
    accepted(make_csr(key=rsa_key(4096)))


# cryptography warns when it meets a value longer than RFC 5280 allows; that is the point here.
over_long = pytest.mark.filterwarnings("ignore:Attribute's length must be")


# --- the subject -------------------------------------------------------------------------------


def test_a_subject_without_cn_is_refused() -> None:
    csr = make_csr(None, extra_attributes=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bob")])
    refused(csr, Code.SUBJECT_CN_MISSING, "commonName (CN)", profile="usr_cert")


def test_an_empty_subject_is_refused() -> None:
    refused(make_csr(None), Code.SUBJECT_CN_MISSING, "commonName (CN)", profile="usr_cert")


def test_two_cns_are_refused() -> None:
    csr = make_csr(
        "www.example.com",
        extra_attributes=[x509.NameAttribute(NameOID.COMMON_NAME, "other.example.com")],
    )
    refused(csr, Code.SUBJECT_CN_REPEATED, "more than one commonName (CN)")


@pytest.mark.parametrize(
    "common_name",
    [
        ROOT_CN,
        INTERMEDIATE_CN,
        ROOT_CN.lower(),
        INTERMEDIATE_CN.upper(),
        "aLiCe LtD rOoT cA",
        ROOT_CN + " ",
        "Alice  Ltd  Root  CA",
        "\uff21lice Ltd Root CA",  # FULLWIDTH LATIN CAPITAL LETTER A
    ],
    ids=[
        "root",
        "intermediate",
        "lower",
        "upper",
        "mixed",
        "trailing-space",
        "double-space",
        "fullwidth",
    ],
)
@pytest.mark.parametrize("profile", ["usr_cert", "server_cert"])
def test_a_cn_equal_to_a_ca_cn_is_refused(common_name: str, profile: str) -> None:
    refused(make_csr(common_name), Code.SUBJECT_CN_IS_CA, "CN", profile=profile)


def test_a_ca_cn_inside_a_longer_cn_is_fine_for_a_client() -> None:
    accepted(make_csr("Bob of Alice Ltd Root CA team"), profile="usr_cert")


@pytest.mark.parametrize(
    "common_name",
    [
        "localhost",
        "under_score.example.com",
        "www-.example.com",
        "-www.example.com",
        "www.example-.com",
        "www example.com",
        " www.example.com",
        "www..example.com",
        "www.example.123",
        "b\u00fccher.example",  # an IDN must arrive as its xn-- A-label
        "www.\u212aexample.com",  # KELVIN SIGN: lower-cases to an ASCII k
        "www.example.com,CN=evil.example.com",
    ],
    ids=[
        "single-label",
        "underscore",
        "trailing-dash",
        "leading-dash",
        "dash-before-dot",
        "inner-space",
        "leading-space",
        "empty-label",
        "numeric-tld",
        "idn-u-label",
        "kelvin-sign",
        "comma-equals",
    ],
)
def test_a_server_cn_that_is_not_an_fqdn_is_refused(common_name: str) -> None:
    refused(make_csr(common_name), Code.SUBJECT_CN_NOT_FQDN, "CN")


@pytest.mark.parametrize("address", ["192.0.2.10", "2001:db8::1"])
def test_a_server_cn_that_is_an_ip_address_is_accepted_and_becomes_an_ip_san(
    address: str,
) -> None:
    checked = accepted(make_csr(address))
    assert checked.subject_alternative_names == (x509.IPAddress(ipaddress.ip_address(address)),)


def test_an_idn_a_label_cn_is_accepted() -> None:
    accepted(make_csr("xn--bcher-kva.example"))


@pytest.mark.parametrize(
    "character",
    ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\u200b", "\u202e", "\u2028", "\u2029"],
    ids=["NUL", "TAB", "LF", "CR", "ESC", "DEL", "NEL", "ZWSP", "RLO", "LSEP", "PSEP"],
)
@pytest.mark.parametrize("where", ["CN", "O"])
def test_control_characters_in_the_subject_are_refused(character: str, where: str) -> None:
    value = f"bob{character}smith"
    if where == "CN":
        csr = make_csr(value)
    else:
        organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, value)
        csr = make_csr("bob", extra_attributes=[organization])
    refused(csr, Code.SUBJECT_BAD_CHARACTER, f"subject {where} contains", profile="usr_cert")


def test_an_email_address_attribute_with_a_newline_is_refused() -> None:
    email = x509.NameAttribute(NameOID.EMAIL_ADDRESS, "bob@example.com\n/CN=evil")
    csr = make_csr("bob", extra_attributes=[email])
    refused(csr, Code.SUBJECT_BAD_CHARACTER, "emailAddress", profile="usr_cert")


@pytest.mark.parametrize(
    "organization",
    [
        "Alice Ltd/CN=Alice Ltd Root CA",
        "Alice / CN = www.example.com",
        "x/emailAddress=a@b.c",
        "/O=Eve",
    ],
)
def test_a_slash_attribute_forgery_in_o_is_refused(organization: str) -> None:
    csr = make_csr(
        "www.example.com",
        extra_attributes=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)],
    )
    refused(csr, Code.SUBJECT_BAD_CHARACTER, "subject O contains '/NAME='")


def test_a_plain_slash_in_o_is_accepted() -> None:
    organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Alice R/D Ltd")
    accepted(make_csr("www.example.com", extra_attributes=[organization]))


@over_long
def test_a_65_character_cn_is_too_long() -> None:
    csr = make_csr(None, extra_attributes=[hostile.common_name("a" * 65)])
    refused(csr, Code.SUBJECT_TOO_LONG, "subject CN has 65 characters", profile="usr_cert")


def test_a_64_character_cn_is_accepted_for_a_client() -> None:
    accepted(make_csr("a" * 64), profile="usr_cert")


@over_long
def test_a_65_character_o_is_too_long() -> None:
    organization = hostile.name_attribute(NameOID.ORGANIZATION_NAME, "o" * 65)
    refused(
        make_csr("bob", extra_attributes=[organization]),
        Code.SUBJECT_TOO_LONG,
        "subject O has 65 characters",
        profile="usr_cert",
    )


@over_long
def test_an_empty_cn_is_refused() -> None:
    csr = make_csr(None, extra_attributes=[hostile.common_name("")])
    refused(csr, Code.SUBJECT_BAD_CHARACTER, "subject CN is empty", profile="usr_cert")


@pytest.mark.parametrize(
    "value",
    [
        hostile.tlv(hostile.TAG_UTF8_STRING, b"www.\xffexample.com"),  # not UTF-8
        hostile.der_integer(7),  # not a string type at all
        hostile.der_sequence(),
    ],
    ids=["invalid-utf8", "integer", "sequence"],
)
def test_a_subject_value_that_does_not_decode_is_malformed(value: bytes) -> None:
    # cryptography decodes the subject lazily and raises ValueError or KeyError there.
    csr = hostile.request_with_subject(rsa_key(), [(hostile.OID_COMMON_NAME, value)])
    refused(csr, Code.CSR_MALFORMED, "subject")


@pytest.mark.parametrize(
    "value",
    [
        hostile.tlv(0x04, b"bob"),  # OCTET STRING: cryptography decodes it as text
        hostile.tlv(0x12, b"12345"),  # NumericString
        hostile.tlv(0x1A, b"bob"),  # VisibleString
    ],
    ids=["octet-string", "numeric-string", "visible-string"],
)
def test_a_subject_value_that_is_not_a_directory_string_is_refused(value: bytes) -> None:
    # RFC 5280 4.1.2.4; the subject is copied into the certificate byte for byte.
    csr = hostile.request_with_subject(rsa_key(), [(hostile.OID_COMMON_NAME, value)])
    refused(csr, Code.SUBJECT_BAD_CHARACTER, "subject CN is not a text value", profile="usr_cert")


@pytest.mark.parametrize(
    "value",
    [
        hostile.tlv(0x0C, "b\u00f6b".encode()),  # UTF8String
        hostile.tlv(0x13, b"bob"),  # PrintableString
        hostile.tlv(0x1E, "b\u00f6b".encode("utf-16-be")),  # BMPString
        hostile.tlv(0x1C, "bob".encode("utf-32-be")),  # UniversalString
        hostile.tlv(0x16, b"bob@example.com"),  # IA5String
    ],
    ids=["utf8", "printable", "bmp", "universal", "ia5"],
)
def test_directory_string_types_are_accepted(value: bytes) -> None:
    csr = hostile.request_with_subject(rsa_key(), [(hostile.OID_COMMON_NAME, value)])
    accepted(csr, "usr_cert")


# --- requested extensions -----------------------------------------------------------------------


def test_ca_true_is_refused() -> None:
    csr = make_csr(extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])
    refused(csr, Code.CSR_CA_REQUESTED, "basicConstraints CA:TRUE")


def test_a_pathlen_is_refused() -> None:
    csr = make_csr(extensions=[(x509.BasicConstraints(ca=True, path_length=0), True)])
    refused(csr, Code.CSR_CA_REQUESTED, "pathlen")


def test_a_pathlen_with_ca_false_is_refused_as_malformed() -> None:
    # basicConstraints { cA FALSE, pathLenConstraint 0 }: X.509 forbids it and cryptography
    # will not represent it, so the requested extensions fail to parse.
    broken = x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x02\x01\x00")
    refused(make_csr(extensions=[(broken, False)]), Code.CSR_MALFORMED, "extensions")


@pytest.mark.parametrize("usage", ["keyCertSign", "cRLSign"])
def test_ca_key_usages_are_refused(usage: str) -> None:
    requested = key_usage(key_cert_sign=usage == "keyCertSign", crl_sign=usage == "cRLSign")
    refused(make_csr(extensions=[(requested, True)]), Code.CSR_CA_REQUESTED, usage)


def test_ca_false_is_accepted() -> None:
    csr = make_csr(extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)])
    accepted(csr)


def test_an_unknown_critical_extension_is_refused() -> None:
    unknown = x509.UnrecognizedExtension(PRIVATE_OID, b"\x05\x00")
    refused(
        make_csr(extensions=[(unknown, True)]),
        Code.CSR_CRITICAL_EXTENSION,
        PRIVATE_OID.dotted_string,
    )


def test_a_known_but_unhandled_critical_extension_is_refused() -> None:
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
    )
    refused(
        make_csr(extensions=[(constraints, True)]),
        Code.CSR_CRITICAL_EXTENSION,
        ExtensionOID.NAME_CONSTRAINTS.dotted_string,
    )


def test_requested_extensions_other_than_the_san_are_not_copied(signer: BatchSigner) -> None:
    unknown = x509.UnrecognizedExtension(PRIVATE_OID, b"\x0c\x05hello")
    code_signing = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
    )
    csr = make_csr(
        "www.example.com",
        extensions=[(unknown, False), (code_signing, False), (constraints, False)],
    )
    (result,) = signer.sign_batch([job("ignored-extensions", csr)])
    assert result.status == "issued", result.message
    assert result.certificate_pem is not None
    certificate = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    oids = {extension.oid for extension in certificate.extensions}
    assert PRIVATE_OID not in oids
    assert ExtensionOID.NAME_CONSTRAINTS not in oids
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_x400_address_san_is_malformed() -> None:
    # cryptography raises UnsupportedGeneralNameType, not ValueError, for x400Address.
    csr = hostile.request_with_raw_san(rsa_key(), "www.example.com", [hostile.tlv(0xA3, b"")])
    refused(csr, Code.CSR_MALFORMED, "extensions")


# --- subjectAltName ---------------------------------------------------------------------------


def test_a_wildcard_san_is_refused_by_a_profile_without_wildcards() -> None:
    csr = make_csr("www.example.com", san=[x509.DNSName("*.example.com")])
    refused(
        csr,
        Code.SAN_WILDCARD,
        "SAN DNS:*.example.com",
        profile="server_no_wildcards",
        profiles=NO_WILDCARDS,
    )


def test_a_wildcard_san_from_the_request_is_refused_by_a_profile_without_wildcards() -> None:
    refused(
        make_csr("www.example.com"),
        Code.SAN_WILDCARD,
        "SAN DNS:*.example.com",
        profile="server_no_wildcards",
        profiles=NO_WILDCARDS,
        san=["DNS:*.example.com"],
    )


def test_a_wildcard_cn_is_not_an_fqdn_without_wildcards() -> None:
    refused(
        make_csr("*.example.com"),
        Code.SUBJECT_CN_NOT_FQDN,
        "CN",
        profile="server_no_wildcards",
        profiles=NO_WILDCARDS,
    )


@pytest.mark.parametrize("profile", ["server_cert", "tls_server"])
def test_the_server_profiles_allow_wildcards(profile: str) -> None:
    checked = accepted(make_csr("*.example.com", san=[x509.DNSName("*.example.com")]), profile)
    assert checked.subject_alternative_names == (x509.DNSName("*.example.com"),)


def test_usr_cert_refuses_a_wildcard_dns_name() -> None:
    refused(
        make_csr("alice@example.com", san=[x509.DNSName("*.example.com")]),
        Code.SAN_WILDCARD,
        "SAN DNS:*.example.com",
        profile="usr_cert",
    )


@pytest.mark.parametrize("name", ["*.com", "www.*.example.com", "*example.com", "*.*.example.com"])
def test_misplaced_wildcards_are_malformed(name: str) -> None:
    refused(make_csr("www.example.com", san=[x509.DNSName(name)]), Code.SAN_MALFORMED, "SAN DNS")


@pytest.mark.parametrize(
    ("profile", "name", "shown"),
    [
        (
            "server_cert",
            x509.UniformResourceIdentifier("https://www.example.com/"),
            "UniformResourceIdentifier",
        ),
        ("server_cert", x509.RFC822Name("bob@example.com"), "RFC822Name"),
        (
            "tls_server",
            x509.UniformResourceIdentifier("spiffe://example.com/x"),
            "UniformResourceIdentifier",
        ),
        (
            "usr_cert",
            x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])),
            "DirectoryName",
        ),
        ("usr_cert", x509.IPAddress(ipaddress.ip_address("192.0.2.1")), "IPAddress"),
        ("usr_cert", x509.RegisteredID(PRIVATE_OID), "RegisteredID"),
        ("usr_cert", x509.OtherName(PRIVATE_OID, b"\x0c\x01x"), "OtherName"),
    ],
    ids=[
        "uri-server",
        "email-server",
        "uri-tls",
        "dirname-usr",
        "ip-usr",
        "rid-usr",
        "othername-usr",
    ],
)
def test_a_san_type_the_profile_does_not_allow_is_refused(
    profile: str, name: x509.GeneralName, shown: str
) -> None:
    csr = make_csr("www.example.com", san=[name])
    refused(csr, Code.SAN_TYPE_NOT_ALLOWED, f"SAN {shown}", profile=profile)


@pytest.mark.parametrize(
    ("profile", "text"),
    [
        ("server_cert", "URI:https://www.example.com/"),
        ("server_cert", "email:bob@example.com"),
        ("usr_cert", "IP:192.0.2.1"),
    ],
)
def test_a_san_type_not_allowed_from_the_request_is_refused(profile: str, text: str) -> None:
    refused(
        make_csr("www.example.com"), Code.SAN_TYPE_NOT_ALLOWED, "SAN", profile=profile, san=[text]
    )


@pytest.mark.parametrize(
    ("profile", "text"),
    [
        ("server_cert", "www.example.com"),
        ("server_cert", "FOO:bar"),
        ("server_cert", "DNS:"),
        ("server_cert", "DNS:not a name"),
        ("server_cert", "DNS:under_score.example.com"),
        ("server_cert", "DNS:" + "a" * 64 + ".example.com"),
        ("server_cert", "DNS:" + "a." * 127 + "com"),
        ("server_cert", "DNS:b\u00fccher.example"),
        ("server_cert", "DNS:www.\u212aexample.com"),
        ("server_cert", "IP:999.1.1.1"),
        ("server_cert", "IP:192.0.2.0/24"),
        ("server_cert", "IP:fe80::1%eth0"),
        ("usr_cert", "email:nobody"),
        ("usr_cert", "email:"),
        ("usr_cert", "email:@"),
        ("usr_cert", "email:bob@localhost"),
        ("usr_cert", "email:b\u00f6b@example.com"),
        ("usr_cert", "URI:relative/path"),
        ("usr_cert", "URI:https://b\u00fccher.example/"),
        ("usr_cert", "URI:https://example.com/a b"),
    ],
)
def test_malformed_san_text_is_refused(profile: str, text: str) -> None:
    refused(make_csr("bob.example.com"), Code.SAN_MALFORMED, "SAN", profile=profile, san=[text])


@pytest.mark.parametrize(
    ("profile", "general_name"),
    [
        ("server_cert", hostile.tlv(0x82, "www.\u212aexample.com".encode())),  # KELVIN SIGN
        ("server_cert", hostile.tlv(0x87, bytes([192, 0, 2, 0, 255, 255, 255, 0]))),  # a network
        ("usr_cert", hostile.tlv(0x86, "https://b\u00fccher.example/".encode())),
    ],
    ids=["kelvin-dns", "ip-network", "utf8-uri"],
)
def test_a_san_from_the_csr_that_no_certificate_could_carry_is_malformed(
    profile: str, general_name: bytes
) -> None:
    # These used to pass policy and blow up in build_tbs, after the serial was reserved.
    csr = hostile.request_with_raw_san(rsa_key(), "www.example.com", [general_name])
    refused(csr, Code.SAN_MALFORMED, "SAN", profile=profile)


def test_a_control_character_in_a_csr_san_is_malformed() -> None:
    csr = hostile.request_with_raw_san(rsa_key(), "bob", [hostile.tlv(0x81, b"bob@example.com\n")])
    refused(csr, Code.SAN_MALFORMED, "control character", profile="usr_cert")


def test_tls_server_without_a_san_is_refused() -> None:
    refused(make_csr("www.example.com"), Code.SAN_REQUIRED, "subjectAltName", profile="tls_server")


def test_tls_server_with_a_san_is_accepted() -> None:
    checked = accepted(make_csr("www.example.com"), "tls_server", san=["DNS:www.example.com"])
    assert checked.subject_alternative_names == (x509.DNSName("www.example.com"),)


def test_sans_from_the_csr_and_the_request_are_merged_in_order_without_duplicates() -> None:
    csr = make_csr(
        "www.example.com",
        san=[x509.DNSName("www.example.com"), x509.DNSName("api.example.com")],
    )
    checked = accepted(
        csr, san=["DNS:api.example.com", "IP:192.0.2.7", "DNS:cdn.example.com", "IP:192.0.2.7"]
    )
    assert checked.subject_alternative_names == (
        x509.DNSName("www.example.com"),
        x509.DNSName("api.example.com"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.DNSName("cdn.example.com"),
    )


def test_a_server_csr_without_san_gets_its_cn_as_a_dns_san() -> None:
    checked = accepted(make_csr("WWW.Example.COM"))
    assert checked.subject_alternative_names == (x509.DNSName("www.example.com"),)


def test_a_client_csr_without_san_gets_no_san() -> None:
    assert accepted(make_csr("bob@example.com"), "usr_cert").subject_alternative_names == ()


def test_the_san_from_the_cn_is_in_the_issued_certificate(signer: BatchSigner) -> None:
    (result,) = signer.sign_batch([job("cn-as-san", make_csr("Host.Example.com"))])
    assert result.status == "issued" and result.certificate_pem is not None
    certificate = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [x509.DNSName("host.example.com")]


# --- the request --------------------------------------------------------------------------------


def test_an_unknown_profile_is_refused() -> None:
    error = refused(make_csr(), Code.PROFILE_UNKNOWN, "'ocsp'", profile="ocsp")
    assert "server_cert" in error.message


@pytest.mark.parametrize("days", [0, -1, -(10**9)])
def test_days_that_are_not_positive_are_refused(days: int) -> None:
    refused(
        make_csr(), Code.VALIDITY_INVALID, f"days must be a positive number, not {days}", days=days
    )


@pytest.mark.parametrize(
    ("profile", "days"), [("server_cert", 826), ("usr_cert", 10**9), ("tls_server", 399)]
)
def test_days_beyond_the_profiles_maximum_are_refused(profile: str, days: int) -> None:
    refused(
        make_csr(),
        Code.VALIDITY_TOO_LONG,
        f"days {days} exceeds the {profile} profile's maximum",
        profile=profile,
        days=days,
        san=["DNS:www.example.com"],
    )


def test_days_at_the_maximum_are_accepted() -> None:
    assert accepted(make_csr(), days=825).days == 825


def test_days_are_checked_before_the_csr() -> None:
    refused("not a csr", Code.VALIDITY_INVALID, "days", days=0)


# --- through the signer: what only the whole path can refuse ----------------------------------


def test_a_job_id_reused_for_a_different_csr_is_refused(signer: BatchSigner) -> None:
    (first,) = signer.sign_batch([job("reused", make_csr("one.example.com"))])
    assert first.status == "issued"
    (second,) = signer.sign_batch([job("reused", make_csr("two.example.com"))])
    assert second.status == "refused"
    assert second.code == Code.JOB_ID_REUSED
    assert "'reused'" in (second.message or "")
    assert signer.store.count_issued() == 1


def test_a_job_id_reused_for_a_different_profile_is_refused(signer: BatchSigner) -> None:
    csr = make_csr("one.example.com")
    signer.sign_batch([job("reused-profile", csr)])
    (second,) = signer.sign_batch([job("reused-profile", csr, "usr_cert")])
    assert second.code == Code.JOB_ID_REUSED


def test_the_same_job_redelivered_gets_the_same_certificate(signer: BatchSigner) -> None:
    message = job("redelivered", make_csr("one.example.com"))
    (first,) = signer.sign_batch([message])
    (second,) = signer.sign_batch([message])
    assert second.status == "issued"
    assert (second.serial, second.certificate_pem) == (first.serial, first.certificate_pem)
    assert signer.store.count_issued() == 1


def test_a_job_id_first_refused_then_reused_is_refused(signer: BatchSigner) -> None:
    (first,) = signer.sign_batch([job("refused-then-reused", make_csr("localhost"))])
    assert first.code == Code.SUBJECT_CN_NOT_FQDN
    (second,) = signer.sign_batch([job("refused-then-reused", make_csr("ok.example.com"))])
    assert second.code == Code.JOB_ID_REUSED
    assert signer.store.count_issued() == 0


# Large, yet under the message ceiling (a message over it is answered batch.too_large:
# tests/test_bounds.py).
FOUR_MIB = 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"csr_pem": None}, "csr_pem"),
        ({"days": "30"}, "days"),
        ({"days": 1.5}, "days"),
        ({"days": True}, "days"),
        ({"san": "DNS:www.example.com"}, "san"),
        ({"san": [""]}, "san.0"),
        ({"profile": "../../etc/passwd"}, "profile"),
        ({"schema_version": 2}, "schema_version"),
        ({"csr_pem": ""}, "csr_pem"),
        ({"csr_pem": "x" * (3 * 1024 * 1024)}, "csr_pem"),
        ({"unexpected": 1}, "unexpected"),
        ({"padding": "A" * FOUR_MIB}, "padding"),
    ],
    ids=[
        "missing-csr",
        "days-string",
        "days-float",
        "days-bool",
        "san-not-list",
        "san-empty-item",
        "profile-path",
        "schema-2",
        "csr-empty",
        "csr-3mib",
        "extra-field",
        "extra-field-4mib",
    ],
)
def test_a_malformed_job_is_refused_by_the_signer(
    signer: BatchSigner, fields: dict[str, object], names: str
) -> None:
    raw = {**job("malformed", make_csr()), **fields}
    if raw["csr_pem"] is None:
        del raw["csr_pem"]
    good = job("good-neighbour", make_csr("good.example.com"))
    bad, neighbour = signer.sign_batch([raw, good])
    assert (bad.job_id, bad.status, bad.code) == ("malformed", "refused", Code.JOB_MALFORMED)
    assert (bad.message or "").startswith(names)
    assert len(bad.message or "") < 300, "the refusal must not echo the input"
    assert neighbour.status == "issued"
    assert signer.store.count_issued() == 1


def test_a_malformed_duplicate_in_the_batch_does_not_sink_the_valid_job(
    signer: BatchSigner,
) -> None:
    valid = job("twice", make_csr("twice.example.com"))
    results = signer.sign_batch([valid, {"job_id": "twice", "csr_pem": 5}])
    assert [result.job_id for result in results] == ["twice"]
    assert results[0].status == "issued"

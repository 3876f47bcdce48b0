"""The tls_server profile's names to the Baseline Requirements, one refusal at a time (each with
its stable code, through the whole signer on a real Redis), and beside each the same request
under a copy of the profile with that policy check off, to show whether pkilint's BR linter
alone would have caught it (lint before sign is the backstop, the policy the first line)."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from core.errors import RefusalCode as Code
from core.messages import JobResult
from store.results import ResultsStore
from tests.csrs import job, make_csr
from worker import policy
from worker.authority import SigningAuthority
from worker.issuance import BatchSigner
from worker.profiles import SUBJECT_ATTRIBUTE_OIDS, ProfileSet

A = x509.NameAttribute


def dns(*names: str) -> list[x509.GeneralName]:
    return [x509.DNSName(name) for name in names]


def ip(text: str) -> x509.GeneralName:
    return x509.IPAddress(ipaddress.ip_address(text))


@dataclasses.dataclass(frozen=True)
class Case:
    """A request tls_server refuses; `relax` names what to switch off to see the linter alone
    (profile settings, or policy functions replaced by no-ops)."""

    code: Code
    named: str
    csr: Callable[[], str]
    relax: dict[str, Any] = dataclasses.field(default_factory=dict)
    disable: Sequence[str] = ()
    lint_finding: str | None = None  # None: the linter alone does not catch it
    san: Sequence[str] = ()


CASES: dict[str, Case] = {
    # The first example, one fault at a time: O and L in a DV subject...
    "google-o-and-l": Case(
        Code.SUBJECT_ATTRIBUTE_NOT_ALLOWED,
        "subject O",
        lambda: make_csr(
            "www.google.com",
            extra_attributes=[
                A(NameOID.ORGANIZATION_NAME, "Google LLC"),
                A(NameOID.LOCALITY_NAME, "Mountain View"),
            ],
            san=dns("www.google.com"),
        ),
        relax={"subject_attributes": list(SUBJECT_ATTRIBUTE_OIDS)},
        lint_finding="cabf.serverauth.dv.unknown_attribute_present",
    ),
    # ... a CN that is none of the SANs ...
    "cn-not-in-san": Case(
        Code.SUBJECT_CN_NOT_IN_SAN,
        "subject CN 'www.google.com'",
        lambda: make_csr("www.google.com", san=dns("www.example.com")),
        relax={"common_name_in_san": False},
        lint_finding="cabf.serverauth.subscriber_common_name_unknown_source",
    ),
    # ... an internal domain name and an internal IP address.
    "printer-local": Case(
        Code.SAN_INTERNAL_NAME,
        "SAN DNS:printer.local",
        lambda: make_csr("www.example.com", san=dns("www.example.com", "printer.local")),
        relax={"public_names": False},
        lint_finding="cabf.internal_domain_name",
    ),
    "ip-10-0-0-1": Case(
        Code.SAN_IP_NOT_PUBLIC,
        "SAN IP:10.0.0.1",
        lambda: make_csr("www.example.com", san=[*dns("www.example.com"), ip("10.0.0.1")]),
        relax={"public_names": False},
        lint_finding="cabf.internal_ip_address",
    ),
    "host-internal": Case(
        Code.SAN_INTERNAL_NAME,
        "'internal'",
        lambda: make_csr("www.example.com", san=dns("www.example.com", "host.internal")),
        relax={"public_names": False},
        lint_finding="cabf.internal_domain_name",
    ),
    "lan": Case(
        Code.SAN_INTERNAL_NAME,
        "'lan'",
        lambda: make_csr("www.example.com", san=dns("www.example.com", "nas.lan")),
        relax={"public_names": False},
        lint_finding="cabf.internal_domain_name",
    ),
    "corp": Case(
        Code.SAN_INTERNAL_NAME,
        "'corp'",
        lambda: make_csr("www.example.com", san=dns("www.example.com", "mail.corp")),
        relax={"public_names": False},
        lint_finding="cabf.internal_domain_name",
    ),
    # home.arpa (RFC 8375) is in the public suffix list, so pkilint takes it for public.
    "home-arpa": Case(
        Code.SAN_INTERNAL_NAME,
        "'arpa'",
        lambda: make_csr("www.example.com", san=dns("www.example.com", "router.home.arpa")),
        relax={"public_names": False},
        lint_finding=None,
    ),
    "loopback": Case(
        Code.SAN_IP_NOT_PUBLIC,
        "loopback",
        lambda: make_csr("www.example.com", san=[*dns("www.example.com"), ip("127.0.0.1")]),
        relax={"public_names": False},
        lint_finding="cabf.internal_ip_address",
    ),
    "ipv6-link-local": Case(
        Code.SAN_IP_NOT_PUBLIC,
        "link-local",
        lambda: make_csr("www.example.com", san=[*dns("www.example.com"), ip("fe80::1")]),
        relax={"public_names": False},
        lint_finding="cabf.internal_ip_address",
    ),
    "cgnat": Case(
        Code.SAN_IP_NOT_PUBLIC,
        "RFC 6598",
        lambda: make_csr("www.example.com", san=[*dns("www.example.com"), ip("100.64.0.1")]),
        relax={"public_names": False},
        lint_finding="cabf.internal_ip_address",
    ),
    "documentation-range": Case(
        Code.SAN_IP_NOT_PUBLIC,
        "SAN IP:192.0.2.1",
        lambda: make_csr("www.example.com", san=[*dns("www.example.com"), ip("192.0.2.1")]),
        relax={"public_names": False},
        lint_finding="cabf.internal_ip_address",
    ),
    "trailing-dot": Case(
        Code.SAN_TRAILING_DOT,
        "SAN DNS:www.example.com.",
        lambda: make_csr("www.example.com", san=dns("www.example.com", "www.example.com.")),
        relax={"public_names": False},
        disable=("check_dns_name",),
        lint_finding="cabf.serverauth.invalid_dnsname_syntax",
    ),
    "bad-a-label": Case(
        Code.SAN_MALFORMED,
        "xn--zz",
        lambda: make_csr("www.example.com", san=dns("www.example.com", "xn--zz.example.com")),
        disable=("check_dns_name",),
        lint_finding="cabf.serverauth.invalid_plabel_encoding",
    ),
    # pkilint has no public-suffix test for wildcards: the policy alone refuses *.co.uk.
    "wildcard-co-uk": Case(
        Code.SAN_WILDCARD_PUBLIC_SUFFIX,
        "'co.uk'",
        lambda: make_csr("www.example.com", san=dns("www.example.com", "*.co.uk")),
        disable=("check_wildcard_base",),
        lint_finding=None,
    ),
    "country-uk": Case(
        Code.SUBJECT_COUNTRY_INVALID,
        "'UK'",
        lambda: make_csr(
            "www.example.com",
            extra_attributes=[A(NameOID.COUNTRY_NAME, "UK")],
            san=dns("www.example.com"),
        ),
        disable=("check_country",),
        lint_finding="cabf.invalid_country_code",
    ),
    # pkilint has no limit on the number of names: the policy alone caps them.
    "1500-sans": Case(
        Code.SAN_TOO_MANY,
        "more than 100",
        lambda: make_csr(
            "www.example.com",
            san=dns("www.example.com", *(f"host{index}.example.com" for index in range(1499))),
        ),
        relax={"max_san": 2000},  # past the setting's own bound of 1000: no cap at all
        lint_finding=None,
    ),
}


def signer_with(
    authority: SigningAuthority, store: ResultsStore, **relax: Any
) -> tuple[BatchSigner, str]:
    """A signer offering tls_server with `relax` applied, under the name `tls_relaxed`."""
    tls = authority.profiles.get("tls_server")
    assert tls is not None
    relaxed = tls.model_copy(update={"name": "tls_relaxed", **relax})
    profiles = ProfileSet({"tls_server": tls, "tls_relaxed": relaxed})
    extended = dataclasses.replace(authority, profiles=profiles, _extensions={})
    return BatchSigner(extended, store), "tls_relaxed"


def sign_one(
    signer: BatchSigner, job_id: str, csr: str, profile: str, san: Sequence[str]
) -> JobResult:
    (result,) = signer.sign_batch([job(job_id, csr, profile, san=list(san))])
    return result


@pytest.mark.parametrize("name", CASES)
def test_tls_server_refuses(name: str, signer: BatchSigner, store: ResultsStore) -> None:
    case = CASES[name]
    result = sign_one(signer, f"br-{name}", case.csr(), "tls_server", case.san)
    assert (result.status, result.code) == ("refused", case.code), result.message
    assert case.named in (result.message or ""), result.message
    assert store.count_serials() == 0 and not store.pending_records()


@pytest.mark.parametrize("name", CASES)
def test_with_the_policy_check_off_the_linter_alone(
    name: str, authority: SigningAuthority, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same request with its policy check switched off: refused with lint.failed naming the
    pkilint finding, and nothing signed or reserved; or, for the cases whose `lint_finding` is
    None (router.home.arpa, *.co.uk, 1,500 names), issued: pkilint has no rule for them."""
    case = CASES[name]
    for function in case.disable:
        monkeypatch.setattr(policy, function, lambda *args: None)
    signer, profile = signer_with(authority, store, **case.relax)
    result = sign_one(signer, f"br-lint-{name}", case.csr(), profile, case.san)
    if case.lint_finding is None:
        assert result.status == "issued", result.message
        return
    assert (result.status, result.code) == ("refused", Code.LINT_FAILED), result.message
    assert case.lint_finding in (result.message or ""), result.message
    assert store.count_serials() == 0 and not store.pending_records()


def test_the_subject_is_written_in_the_baseline_order(
    signer: BatchSigner, authority: SigningAuthority, store: ResultsStore
) -> None:
    """A CSR with CN before C gets C then CN (BR 7.1.4.2); a profile listing them the other way
    round is refused by the linter (cabf.serverauth.invalid_rdn_order)."""
    csr = make_csr(
        None,
        extra_attributes=[
            A(NameOID.COMMON_NAME, "www.example.com"),
            A(NameOID.COUNTRY_NAME, "GB"),
        ],
        san=dns("www.example.com"),
    )
    result = sign_one(signer, "order", csr, "tls_server", [])
    assert result.status == "issued", result.message
    certificate = x509.load_pem_x509_certificate((result.certificate_pem or "").encode())
    assert [attribute.oid for attribute in certificate.subject] == [
        NameOID.COUNTRY_NAME,
        NameOID.COMMON_NAME,
    ]
    reversed_signer, profile = signer_with(authority, store, subject_attributes=["CN", "C"])
    wrong = sign_one(reversed_signer, "order-lint", csr, profile, [])
    assert wrong.code == Code.LINT_FAILED and "invalid_rdn_order" in (wrong.message or "")


def test_names_are_lower_cased_and_the_cn_follows(signer: BatchSigner) -> None:
    csr = make_csr("WWW.Example.COM", san=dns("WWW.Example.COM", "Api.Example.com"))
    result = sign_one(signer, "case", csr, "tls_server", [])
    assert result.status == "issued", result.message
    certificate = x509.load_pem_x509_certificate((result.certificate_pem or "").encode())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.com", "api.example.com"]
    (cn,) = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn.value == "www.example.com"


def test_a_public_wildcard_and_a_global_ip_are_issued(signer: BatchSigner) -> None:
    csr = make_csr(
        "*.example.com",
        san=[*dns("*.example.com", "example.co.uk"), ip("8.8.8.8"), ip("2001:4860:4860::8888")],
    )
    result = sign_one(signer, "public", csr, "tls_server", [])
    assert result.status == "issued", result.message


def test_the_san_cap_is_a_profile_setting(authority: SigningAuthority, store: ResultsStore) -> None:
    names = dns(*(f"host{index}.example.com" for index in range(150)))
    csr = make_csr("host0.example.com", san=names)
    at_200, profile = signer_with(authority, store, max_san=200)
    assert sign_one(at_200, "cap-200", csr, profile, []).status == "issued"
    capped = sign_one(at_200, "cap-100", csr, "tls_server", [])
    assert capped.code == Code.SAN_TOO_MANY


@pytest.mark.parametrize("profile", ["usr_cert", "server_cert"])
def test_the_guide_profiles_keep_private_names(profile: str, signer: BatchSigner) -> None:
    """server_cert and usr_cert are for a private CA: internal names and private addresses
    stay allowed there (public_names is false)."""
    if profile == "usr_cert":
        csr = make_csr("alice@example.com", san=dns("printer.local"))
    else:
        csr = make_csr("printer.local", san=[*dns("printer.local"), ip("10.0.0.1")])
    assert sign_one(signer, f"private-{profile}", csr, profile, []).status == "issued"


def test_a_usr_cert_cn_may_not_be_a_wildcard(signer: BatchSigner, store: ResultsStore) -> None:
    """RFC 5280 has no rule on a CN's content, so pkilint's RFC 5280 linter would not catch it:
    the policy alone refuses a wildcard CN where the profile refuses wildcards."""
    result = sign_one(signer, "usr-wildcard", make_csr("*.example.com"), "usr_cert", [])
    assert (result.status, result.code) == ("refused", Code.SUBJECT_CN_WILDCARD)
    assert "*.example.com" in (result.message or "")


@pytest.mark.parametrize("name", ["www.example.com.", "*.co.uk", "*.github.io"])
def test_every_profile_refuses_a_trailing_dot_and_a_wildcard_on_a_public_suffix(
    name: str, signer: BatchSigner
) -> None:
    result = sign_one(
        signer, "every", make_csr("www.example.com", san=dns(name)), "server_cert", []
    )
    assert result.code in (Code.SAN_TRAILING_DOT, Code.SAN_WILDCARD_PUBLIC_SUFFIX), result.message


def test_the_ocsp_responder_subject_keeps_whatever_the_intermediate_holds() -> None:
    """The delegate's subject is the intermediate's with its own CN; an adopted CA's
    intermediate may hold DC or serialNumber, which the built-in profile must not refuse."""
    from worker.profiles import ocsp_responder_profile
    from worker.subject import build_subject

    intermediate_like = x509.Name(
        [
            A(NameOID.DOMAIN_COMPONENT, "example"),
            A(NameOID.COUNTRY_NAME, "GB"),
            A(NameOID.ORGANIZATION_NAME, "Alice Ltd"),
            A(NameOID.SERIAL_NUMBER, "42"),
            A(NameOID.COMMON_NAME, "Alice Ltd Intermediate CA OCSP Responder"),
        ]
    )
    built = build_subject(intermediate_like, ocsp_responder_profile("sha256"))
    assert set(built) == set(intermediate_like)

"""The tls_server profile checked by pkilint's CA/Browser Forum TLS Baseline Requirements linter."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.errors import RefusalCode
from core.keys import KeyType
from store.results import ResultsStore
from tests.csrs import job, make_csr
from worker import lint, policy
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAOptions, init_ca
from worker.issuance import BatchSigner
from worker.issuance import batch as batch_module
from worker.profiles import ProfileSet

LINTER = shutil.which("lint_cabf_serverauth_cert")


@pytest.mark.skipif(LINTER is None, reason="pkilint's command is not on PATH")
@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.P256])
def test_tls_server_certificates_pass_the_baseline_linter(
    store: ResultsStore, tmp_path: Path, key_type: KeyType
) -> None:
    folder = init_ca(
        tmp_path / "ca", CAOptions(key_type=key_type, base_url="http://pki.example.com")
    )
    signer = BatchSigner(load_authority(folder.root), store)
    csr = make_csr("www.example.com", san=[x509.DNSName("www.example.com")])
    (result,) = signer.sign_batch([job("lint-1", csr, "tls_server")])
    assert result.ok and result.certificate_pem, result.message
    path = tmp_path / "leaf.pem"
    path.write_text(result.certificate_pem)
    assert LINTER is not None
    linted = subprocess.run(
        [LINTER, "lint", "-t", "DV-FINAL-CERTIFICATE", "-s", "ERROR", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "ERROR" not in linted.stdout and "FATAL" not in linted.stdout


def test_without_a_base_url_the_profile_says_where_to_name_the_locations() -> None:
    from worker.profiles import default_profiles_toml

    assert "# crl_distribution_points" in default_profiles_toml()
    text = default_profiles_toml("http://pki.example.com/")
    assert 'ocsp_urls = ["http://pki.example.com/ocsp"]' in text


# --- lint before sign -------------------------------------------------------------------------


def relaxed_signer(
    authority: SigningAuthority, store: ResultsStore, **changes: Any
) -> tuple[BatchSigner, str]:
    """A signer that also offers tls_server with `changes`, as `tls_relaxed`."""
    tls = authority.profiles.get("tls_server")
    assert tls is not None
    relaxed = tls.model_copy(update={"name": "tls_relaxed", **changes})
    profiles = ProfileSet({"tls_server": tls, "tls_relaxed": relaxed})
    return BatchSigner(dataclasses.replace(authority, profiles=profiles, _extensions={}), store), (
        "tls_relaxed"
    )


def test_a_job_the_linter_refuses_is_never_signed_by_the_ca_key(
    authority: SigningAuthority, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed: list[str] = []
    real_sign = batch_module.sign

    def counting_sign(job: Any, signing_authority: SigningAuthority) -> Any:
        signed.append(job.job_id)
        return real_sign(job, signing_authority)

    monkeypatch.setattr(batch_module, "sign", counting_sign)
    signer, profile = relaxed_signer(authority, store, public_names=False)
    internal = make_csr(
        "www.example.com",
        san=[x509.DNSName("www.example.com"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))],
    )
    good = make_csr("www.example.com", san=[x509.DNSName("www.example.com")])
    refused, issued = signer.sign_batch(
        [job("linted-out", internal, profile), job("linted-in", good, profile)]
    )
    assert (refused.status, refused.code) == ("refused", RefusalCode.LINT_FAILED)
    assert "cabf.internal_ip_address" in (refused.message or "")
    assert issued.status == "issued", issued.message
    assert signed == ["linted-in"]
    # Refused before the reservation: no serial, no record; the refusal is kept under the id.
    assert store.count_serials() == 1 and not store.pending_records()
    assert store.job_state("linted-out")["state"] == "refused"


def test_lint_off_signs_what_the_linter_would_refuse(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    signer, profile = relaxed_signer(authority, store, public_names=False, lint="off")
    csr = make_csr("www.example.com", san=[x509.DNSName("www.example.com")])
    (result,) = signer.sign_batch([job("lint-off", csr, profile, san=["DNS:printer.local"])])
    assert result.status == "issued", result.message


@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.P256])
def test_the_throwaway_key_is_like_the_ca_key_and_made_once(
    tmp_path: Path, key_type: KeyType
) -> None:
    folder = init_ca(tmp_path / "ca", CAOptions(key_type=key_type))
    ca_key = load_authority(folder.root).key
    throwaway = lint.throwaway_key_like(ca_key)
    assert throwaway is lint.throwaway_key_like(ca_key)
    assert throwaway.public_key() != ca_key.public_key()
    if isinstance(ca_key, rsa.RSAPrivateKey):
        assert isinstance(throwaway, rsa.RSAPrivateKey) and throwaway.key_size == ca_key.key_size
    else:
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        assert isinstance(throwaway, ec.EllipticCurvePrivateKey)
        assert throwaway.curve.name == ca_key.curve.name


def test_validators_are_built_once_per_process(signer: BatchSigner) -> None:
    csr = make_csr("www.example.com", san=[x509.DNSName("www.example.com")])
    signer.sign_batch([job("once-0", csr, "tls_server"), job("once-1", csr, "server_cert")])
    built = (
        lint._serverauth_validator.cache_info().currsize,
        lint._rfc5280_validator.cache_info().currsize,
    )
    results = signer.sign_batch(
        [job(f"once-{n}", csr, "tls_server" if n % 2 else "usr_cert") for n in range(2, 12)]
    )
    assert {result.status for result in results} == {"issued"}
    assert built == (
        lint._serverauth_validator.cache_info().currsize,
        lint._rfc5280_validator.cache_info().currsize,
    )
    assert lint._serverauth_validator.cache_info().hits > 0


def test_the_guide_profiles_pass_the_rfc5280_linter(signer: BatchSigner) -> None:
    """What server_cert and usr_cert issue has no RFC 5280 error either (the lint step would
    have refused it otherwise; checked again here on the real certificate)."""
    requests = [
        job("guide-server", make_csr("www.example.com"), "server_cert"),
        job(
            "guide-user", make_csr("alice@example.com"), "usr_cert", san=["email:alice@example.com"]
        ),
    ]
    for result in signer.sign_batch(requests):
        assert result.status == "issued", result.message
        der = x509.load_pem_x509_certificate((result.certificate_pem or "").encode()).public_bytes(
            serialization.Encoding.DER
        )
        assert lint.findings(der, "pkilint-rfc5280") == []


# --- whatever tls_server issues passes the BR linter -----------------------------------------

_ANY_LABEL_CHARACTER = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
label = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True),
    st.text(alphabet=_ANY_LABEL_CHARACTER, min_size=1, max_size=10),
)
public_suffix = st.sampled_from(["com", "org", "net", "co.uk", "de", "io", "xn--p1ai"])
other_suffix = st.sampled_from(
    ["github.io", "local", "internal", "lan", "corp", "home.arpa", "test", "example", "onion"]
)
dns_name = st.builds(
    lambda wildcard, labels, tail: ("*." if wildcard else "") + ".".join([*labels, tail]),
    st.booleans(),
    st.lists(label, min_size=0, max_size=3),
    st.one_of(public_suffix, public_suffix, other_suffix),
)
global_ip = st.sampled_from(["8.8.8.8", "1.1.1.1", "203.0.114.7", "2001:4860:4860::8888"])
ip_text = st.one_of(global_ip, global_ip, st.ip_addresses().map(str))
san_value = st.one_of(
    dns_name.map(lambda name: f"DNS:{name}"),
    dns_name.map(lambda name: f"DNS:{name}"),
    ip_text.map(lambda address: f"IP:{address}"),
)
_job_numbers = itertools.count()


@cache
def leaf_keys() -> tuple[CertificateIssuerPrivateKeyTypes, ...]:
    return (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(65537, 2048),
    )


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sans=st.lists(san_value, min_size=1, max_size=4),
    cn_choice=st.one_of(st.none(), st.integers(min_value=0, max_value=3), dns_name),
    country=st.sampled_from([None, None, "GB", "US", "DE", "XX", "UK", "ZZ"]),
    organization=st.sampled_from([None, None, None, "Example Ltd"]),
    cn_first=st.booleans(),
    key_index=st.integers(min_value=0, max_value=2),
)
def test_whatever_tls_server_issues_passes_the_baseline_linter(
    signer: BatchSigner,
    sans: list[str],
    cn_choice: int | str | None,
    country: str | None,
    organization: str | None,
    cn_first: bool,
    key_index: int,
) -> None:
    """Over generated subjects and SANs (public and internal names, wildcards, any IP address,
    mixed case, countries real and not): the policy refuses everything pkilint's BR linter would
    (no request ever reaches lint.failed), and every certificate issued has no error or fatal
    finding when the real certificate is linted again."""
    if isinstance(cn_choice, int):
        common_name = sans[cn_choice % len(sans)].partition(":")[2]
    else:
        common_name = cn_choice or sans[0].partition(":")[2]
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if country is not None:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if not cn_first:
        attributes.reverse()
    csr = make_csr(None, key=leaf_keys()[key_index], extra_attributes=attributes)
    (result,) = signer.sign_batch(
        [job(f"property-{next(_job_numbers)}", csr, "tls_server", san=sans)]
    )
    assert result.code != RefusalCode.LINT_FAILED, result.message
    event(result.code or "issued")
    if result.status != "issued":
        return
    certificate = x509.load_pem_x509_certificate((result.certificate_pem or "").encode())
    assert (
        lint.findings(certificate.public_bytes(serialization.Encoding.DER), "pkilint-br-serverauth")
        == []
    )


@pytest.fixture
def rfc5280_signer(authority: SigningAuthority, store: ResultsStore) -> BatchSigner:
    """The guide's profiles with `lint = "pkilint-rfc5280"` (they ship with lint off)."""
    linted = {
        name: profile.model_copy(update={"lint": "pkilint-rfc5280"})
        for name in ("server_cert", "usr_cert")
        if (profile := authority.profiles.get(name)) is not None
    }
    return BatchSigner(
        dataclasses.replace(authority, profiles=ProfileSet(linted), _extensions={}), store
    )


@pytest.mark.parametrize(
    ("profile", "common_name", "san"),
    [
        ("server_cert", "*.example.com", ["DNS:*.example.com", "DNS:printer.local"]),
        ("usr_cert", "alice@example.com", ["URI:spiffe://example.org/ns/default/sa/alice"]),
        ("usr_cert", "alice@example.com", ["URI:urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"]),
        ("usr_cert", "alice@example.com", ["URI:mailto:alice@example.com"]),
    ],
)
def test_the_rfc5280_linter_takes_wildcards_and_absolute_uris(
    rfc5280_signer: BatchSigner, profile: str, common_name: str, san: list[str]
) -> None:
    """pkilint's own syntax checks know web URLs and no wildcard label; lint.py drops those two
    findings where the value is a wildcard over a valid name or an absolute URI (RFC 5280
    4.2.1.6), so the guide's profiles keep issuing them."""
    (result,) = rfc5280_signer.sign_batch(
        [job(f"rfc5280-{next(_job_numbers)}", make_csr(common_name), profile, san=san)]
    )
    assert result.status == "issued", result.message


def test_the_rfc5280_linter_still_refuses_a_broken_name(
    rfc5280_signer: BatchSigner, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the policy's DNS syntax check off, `www..example.com` reaches the linter, which
    refuses it (pkix.invalid_domain_name_syntax): the two exceptions above are that narrow."""
    monkeypatch.setattr(policy, "check_dns_name", lambda name, what: None)
    (result,) = rfc5280_signer.sign_batch(
        [
            job(
                "rfc5280-broken",
                make_csr("www.example.com"),
                "server_cert",
                san=["DNS:www..example.com"],
            )
        ]
    )
    assert (result.status, result.code) == ("refused", RefusalCode.LINT_FAILED)
    assert "pkix.invalid_domain_name_syntax" in (result.message or "")
    assert store.count_serials() == 0


def test_a_linter_that_breaks_refuses_the_job_rather_than_skipping_it(
    signer: BatchSigner, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(der: bytes, linter: str) -> list[lint.Finding]:
        raise RuntimeError("pkilint bug")

    monkeypatch.setattr(lint, "findings", broken)
    csr = make_csr("www.example.com", san=[x509.DNSName("www.example.com")])
    (result,) = signer.sign_batch([job("lint-broken", csr, "tls_server")])
    assert (result.status, result.code) == ("refused", RefusalCode.LINT_FAILED)
    assert "could not lint" in (result.message or "") and "RuntimeError" in (result.message or "")
    assert store.count_serials() == 0

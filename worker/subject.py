"""The certificate's subject: the attributes a profile allows, each value checked, built anew in
the profile's order from the checked values (never the CSR's encoding copied as it came)."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier
from iso3166 import countries_by_alpha2

from core.errors import RefusalCode as Code
from core.errors import Rejected
from worker.profiles import SUBJECT_ATTRIBUTE_OIDS, Profile
from worker.web_names import ip_address_or_none, normalised_dns_name

ATTRIBUTE_NAMES: dict[ObjectIdentifier, str] = {
    oid: name for name, oid in SUBJECT_ATTRIBUTE_OIDS.items()
}
# BR 7.1.4.2 (and ISO 3166-1): "XX" stands for no country where the subject has none.
_NO_COUNTRY = "XX"


def attribute_name(oid: ObjectIdentifier) -> str:
    """The short name of an attribute type (`CN`, `O`), or its dotted OID when it has none."""
    return ATTRIBUTE_NAMES.get(oid, oid.dotted_string)


def check_attributes_allowed(name: x509.Name, profile: Profile) -> None:
    """Refuse an attribute the profile does not list (a multi-valued RDN is split when built)."""
    for rdn in name.rdns:
        for attribute in rdn:
            label = attribute_name(attribute.oid)
            if label not in profile.subject_attributes:
                raise Rejected(
                    Code.SUBJECT_ATTRIBUTE_NOT_ALLOWED,
                    f"subject {label} is not allowed by the {profile.name} profile (allowed: "
                    f"{', '.join(profile.subject_attributes)}; BR 7.1.2.7.2 for a DV subject)",
                )


def check_country(name: x509.Name) -> None:
    """A countryName is an ISO 3166-1 alpha-2 code in capitals, or XX (RFC 5280 A.1, BR 7.1.4.2)."""
    for attribute in name.get_attributes_for_oid(NameOID.COUNTRY_NAME):
        value = str(attribute.value)
        if value != _NO_COUNTRY and value not in countries_by_alpha2:
            raise Rejected(
                Code.SUBJECT_COUNTRY_INVALID,
                f"subject C {value!r} is not an ISO 3166-1 alpha-2 country code such as 'GB' "
                "(RFC 5280 Appendix A, BR 7.1.4.2)",
            )


def canonical_common_name(common_name: str, profile: Profile) -> str:
    """A CN under a profile of domain names as the SANs hold it: lower case, an IP address in
    its RFC 5952 text form; any other CN as it came."""
    if profile.common_name != "fqdn":
        return common_name
    address = ip_address_or_none(common_name)
    return str(address) if address is not None else normalised_dns_name(common_name)


def build_subject(requested: x509.Name, profile: Profile) -> x509.Name:
    """The subject the certificate carries: each checked attribute in its own RDN, in the order of
    the profile's `subject_attributes` (repeats of one attribute keep their order), encoded as
    `cryptography` chooses for the type (UTF8String, PrintableString for C, IA5String for
    emailAddress and DC: RFC 5280 4.1.2.4), the CN in its canonical form. Raise Rejected for an
    attribute the profile does not list (a record kept across a change of profiles.toml)."""
    check_attributes_allowed(requested, profile)
    order = {label: index for index, label in enumerate(profile.subject_attributes)}
    attributes = sorted(
        (attribute for rdn in requested.rdns for attribute in rdn),
        key=lambda attribute: order[attribute_name(attribute.oid)],
    )
    built = []
    for attribute in attributes:
        value = str(attribute.value)
        if attribute.oid == NameOID.COMMON_NAME:
            value = canonical_common_name(value, profile)
        built.append(x509.NameAttribute(attribute.oid, value))
    return x509.Name(built)

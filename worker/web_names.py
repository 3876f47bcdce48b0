"""Domain names and IP addresses as a certificate may carry them: RFC 1034 preferred name syntax,
A-labels, and for public-style profiles names the public DNS resolves (BR 7.1.2.7.12, 4.2.2).

The public suffix list comes from the `publicsuffixlist` package's bundled snapshot, read
offline once per process; nothing is fetched at run time.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cache

from publicsuffixlist import PublicSuffixList

from core.errors import RefusalCode as Code
from core.errors import Rejected

_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_A_LABEL_PREFIX = "xn--"
# Special-use names that are in the public suffix list but never name a subscriber's host:
# .onion (RFC 7686, BR Appendix C asks for validation casign does not do) and the .arpa
# infrastructure zone (RFC 3172), which holds home.arpa (RFC 8375) and the reverse zones.
RESERVED_SUFFIXES = ("onion", "arpa")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The IPv4 shared address space (RFC 6598) is neither private nor global in the ipaddress module.
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
_DOTTED_DIGITS = re.compile(r"[0-9.]+")


def ip_address_or_none(text: str) -> IPAddress | None:
    """`text` as an IP address, or None: a name with neither a colon (IPv6) nor only digits and
    dots (IPv4) is answered without the cost of ipaddress's exception."""
    if ":" not in text and not _DOTTED_DIGITS.fullmatch(text):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_dns_name(text: str, wildcard: bool) -> bool:
    """A fully qualified LDH domain name (RFC 1035 2.3.1), at least two labels, ASCII only; a
    trailing dot is tolerated here (`check_dns_name` refuses it in a SAN)."""
    if not text.isascii():  # before lower(): KELVIN SIGN U+212A lower-cases to an ASCII 'k'
        return False
    name = text.lower().removesuffix(".")
    if wildcard and name.startswith("*."):
        name = name[2:]
    labels = name.split(".")
    return (
        len(name) <= 253
        and len(labels) >= 2
        and all(_DNS_LABEL.match(label) for label in labels)
        and not labels[-1].isdigit()
    )


def normalised_dns_name(text: str) -> str:
    """The form a certificate carries: ASCII lower case (RFC 4343), nothing else changed."""
    if not text.isascii():
        raise ValueError("a domain name must be ASCII (A-labels)")
    return text.lower()


def bad_a_label(name: str) -> str | None:
    """The first `xn--` label of `name` that is not a Punycode A-label of a non-ASCII U-label
    (RFC 5890 2.3.2.1), else None."""
    for label in name.split("."):
        if not label.startswith(_A_LABEL_PREFIX):
            continue
        encoded = label[len(_A_LABEL_PREFIX) :]
        try:
            decoded = encoded.encode("ascii").decode("punycode")
        except (UnicodeError, ValueError):
            return label
        if decoded.isascii() or decoded.encode("punycode").decode("ascii") != encoded:
            return label
    return None


def check_dns_name(name: str, what: str) -> None:
    """Refuse `name` (already lower case) unless it is in preferred name syntax with valid
    A-labels (RFC 5280 4.2.1.6, RFC 1034 3.5); `what` names it in the message."""
    if name.endswith("."):
        raise Rejected(
            Code.SAN_TRAILING_DOT,
            f"{what} ends with a dot; a certificate holds a domain name without the root's "
            "trailing dot (RFC 5280 4.2.1.6, preferred name syntax of RFC 1034 3.5)",
        )
    if not is_dns_name(name, wildcard=True):
        raise Rejected(Code.SAN_MALFORMED, f"{what} is not a valid domain name")
    label = bad_a_label(name)
    if label is not None:
        raise Rejected(
            Code.SAN_MALFORMED,
            f"{what} has the label {label!r}, which is not a valid IDNA A-label (RFC 5890 2.3.2.1)",
        )


def check_wildcard_base(name: str, what: str) -> None:
    """Refuse `*.SUFFIX` where SUFFIX is itself a public suffix (BR 3.2.2.6), e.g. `*.co.uk`."""
    if not name.startswith("*."):
        return
    base = name[2:]
    if _suffixes().is_public(base):
        raise Rejected(
            Code.SAN_WILDCARD_PUBLIC_SUFFIX,
            f"{what} is a wildcard directly under the public suffix {base!r}, which no "
            "applicant controls (BR 3.2.2.6)",
        )


def check_public_dns_name(name: str, what: str) -> None:
    """Refuse an internal name: its TLD must be in the public suffix list's ICANN section and
    it must not be under a special-use suffix (BR 7.1.2.7.12 and 4.2.2, Internal Name)."""
    labels = name.removeprefix("*.").split(".")
    top_level = labels[-1]
    if _icann_suffixes().publicsuffix(top_level) is None:
        raise Rejected(
            Code.SAN_INTERNAL_NAME,
            f"{what} is an internal name: its top-level domain {top_level!r} is not in the public "
            "suffix list's ICANN section (BR 7.1.2.7.12, Internal Name)",
        )
    for reserved in RESERVED_SUFFIXES:
        if name == reserved or name.endswith("." + reserved):
            raise Rejected(
                Code.SAN_INTERNAL_NAME,
                f"{what} is under the special-use domain {reserved!r}, which this CA does not "
                "validate for the public DNS (BR 7.1.2.7.12, RFC 6761)",
            )


def check_public_ip_address(address: IPAddress, what: str) -> None:
    """Refuse an IP address that is not globally routable (BR 7.1.2.7.12, Reserved IP Address)."""
    if address.is_global and address not in _SHARED_ADDRESS_SPACE:
        return
    raise Rejected(
        Code.SAN_IP_NOT_PUBLIC,
        f"{what} is a {reserved_address_kind(address)} address, not a globally routable one "
        "(BR 7.1.2.7.12, Reserved IP Address; IANA special-purpose registries)",
    )


def reserved_address_kind(address: IPAddress) -> str:
    """Which special-purpose range `address` falls in, in words."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE:
        return "shared (carrier-grade NAT, RFC 6598)"
    if address.is_private:
        return "private or special-purpose (RFC 1918, RFC 4193, documentation, ...)"
    return "reserved"


@cache
def _icann_suffixes() -> PublicSuffixList:
    return PublicSuffixList(only_icann=True, accept_unknown=False)


@cache
def _suffixes() -> PublicSuffixList:
    """The whole list, ICANN and private sections: `*.github.io` is as wide as `*.co.uk`."""
    return PublicSuffixList(accept_unknown=False)

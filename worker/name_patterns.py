"""Which names a producer may ask for: patterns matched label by label, on ASCII only.

A pattern is one of
- a domain, `www.example.com` or `*.example.com`: a `*` stands for exactly one whole LDH label,
  never for a dot, and never for the wildcard label of a wildcard certificate unless the
  producer's entry says `wildcards = true`;
- an e-mail address, `*@example.com` or `alice@example.com`: the local part exactly (ASCII
  case-insensitive) or `*` for any one local part, the domain as above;
- an IP address or network, `192.0.2.7` or `10.0.0.0/8`;
- a URI's scheme and host, `https://*.example.com`: any path on a host the domain matches.
Names and patterns are compared as ASCII (IDNs as their xn-- A-labels); a value that is not
ASCII never matches, so U+212A KELVIN SIGN cannot fold into `k`.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL_PART = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_WILDCARD = "*"


def check_pattern(pattern: str) -> str | None:
    """Why `pattern` is not a usable name pattern, or None when it is."""
    if not pattern.isascii():
        return "is not ASCII (write an IDN as its xn-- A-labels)"
    text = pattern.lower()
    if _network(text) is not None:
        return None
    if "://" in text:
        scheme, _, host = text.partition("://")
        if not scheme or not _domain_pattern_ok(host):
            return "is not SCHEME://DOMAIN with a domain pattern of whole labels"
        return None
    if "@" in text:
        local, _, domain = text.partition("@")
        if not (local == _WILDCARD or _LOCAL_PART.match(local)) or not _domain_pattern_ok(domain):
            return "is not LOCAL@DOMAIN with LOCAL an address part or '*'"
        return None
    if not _domain_pattern_ok(text):
        return "is not a domain whose labels are LDH labels or a whole '*'"
    return None


def name_matches(value: str, pattern: str, wildcards: bool = False) -> bool:
    """True when the name `value` (a CN, an e-mail address, a SAN value) is one `pattern` allows;
    a wildcard label in `value` needs `wildcards`."""
    if not value.isascii() or not pattern.isascii():
        return False
    # .lower() only on ASCII: no Unicode case folding can turn one name into another.
    name, allowed = value.lower(), pattern.lower()
    network = _network(allowed)
    address = _address(name)
    if network is not None or address is not None:
        return network is not None and address is not None and address in network
    if "://" in allowed:
        return _uri_matches(name, allowed, wildcards)
    if "@" in allowed or "@" in name:
        return _email_matches(name, allowed)
    return _domain_matches(name, allowed, wildcards)


def _domain_matches(name: str, pattern: str, wildcards: bool) -> bool:
    labels, allowed = name.split("."), pattern.split(".")
    if len(labels) != len(allowed):
        return False
    for position, (label, allowed_label) in enumerate(zip(labels, allowed, strict=True)):
        if label == _WILDCARD:
            # A wildcard certificate's `*` is its leftmost label only (RFC 6125 6.4.3).
            if position != 0 or allowed_label != _WILDCARD or not wildcards:
                return False
        elif not _LDH_LABEL.match(label) or allowed_label not in (_WILDCARD, label):
            return False
    return True


def _email_matches(address: str, pattern: str) -> bool:
    if address.count("@") != 1 or pattern.count("@") != 1:
        return False
    local, _, domain = address.partition("@")
    allowed_local, _, allowed_domain = pattern.partition("@")
    if not _LOCAL_PART.match(local):
        return False
    if allowed_local not in (_WILDCARD, local):
        return False
    return _domain_matches(domain, allowed_domain, wildcards=False)


def _uri_matches(uri: str, pattern: str, wildcards: bool) -> bool:
    allowed_scheme, _, allowed_host = pattern.partition("://")
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme != allowed_scheme or not host or parts.username or parts.password:
        return False
    return _domain_matches(host, allowed_host, wildcards)


def _domain_pattern_ok(pattern: str) -> bool:
    labels = pattern.split(".")
    if len(labels) == 1:  # one exact identifier (a device's name), never a bare `*`
        return bool(_LDH_LABEL.match(pattern))
    return all(label == _WILDCARD or _LDH_LABEL.match(label) for label in labels)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not any(char.isdigit() for char in text) or not set(text) <= set("0123456789abcdef.:/"):
        return None
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        return None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def value_matches(value: str, pattern: str) -> bool:
    """A subject attribute value against an allowed value: exact (case and all), where each `*`
    in the pattern stands for any run of characters."""
    regex = ".*".join(re.escape(part) for part in pattern.split(_WILDCARD))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None

"""CSR files as `casign submit` reads them (PEM or DER), and what it checks before queueing."""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigurationError, Rejected
from core.errors import RefusalCode as Code

if TYPE_CHECKING:
    from worker.profiles import ProfileSet

# The signer's own limit (worker/policy.py MAX_CSR_BYTES); importing the policy here would load
# the worker's modules in every `casign` command.
MAX_CSR_BYTES = 64 * 1024

_PEM_CSR = re.compile(
    rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n.*?-----END (NEW )?CERTIFICATE REQUEST-----",
    re.DOTALL,
)
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_DER_SEQUENCE = 0x30


@dataclass(frozen=True)
class CsrFile:
    """One CSR file: where it is, the certificate name it gives, and its PEM text."""

    path: Path
    name: str
    pem: str


def certificate_name(csr_path: Path) -> str:
    """`www.example.com.csr.pem` -> `www.example.com` (the guide's file naming)."""
    name = csr_path.name
    for suffix in (".pem", ".der", ".csr", ".req"):
        name = name.removesuffix(suffix)
    return name or csr_path.name


def read_csr_file(path: Path) -> CsrFile:
    """The CSR in `path` as PEM; DER is wrapped as PEM. Rejected when it holds no CSR.

    Only the CSR's own PEM block is kept, so a file that also holds its private key (as some
    tools write them) never sends that key anywhere.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path} ({exc.strerror})") from None
    if len(data) > MAX_CSR_BYTES:
        raise Rejected(Code.CSR_TOO_LARGE, f"the file is over {MAX_CSR_BYTES // 1024} KiB")
    block = _PEM_CSR.search(data)
    if block is not None:
        return CsrFile(path, certificate_name(path), block.group(0).decode("ascii", "replace"))
    label = _PEM_LABEL.search(data)
    if label is not None:
        kind = label.group(1).decode("ascii").lower()
        raise Rejected(
            Code.CSR_MALFORMED, f"the file holds a PEM {kind}, not a certificate request"
        )
    if not _is_one_der_element(data):
        raise Rejected(
            Code.CSR_MALFORMED, "the file is neither a PEM nor a DER certificate request"
        )
    return CsrFile(path, certificate_name(path), der_to_pem(data))


def der_to_pem(der: bytes) -> str:
    """A DER CSR as PEM (RFC 7468 section 7), without parsing it: the signer judges its content."""
    encoded = base64.b64encode(der).decode("ascii")
    lines = [encoded[start : start + 64] for start in range(0, len(encoded), 64)]
    return (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + "\n".join(lines)
        + "\n-----END CERTIFICATE REQUEST-----\n"
    )


def _is_one_der_element(data: bytes) -> bool:
    """True when `data` is exactly one DER SEQUENCE (X.690 8.1: tag, length, contents)."""
    if len(data) < 2 or data[0] != _DER_SEQUENCE:
        return False
    length, start = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or len(data) < 2 + count:
            return False
        length = int.from_bytes(data[2 : 2 + count], "big")
        start += count
    return start + length == len(data)


def local_profiles(ca_folder: Path | None) -> ProfileSet | None:
    """The CA folder's profiles when this machine has them; None when they cannot be read."""
    from worker.profiles import ProfileSet

    if ca_folder is None:
        return None
    try:
        return ProfileSet.load(ca_folder / "intermediate" / "profiles.toml")
    except ConfigurationError:
        return None  # not this machine's to judge: the signer reads its own copy


def check_profile_and_days(profiles: ProfileSet | None, profile: str, days: int | None) -> None:
    """Refuse, before anything is queued, a validity or profile the signer would refuse."""
    from worker.policy import check_validity

    if days is not None and days <= 0:
        raise Rejected(Code.VALIDITY_INVALID, f"days must be a positive number, not {days}")
    if profiles is None:
        return
    chosen = profiles.get(profile)
    if chosen is None:
        raise Rejected(
            Code.PROFILE_UNKNOWN,
            f"profile {profile!r} is not offered (choose from {', '.join(profiles.names)})",
        )
    check_validity(chosen, days)


def san_from_common_name(common_name: str, profile: str, profiles: ProfileSet | None) -> list[str]:
    """`DNS:CN` or `IP:CN` when the CN is a host name or address the profile allows as a SAN.

    For `casign request` without --san: a TLS profile that requires a SAN then gets the name
    the CN already gives, as `openssl req -addext subjectAltName=DNS:...` would put it.
    """
    from worker.web_names import is_dns_name

    try:
        ipaddress.ip_address(common_name)
        san = f"IP:{common_name}"
    except ValueError:
        if not is_dns_name(common_name, wildcard=True):
            return []
        san = f"DNS:{common_name}"
    chosen = profiles.get(profile) if profiles is not None else None
    if chosen is not None and san.partition(":")[0] not in chosen.san_types:
        return []
    return [san]

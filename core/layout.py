"""Where casign's own files sit in a CA folder made by `casign init` (the guide's layout)."""

from __future__ import annotations

from pathlib import Path

OCSP_CERT_NAME = "ocsp.cert.pem"
OCSP_KEY_NAME = "ocsp.key.pem"


def ocsp_cert_path(ca_root: Path) -> Path:
    """The OCSP delegate's certificate, which the responder serves with."""
    return ca_root / "intermediate" / "certs" / OCSP_CERT_NAME


def ocsp_key_path(ca_root: Path) -> Path:
    """The OCSP delegate's key (never the intermediate's)."""
    return ca_root / "intermediate" / "private" / OCSP_KEY_NAME


def intermediate_cert_path(ca_root: Path) -> Path:
    return ca_root / "intermediate" / "certs" / "intermediate.cert.pem"

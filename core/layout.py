"""Where casign's own files sit in a CA folder made by `casign init` (the guide's layout)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigurationError
from core.queue import LEGACY_NAMES, QueueNames

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


def settings_path(ca_root: Path) -> Path:
    return ca_root / "intermediate" / "casign.toml"


def folder_names(ca_root: Path) -> QueueNames:
    """The queue and key prefix a CA folder's casign.toml records (`queue`, `store_prefix`:
    written by `casign init`, derived from the CA's key); a folder without them, or no folder,
    has the names every CA had before (`casign.sign`, `casign`)."""
    path = settings_path(ca_root)
    try:
        settings = tomllib.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return LEGACY_NAMES
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
    queue = settings.get("queue", LEGACY_NAMES.queue)
    prefix = settings.get("store_prefix", LEGACY_NAMES.store_prefix)
    if not (isinstance(queue, str) and queue and isinstance(prefix, str) and prefix):
        raise ConfigurationError(f"{path}: queue and store_prefix must be non-empty strings")
    return QueueNames(queue, prefix)


@dataclass(frozen=True)
class FolderProblem:
    """Why a folder given as a CA folder is not one; `ca_above` is set when it is a CA's inside."""

    reason: str
    ca_above: Path | None = None

    def sentence(self, remedy: str) -> str:
        """The reason, then `remedy`, or the CA folder above when that is what was meant."""
        if self.ca_above is not None:
            return f"{self.reason}; give --ca {self.ca_above}, the CA folder above it"
        return f"{self.reason}; {remedy}"


def ca_folder_problem(ca_root: Path) -> FolderProblem | None:
    """None when `ca_root` is a CA folder made by `casign init` (or the guide); else why not."""
    if intermediate_cert_path(ca_root).is_file():
        return None
    if not ca_root.exists():
        return FolderProblem(f"no CA folder at {ca_root}")
    if not ca_root.is_dir():
        return FolderProblem(f"{ca_root} is a file, not a CA folder")
    for above in (ca_root.absolute().parent, ca_root.absolute().parent.parent):
        # The intermediate folder itself, or one of its subfolders (certs/, private/, ...).
        if intermediate_cert_path(above).is_file() and above != ca_root.absolute():
            return FolderProblem(f"{ca_root} is inside the CA folder {above}", above)
    return FolderProblem(
        f"{ca_root} is not a CA folder (no intermediate/certs/intermediate.cert.pem)"
    )

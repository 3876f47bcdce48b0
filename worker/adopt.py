"""Adopting a CA folder made by the guide's `openssl ca` commands: its database into the store.

Every `intermediate/index.txt` line is stored verbatim (so `casign index export` gives the file
back line for line), every certificate from `newcerts/SERIAL.pem`, every serial is marked used,
the revoked ones are listed for the CRL, and the CRL counter continues from `crlnumber`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from core.errors import ConfigurationError, SigningError
from core.files import PUBLIC_MODE, write_file_atomically
from core.index import IndexEntry, Status
from core.secret_source import read_secret_file
from store.index import ADOPTED, AdoptedEntry  # noqa: F401  (ADOPTED: the mark, for callers)
from store.results import ResultsStore
from store.revocations import RevocationStore
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.crl import seed_crl_number
from worker.profiles import DEFAULT_PROFILES_TOML
from worker.record_key import make_record_key

_CHUNK = 2000
_PRIVATE_KEY = re.compile(r"^\s*private_key\s*=\s*(\S+)", re.MULTILINE)


@dataclass
class AdoptionReport:
    """What `adopt_ca` imported, skipped, wrote and noticed."""

    entries: int = 0
    already_present: int = 0
    certificates: int = 0
    revoked: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    missing_certificates: list[str] = field(default_factory=list)
    not_verbatim: list[int] = field(default_factory=list)  # line numbers export will rewrite
    written: list[Path] = field(default_factory=list)
    next_crl_number: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Line:
    number: int
    text: str
    entry: IndexEntry
    serial: str


def read_index(path: Path) -> list[_Line]:
    """The lines of an `index.txt`, each checked; ConfigurationError names a bad line."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read ({exc.strerror})") from None
    lines: list[_Line] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line:
            continue
        try:
            entry = IndexEntry.from_openssl_line(line)
        except ValueError as exc:
            raise ConfigurationError(f"{path}, line {number}: {exc}") from None
        serial = line.split("\t")[3]
        if serial in seen:
            raise ConfigurationError(f"{path}, line {number}: serial {serial} appears twice")
        seen.add(serial)
        lines.append(_Line(number, line, entry, serial))
    return lines


def newcerts_certificate(
    folder: CAFolder, serial: str, issuer: x509.Certificate
) -> tuple[str | None, str | None]:
    """`newcerts/SERIAL.pem` as PEM if it is there and is the certificate of `serial` (hex as in
    the index) that `issuer` signed; else None and, for a file that is there but wrong, why."""
    path = folder.intermediate / "newcerts" / f"{serial}.pem"
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError):
        return None, f"{path} is not a PEM certificate; its line is kept without it"
    if certificate.serial_number != int(serial, 16):
        return None, f"{path} holds serial {certificate.serial_number:X}; not stored"
    try:
        certificate.verify_directly_issued_by(issuer)
    except Exception:
        return None, f"{path} is not signed by the intermediate; not stored"
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"), None


def _certificate_pem(
    folder: CAFolder, line: _Line, issuer: x509.Certificate, report: AdoptionReport
) -> str | None:
    """`newcerts/SERIAL.pem` as PEM, if it is there and is the certificate the line names."""
    pem, problem = newcerts_certificate(folder, line.serial, issuer)
    if problem is not None:
        report.warnings.append(problem)
    elif pem is None:
        report.missing_certificates.append(line.serial)
    return pem


def _key_file_name(folder: CAFolder) -> str:
    """The intermediate key's file name from `openssl.cnf` (the guide's unless it says other)."""
    try:
        match = _PRIVATE_KEY.search(folder.openssl_cnf_path.read_text(encoding="utf-8"))
    except OSError:
        match = None
    return Path(match.group(1)).name if match else folder.intermediate_key_path.name


def write_casign_files(
    folder: CAFolder, passphrase_file: Path | None, report: AdoptionReport
) -> None:
    """`profiles.toml` (the guide's sections), `casign.toml` (the key's URI) and the signers'
    record MAC key beside the intermediate key (0400), each if absent."""
    if not folder.record_key_path.exists():
        make_record_key(folder.record_key_path)
        report.written.append(folder.record_key_path)
    if not folder.profiles_path.exists():
        write_file_atomically(folder.profiles_path, DEFAULT_PROFILES_TOML, PUBLIC_MODE)
        report.written.append(folder.profiles_path)
    if not folder.settings_path.exists():
        pin = f"?pin-source=file:{passphrase_file.absolute()}" if passphrase_file else ""
        write_file_atomically(
            folder.settings_path,
            f"# casign settings of this CA, adopted from an OpenSSL CA folder. The key is\n"
            f"# named by URI; a passphrase is only ever named here by pin-source, never written.\n"
            f'intermediate_key = "file:private/{_key_file_name(folder)}{pin}"\n'
            f"# nextUpdate of each CRL, in days: at most 10 (BR 4.9.7)\n"
            f"crl_days = 7\n",
            PUBLIC_MODE,
        )
        report.written.append(folder.settings_path)


def _store_lines(
    store: ResultsStore,
    folder: CAFolder,
    lines: list[_Line],
    issuer: x509.Certificate,
    report: AdoptionReport,
    on_progress: Callable[[int, int], None],
) -> None:
    """Write the lines not yet in the store, in the file's order, a chunk per transaction."""
    on_progress(0, len(lines))
    for start in range(0, len(lines), _CHUNK):
        chunk = lines[start : start + _CHUNK]
        present = store.index.lines_of([line.serial for line in chunk])
        entries: list[AdoptedEntry] = []
        for line, stored in zip(chunk, present, strict=True):
            if stored is not None:
                if stored != line.text:
                    raise ConfigurationError(
                        f"serial {line.serial} is in the store with another index line; "
                        "adopt into an empty store (or another CASIGN_STORE_PREFIX)"
                    )
                report.already_present += 1
                continue
            pem = _certificate_pem(folder, line, issuer, report)
            if pem is not None:
                report.certificates += 1
            revoked = line.entry.status is Status.REVOKED
            entries.append(AdoptedEntry(line.serial, line.text, pem, revoked))
            report.entries += 1
        store.index.adopt(entries)
        on_progress(min(start + _CHUNK, len(lines)), len(lines))


def adopt_ca(
    directory: Path,
    store: ResultsStore,
    passphrase_file: Path | None = None,
    on_progress: Callable[[int, int], None] = lambda _done, _total: None,
) -> AdoptionReport:
    """Import the OpenSSL CA database at `directory` into `store`; safe to run again.

    `on_progress(done, total)` hears after each chunk of index lines is stored.
    """
    folder = CAFolder(directory)
    folder.require()
    if passphrase_file is not None:  # an empty or shared file is refused now, not by a worker
        read_secret_file(passphrase_file, "passphrase")
    issuer = folder.intermediate_certificate()
    lines = read_index(folder.index_path)
    report = AdoptionReport()
    for line in lines:
        status = line.entry.status.value
        report.statuses[status] = report.statuses.get(status, 0) + 1
        if line.entry.to_openssl_line() != line.text:
            report.not_verbatim.append(line.number)
    report.revoked = report.statuses.get(Status.REVOKED.value, 0)
    if report.not_verbatim:
        report.warnings.append(
            f"{len(report.not_verbatim)} line(s) (first: line {report.not_verbatim[0]}) are "
            "stored as they are but `casign index export` writes them normalised"
        )
    if not folder.chain_path.exists():
        raise ConfigurationError(f"{folder.chain_path} is missing; cat the intermediate and root")
    _store_lines(store, folder, lines, issuer, report, on_progress)
    store.set_chain(folder.chain_pem())
    attributes = folder.intermediate / "index.txt.attr"
    if attributes.exists() and "unique_subject = yes" in attributes.read_text(encoding="utf-8"):
        report.warnings.append(
            "index.txt.attr says unique_subject = yes; casign does not refuse a repeated "
            "subject, so set it to no before running `openssl ca` on an exported index"
        )
    store.index.record_adoption(str(folder.root), datetime.now(UTC))
    report.next_crl_number = seed_crl_number(folder, RevocationStore(store))
    write_casign_files(folder, passphrase_file, report)
    try:
        load_authority(folder.root)
    except SigningError as exc:
        report.warnings.append(f"casign cannot sign for this CA yet: {exc}")
    if report.missing_certificates:
        report.warnings.append(
            f"{len(report.missing_certificates)} certificate(s) not in newcerts/ "
            f"(first: {report.missing_certificates[0]}); their index lines are kept"
        )
    return report

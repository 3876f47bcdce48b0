"""The CA folder kept in step with the store, both ways, so `openssl ca` and casign share one CA.

`sync_folder` makes `intermediate/index.txt` hold every certificate the store knows, in the
format `openssl ca` writes (the store's own lines, `core/index.py`), and takes into the store
what `openssl ca` did to the file since:

- a line whose serial the store lacks (`openssl ca` signed it) is adopted as `casign adopt`
  adopts one: its serial marked used, its certificate from `newcerts/SERIAL.pem` when that is
  the intermediate's, a revoked one listed for the CRL;
- a line `openssl ca -revoke` marked `R` whose serial the store holds as valid is revoked in the
  store, with the file's time and reason (audited, requester `openssl ca`);
- a serial the store holds as revoked is written `R` (casign's revocations reach `openssl ca
  -gencrl` and `openssl ocsp -index`); otherwise a line `openssl ca` changed (`E` after
  `-updatedb`) is left as it is, and new store entries are appended in issuance order.

`serial` (the next serial `openssl ca` uses) is moved past every serial below 2**64 in the
index, so a serial adopted from another folder is never signed again. casign draws its own
serials at random from 2**64 up (`worker/issuance/record.py` `draw_serial`), so `openssl ca`,
counting up from the guide's 1000, never reaches them; and each tool refuses a serial the index
or the store already holds. `index.txt.attr` is written `unique_subject = no` when missing
(casign may issue one subject twice, which `openssl ca` otherwise refuses to load).

Files are written whole and atomically (`core/files.py`), under an exclusive `flock` on
`intermediate/.casign-index.lock`, so one casign process writes at a time; `openssl ca` takes no
lock, so a file it changed while a sync ran is read again before being replaced, and a
certificate it wrote to `newcerts/` that the store lacks is adopted even if its line was lost to
a casign write in the same instant (only a `-revoke` mark lost that way stays lost).
`intermediate/.casign-index-sync.json` records the store the folder is kept with
(`P:instance`), how far its issuance order was written, the revoked count seen, and the index
file and `newcerts/` as last seen, so that a sync with nothing to do costs two stats and one
store round trip. A folder kept with another store is left alone, and said so.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509

from core.errors import ConfigurationError, Rejected, SigningError
from core.files import PUBLIC_MODE, write_file_atomically
from core.index import IndexEntry, Status, format_serial
from store.index import AdoptedEntry
from store.results import ResultsStore
from store.revocations import RevocationStore
from worker.adopt import newcerts_certificate
from worker.cafolder import CAFolder
from worker.live_config import file_version

log = logging.getLogger("casign.folder")

STATE_NAME = ".casign-index-sync.json"
LOCK_NAME = ".casign-index.lock"
# casign's serials are drawn from here up (`draw_serial`); `openssl ca` keeps below it.
CASIGN_SERIAL_FLOOR = 1 << 64
OPENSSL_FIRST_SERIAL = 0x1000  # the guide's `echo 1000 > serial`
OPENSSL_REQUESTER = "openssl ca"
_WRITE_TRIES = 3
# A sync waits ten times its own duration before the next, so that rewriting a large index takes
# at most a tenth of a core; but never longer than this, so the file is at most a minute behind.
MAX_PAUSE_SECONDS = 60.0


class Stopping(Protocol):
    def wait(self, seconds: float) -> bool: ...


class FolderBound(ConfigurationError):
    """The folder's index.txt is kept in step with another store."""


@dataclass(frozen=True)
class SyncState:
    """What `.casign-index-sync.json` holds about the last sync."""

    store: str  # the store's `P:instance`
    entries: int  # entries of the store's issuance order written into index.txt
    revoked: int  # the store's revoked count then
    index_version: tuple[int, int, int]  # (inode, size, mtime ns) of index.txt as written
    newcerts_version: tuple[int, int, int] = (0, 0, 0)  # of the newcerts/ folder as looked at

    def to_json(self) -> str:
        return json.dumps(
            {
                "store": self.store,
                "entries": self.entries,
                "revoked": self.revoked,
                "index": list(self.index_version),
                "newcerts": list(self.newcerts_version),
            }
        )

    @classmethod
    def read(cls, path: Path) -> SyncState | None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            inode, size, mtime = document["index"]
            folder_inode, folder_size, folder_mtime = document.get("newcerts", (0, 0, 0))
            return cls(
                str(document["store"]),
                int(document["entries"]),
                int(document["revoked"]),
                (int(inode), int(size), int(mtime)),
                (int(folder_inode), int(folder_size), int(folder_mtime)),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; the index is compared whole", path)
            return None


@dataclass
class SyncReport:
    """What one sync did."""

    appended: int = 0  # store entries written into index.txt
    marked_revoked: int = 0  # lines rewritten R from the store
    adopted: int = 0  # `openssl ca` lines taken into the store
    revoked_in_store: int = 0  # `openssl ca -revoke` marks carried into the store
    written: bool = False
    next_serial: str | None = None  # what `serial` was moved to
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.written or self.adopted > 0 or self.revoked_in_store > 0


@contextlib.contextmanager
def folder_lock(folder: CAFolder, wait: bool) -> Iterator[bool]:
    """Hold the folder's index lock; yields False (not held) when `wait` is off and it is busy."""
    path = folder.intermediate / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def sync_folder(folder: CAFolder, store: ResultsStore, *, wait: bool = True) -> SyncReport | None:
    """Bring index.txt, serial and the store in step; None when another process holds the lock.

    Raises FolderBound when the folder is kept with another store, Retryable when the store is
    unavailable, OSError when the folder cannot be written.
    """
    started = time.perf_counter()
    with folder_lock(folder, wait) as held:
        if not held:
            return None
        report = _sync_locked(folder, store)
    report.seconds = time.perf_counter() - started
    return report


def _sync_locked(folder: CAFolder, store: ResultsStore) -> SyncReport:
    report = SyncReport()
    state_path = folder.intermediate / STATE_NAME
    for _ in range(_WRITE_TRIES):
        marks = store.index.marks()
        state = SyncState.read(state_path)
        if state is not None and state.store != marks.instance:
            raise FolderBound(
                f"{folder.index_path} is kept in step with another store (instance "
                f"{state.store}, this one is {marks.instance}); remove {state_path} to take this "
                "folder's index into this store"
            )
        version = file_version(folder.index_path)
        newcerts = file_version(folder.intermediate / "newcerts")
        external = state is None or version != state.index_version
        issued_by_openssl = state is None or newcerts != state.newcerts_version
        looked = state is not None and (state.entries, state.revoked) == (
            marks.entries,
            marks.revoked,
        )
        if looked and not external and not issued_by_openssl:
            return report
        start = 0 if external or state is None else state.entries
        merged = _Merge(folder, store, report)
        merged.read_file(folder.index_path)
        if external:
            merged.take_file_changes()
        if issued_by_openssl:
            merged.adopt_newcerts()
        entries = merged.add_store_entries(start)
        if external or state is None or state.revoked != marks.revoked:
            merged.mark_store_revocations()
        if merged.changed and file_version(folder.index_path) != version:
            continue  # `openssl ca` wrote the file meanwhile: read it again
        if merged.changed:
            mode = folder.index_path.stat().st_mode & 0o777 if version[0] else PUBLIC_MODE
            write_file_atomically(folder.index_path, merged.text(), mode)
            report.written = True
            version = file_version(folder.index_path)
        _keep_serial_ahead(folder, merged.highest_low_serial, report)
        _keep_attributes(folder)
        done = SyncState(marks.instance, entries, marks.revoked, version, newcerts)
        write_file_atomically(state_path, done.to_json() + "\n", 0o600)
        return report
    raise OSError(
        f"{folder.index_path} kept changing while it was being written; tried again later"
    )


# The serial (fourth field) of each line, found in C rather than line by line in Python.
_SERIAL_FIELD = re.compile(r"^[^\t\n]*\t[^\t\n]*\t[^\t\n]*\t([^\t\n]*)\t[^\n]*$", re.MULTILINE)
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_NON_EMPTY_LINE = re.compile(r"^[^\n]+$", re.MULTILINE)
# Hex digits of the largest serial below CASIGN_SERIAL_FLOOR, as `format_serial` spells it.
_LOW_SERIAL_DIGITS = 16


class _Merge:
    """index.txt being brought in step with the store.

    New store entries are appended to the file's text as read; its lines are split out (by
    regular expressions, in C: a Python loop per line costs seconds on a large index) only when
    one must be compared or changed: the file changed by someone else, or a revocation.
    """

    def __init__(self, folder: CAFolder, store: ResultsStore, report: SyncReport) -> None:
        self.folder = folder
        self.store = store
        self.report = report
        self.original = ""
        self.lines: list[str] | None = None  # the file's lines, once split
        self.position: dict[str, int] = {}  # serial -> its line, -1 for an appended one
        self.appended: list[str] = []
        self.appended_serials: set[str] = set()
        self.rewritten = False
        self.highest_low_serial = -1  # of the lines looked at

    @property
    def changed(self) -> bool:
        return self.rewritten or bool(self.appended)

    def read_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            text = ""
        self.original = text.replace("\r\n", "\n") if "\r" in text else text

    def _split(self) -> list[str]:
        """The file's lines, and each serial's position (split on first use)."""
        if self.lines is None:
            lines: list[str] = _NON_EMPTY_LINE.findall(self.original)
            serials: list[str] = _SERIAL_FIELD.findall(self.original)
            if len(serials) != len(lines):  # a line out of the ordinary: one at a time
                serials = [_serial_of(line) for line in lines]
            self.position = dict(zip(serials, itertools.count(), strict=False))
            self.position.update(dict.fromkeys(self.appended_serials, -1))
            self._note_low_serials(serials)
            self.lines = lines
        return self.lines

    def _note_low_serials(self, serials: Iterable[str]) -> None:
        low = [serial for serial in serials if len(serial) <= _LOW_SERIAL_DIGITS]
        for serial in low:
            with contextlib.suppress(ValueError):
                self.highest_low_serial = max(self.highest_low_serial, int(serial, 16))

    def take_file_changes(self) -> None:
        """Adopt lines the store lacks; carry `openssl ca -revoke` marks into the store."""
        lines = self._split()
        serials = list(self.position)
        stored: list[str | None] = []
        for first in range(0, len(serials), 5000):
            stored += self.store.index.lines_of(serials[first : first + 5000])
        adopted: list[AdoptedEntry] = []
        issuer = None
        for serial, held in zip(serials, stored, strict=True):
            line = lines[self.position[serial]]
            if held == line:
                continue
            try:
                entry = IndexEntry.from_openssl_line(line)
            except ValueError as exc:
                self.report.warnings.append(
                    f"{self.folder.index_path}: {serial}: {exc}; left as is"
                )
                continue
            if held is None:
                if issuer is None:
                    issuer = self.folder.intermediate_certificate()
                pem, problem = newcerts_certificate(self.folder, serial, issuer)
                if problem is not None:
                    self.report.warnings.append(problem)
                adopted.append(AdoptedEntry(serial, line, pem, entry.status is Status.REVOKED))
            elif entry.status is Status.REVOKED and not held.startswith("R\t"):
                self._revoke_in_store(serial, entry)
            elif held.startswith("R\t") and entry.status is not Status.REVOKED:
                self._set(serial, held)
        if adopted:
            self.store.index.adopt(adopted)
            self.report.adopted += len(adopted)

    def adopt_newcerts(self) -> None:
        """Adopt a certificate `openssl ca` wrote to `newcerts/` whose serial the store lacks.

        `openssl ca` writes the certificate before it renames its new index.txt into place, so
        this also catches a line of its own that a casign write replaced in the same instant:
        the line is made again from the certificate (`IndexEntry.for_certificate`).
        """
        directory = self.folder.intermediate / "newcerts"
        try:
            names = [path.stem for path in directory.glob("*.pem")]
        except OSError:
            return
        serials = [name.upper() for name in names if _HEX.fullmatch(name)]
        unknown: list[str] = []
        for first in range(0, len(serials), 5000):
            chunk = serials[first : first + 5000]
            held = self.store.index.lines_of(chunk)
            unknown += [serial for serial, line in zip(chunk, held, strict=True) if line is None]
        if not unknown:
            return
        issuer = self.folder.intermediate_certificate()
        adopted: list[AdoptedEntry] = []
        for serial in unknown:
            pem, problem = newcerts_certificate(self.folder, serial, issuer)
            if pem is None:
                if problem is not None:
                    self.report.warnings.append(problem)
                continue
            certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
            line = IndexEntry.for_certificate(certificate).to_openssl_line()
            adopted.append(AdoptedEntry(serial, line, pem, False))
        if adopted:
            self.store.index.adopt(adopted)
            self.report.adopted += len(adopted)

    def _revoke_in_store(self, serial: str, entry: IndexEntry) -> None:
        reason = entry.revocation_reason or "unspecified"
        revocations = RevocationStore(self.store)
        try:
            revocations.revoke(serial, reason, entry.revoked_at, requester=OPENSSL_REQUESTER)
        except Rejected as refusal:
            if reason == "unspecified":
                self.report.warnings.append(f"serial {serial} not revoked in the store: {refusal}")
                return
            self.report.warnings.append(
                f"serial {serial}: reason {reason!r} is not one casign records; revoked as "
                "unspecified"
            )
            revocations.revoke(serial, "unspecified", entry.revoked_at, requester=OPENSSL_REQUESTER)
        self.report.revoked_in_store += 1

    def add_store_entries(self, start: int) -> int:
        """Append the store's entries from `start` of its issuance order that the file lacks;
        the position reached.

        Unless the lines were split, only an adopted entry can be in the file already (casign
        draws its serials afresh); it is looked for in the text.
        """
        found, reached = self.store.index.lines_from(start)
        for serial, line, adopted in found:
            if serial in self.appended_serials:
                continue
            if self.lines is None:
                present = adopted and f"\t{serial}\t" in self.original
                at = None if not present else self.position.get(serial, -2)
            else:
                at = self.position.get(serial)
            if at is None:
                self.position[serial] = -1
                self.appended.append(line)
                self.appended_serials.add(serial)
                self._note_low_serials([serial])
                self.report.appended += 1
            elif line.startswith("R\t") and not self._line_revoked(serial):
                self._set(serial, line)
        return reached

    def _line_revoked(self, serial: str) -> bool:
        lines = self._split()
        at = self.position.get(serial, -1)
        return at < 0 or lines[at].startswith("R\t")

    def mark_store_revocations(self) -> None:
        for line in RevocationStore(self.store).revoked_lines():
            serial = _serial_of(line)
            if serial in self.appended_serials:
                continue
            if not self._line_revoked(serial):
                self._set(serial, line)

    def _set(self, serial: str, line: str) -> None:
        self._split()[self.position[serial]] = line
        self.rewritten = True
        self.report.marked_revoked += 1

    def text(self) -> str:
        if not self.rewritten:
            head = self.original
            if head and not head.endswith("\n"):
                head += "\n"
            return head + "".join(line + "\n" for line in self.appended)
        return "\n".join([*self._split(), *self.appended]) + "\n"


def _serial_of(line: str) -> str:
    fields = line.split("\t", 4)
    return fields[3] if len(fields) > 4 else ""


def _keep_serial_ahead(folder: CAFolder, highest: int, report: SyncReport) -> None:
    """Make `serial` hold a value past every low serial in the index (never one casign draws)."""
    path = folder.intermediate / "serial"
    try:
        current: int | None = int(path.read_text(encoding="ascii").strip() or "0", 16)
    except FileNotFoundError:
        current = None
    except (OSError, ValueError):
        report.warnings.append(f"{path} does not hold a hex serial; left as it is")
        return
    wanted = max(highest + 1, OPENSSL_FIRST_SERIAL if current is None else 0)
    if current is not None and current >= wanted:
        return
    report.next_serial = format_serial(wanted)
    write_file_atomically(path, report.next_serial + "\n", PUBLIC_MODE)


def _keep_attributes(folder: CAFolder) -> None:
    path = folder.intermediate / "index.txt.attr"
    if not path.exists():
        write_file_atomically(path, "unique_subject = no\n", PUBLIC_MODE)


def index_sync_enabled(folder: CAFolder) -> bool:
    """`index_sync` of casign.toml: true (the default) keeps the folder in step."""
    value = folder.settings().get("index_sync", True)
    if not isinstance(value, bool):
        raise ConfigurationError(f"{folder.settings_path}: index_sync must be true or false")
    return value


class FolderSyncThread(threading.Thread):
    """Keeps the folder in step from a worker process: a cheap look every `check_seconds`, a
    sync when something changed, then a pause of ten times the sync's own duration (a large
    index costs a rewrite each time), at most MAX_PAUSE_SECONDS."""

    def __init__(
        self,
        folder: CAFolder,
        store_of: Callable[[], ResultsStore],
        stop: Stopping,
        check_seconds: float = 1.0,
    ) -> None:
        super().__init__(name="casign-folder-sync", daemon=True)
        self.folder = folder
        self.store_of = store_of
        self.stop = stop
        self.check_seconds = check_seconds
        self._complaint: str | None = None

    def run(self) -> None:
        pause = self.check_seconds
        while not self.stop.wait(pause):
            pause = self.check_seconds
            try:
                report = sync_folder(self.folder, self.store_of(), wait=False)
            except (SigningError, OSError) as exc:
                self._complain(str(exc))
                continue
            except Exception as exc:  # a fault here must not end the thread, nor touch signing
                problem = f"{type(exc).__name__}: {exc}"
                if problem != self._complaint:
                    log.exception("keeping %s in step failed", self.folder.index_path)
                    self._complaint = problem
                continue
            self._complaint = None
            if report is None:
                continue
            log_report(report)
            pause = min(MAX_PAUSE_SECONDS, max(self.check_seconds, 10 * report.seconds))

    def _complain(self, problem: str) -> None:
        """Log a problem once, until it changes or goes away."""
        if problem != self._complaint:
            log.warning(
                "%s is not kept in step with the store: %s", self.folder.index_path, problem
            )
            self._complaint = problem


def log_report(report: SyncReport) -> None:
    for warning in report.warnings:
        log.warning("%s", warning)
    if report.adopted or report.revoked_in_store:
        log.warning(
            "index.txt: took %d certificate(s) and %d revocation(s) that `openssl ca` made into "
            "the store",
            report.adopted,
            report.revoked_in_store,
        )
    if report.next_serial is not None:
        log.info("serial: `openssl ca` signs %s next", report.next_serial)

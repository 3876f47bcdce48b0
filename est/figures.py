"""What an EST server counts, written to the store once a second for `casign metrics`.

As the OCSP responder does (`ocsp.figures`), the server serves no figures itself: it counts in
memory (a dict increment per answer on its event loop, one locked addition per queue message in
its lanes; never a store round trip per request), and `store.figures_board.FiguresPublisher`
writes a snapshot once a second under the server's name (`server_name`), with an expiry. The
counts are totals since the server started; a restart starts them over, which Prometheus reads
as a counter reset.

A reader treats a document as hostile: `EstFigures.from_json` keeps only entries of a known
form (an EST operation, an HTTP status, a refusal code as casign spells them, counts from 0 to
2^63-1, at most MAX_ENTRIES of each kind) and returns None for anything that is not figures.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from store.acl import KeyScope, est_server_name, producer_of_user
from store.figures_board import as_count, figure_count, host_port_name

OPERATIONS = ("cacerts", "csrattrs", "simpleenroll", "simplereenroll", "serverkeygen")
OTHER = "other"  # a path that names no EST operation (its name is the client's, never a label)
MAX_ENTRIES = 256
MAX_CODES = 100  # distinct refusal codes counted; more go under OTHER (the signer's are free text)
_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z0-9_]{1,48}){0,3}")
_SERVER = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,63}@)?[A-Za-z0-9._-]{1,253}:[0-9]{1,5}")
PENDING_STATUS = 202


def operation_label(operation: str | None) -> str:
    """`operation` if it is an EST operation, else OTHER."""
    return operation if operation in OPERATIONS else OTHER


def is_refusal_code(code: str) -> bool:
    """Whether `code` is spelled as casign's refusal codes are (`est.bad_credentials`)."""
    return _CODE.fullmatch(code) is not None and code != OTHER


def server_name(store_url: str, store_prefix: str, port: int) -> str:
    """`PRODUCER@host:port` when the store URL's user is that producer's Redis user (which may
    write those figures only, `store.acl`), else `host:port`."""
    user = urlsplit(store_url).username
    producer = producer_of_user(KeyScope(store_prefix), unquote(user) if user else None)
    return est_server_name(producer, host_port_name(port))


@dataclass(frozen=True, slots=True)
class EstFigures:
    """One EST server's counts since it started."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)  # (operation, status)
    refused: dict[str, int] = field(default_factory=dict)  # by refusal code
    pending: int = 0  # answered 202 Accepted: still signing, ask again
    enrollments_queued: int = 0  # jobs sent to the signing queue
    messages_sent: int = 0  # queue messages they went in

    def answered(self) -> int:
        return sum(self.requests.values())

    def to_json(self) -> str:
        return json.dumps(
            {
                "requests": [[op, status, n] for (op, status), n in sorted(self.requests.items())],
                "refused": dict(sorted(self.refused.items())),
                "pending": self.pending,
                "enrollments_queued": self.enrollments_queued,
                "messages_sent": self.messages_sent,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> EstFigures | None:
        """The figures `text` holds, entries of an unknown form left out; None for anything
        that is not figures (never raises: a reader skips it)."""
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
        try:
            pending = figure_count(document, "pending")
            queued = figure_count(document, "enrollments_queued")
            messages = figure_count(document, "messages_sent")
        except ValueError:
            return None
        rows, codes = document.get("requests"), document.get("refused")
        if not isinstance(rows, list) or not isinstance(codes, dict):
            return None
        return cls(_requests(rows[:MAX_ENTRIES]), _refused(codes), pending, queued, messages)


def _requests(rows: list[object]) -> dict[tuple[str, int], int]:
    found: dict[tuple[str, int], int] = {}
    for row in rows:
        if not isinstance(row, list) or len(row) != 3:
            continue
        operation, status, count = row
        if (
            operation in (*OPERATIONS, OTHER)
            and isinstance(status, int)
            and not isinstance(status, bool)
            and 100 <= status <= 599
            and (counted := as_count(count)) is not None
        ):
            found[(str(operation), status)] = counted
    return found


def _refused(codes: Mapping[object, object]) -> dict[str, int]:
    found: dict[str, int] = {}
    for code, count in list(codes.items())[:MAX_ENTRIES]:
        counted = as_count(count)
        if (
            isinstance(code, str)
            and (is_refusal_code(code) or code == OTHER)
            and counted is not None
        ):
            found[code] = counted
    return found


def figures_by_server(documents: Mapping[str, str]) -> dict[str, EstFigures]:
    """The figures of each EST server whose name and document read as such (others left out)."""
    found = {
        name: EstFigures.from_json(text)
        for name, text in documents.items()
        if _SERVER.fullmatch(name) is not None
    }
    return {name: figures for name, figures in found.items() if figures is not None}


class EstCounts:
    """The running counts: answers on the event loop (no lock: one thread), queue messages in
    the lanes (under a lock: several threads)."""

    def __init__(self) -> None:
        self._requests: Counter[tuple[str, int]] = Counter()
        self._refused: Counter[str] = Counter()
        self._pending = 0
        self._lock = threading.Lock()
        self._queued = 0
        self._messages = 0

    def answered(self, operation: str | None, status: int, refusal_code: str | None) -> None:
        """One answer sent (on the event loop): its operation, status and refusal code."""
        self._requests[(operation_label(operation), status)] += 1
        if status == PENDING_STATUS:
            self._pending += 1
        if refusal_code is not None:
            known = refusal_code in self._refused or len(self._refused) < MAX_CODES
            self._refused[refusal_code if known and is_refusal_code(refusal_code) else OTHER] += 1

    def sent(self, enrollments: int, messages: int) -> None:
        """`enrollments` jobs sent to the queue in `messages` messages (from a lane)."""
        with self._lock:
            self._queued += enrollments
            self._messages += messages

    def figures(self) -> EstFigures:
        """The counts of this moment (taken on the event loop)."""
        with self._lock:
            queued, messages = self._queued, self._messages
        return EstFigures(
            dict(self._requests), dict(self._refused), self._pending, queued, messages
        )

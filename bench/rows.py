"""The table's rows, what each measures, and the outcomes a measurement can have."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum


class Row(StrEnum):
    """Every row of the table, in table order; the value is the row's printed name."""

    MINIMAL_RSA = "minimal pipeline RSA-2048"
    LIMIT_RSA = "limit RSA-2048"
    SIGN_ONLY_RSA = "sign only RSA-2048"
    LINT_SERVER_ON = "limit RSA-2048 server_cert, lint on"
    LINT_SERVER_OFF = "limit RSA-2048 server_cert, lint off"
    LINT_USR_ON = "limit RSA-2048 usr_cert, lint on"
    LINT_USR_OFF = "limit RSA-2048 usr_cert, lint off"
    LINT_TLS_ON = "limit RSA-2048 tls_server, lint on"
    LINT_TLS_OFF = "limit RSA-2048 tls_server, lint off"
    MINIMAL_P256 = "minimal pipeline P-256"
    LIMIT_P256 = "limit P-256"
    SIGN_ONLY_P256 = "sign only P-256"
    CASIGN_RSA = "casign RSA-2048"
    CASIGN_SEALED = "casign RSA-2048, sealed, ACL users"
    CASIGN_PRELOADED = "casign RSA-2048, index preloaded"
    CASIGN_P256 = "casign P-256"
    SCALE_ONE = "casign RSA-2048, 1 worker x 1 process"
    SCALE_TWO = "casign RSA-2048, 2 workers x 1 process"
    CASIGN_SOFTHSM = "casign SoftHSM"
    RAW_PKCS11_1 = "raw PKCS#11, 1 process"
    RAW_PKCS11_2 = "raw PKCS#11, 2 processes"
    OPENSSL_CA = "openssl ca"
    CFSSL = "cfssl serve"
    LATENCY = "latency"
    WORKER_RSS = "worker RSS"
    OCSP_CACHED = "OCSP answers, pre-signed"
    OCSP_NONCE = "OCSP answers with a nonce"
    EST = "casign EST"
    EST_LATENCY = "EST latency"


# Processes that sign at once in a row, for its CPU-bound rate (the machine has 2 cores).
PARALLELISM: dict[Row, int] = {
    Row.CASIGN_RSA: 2,
    Row.CASIGN_SEALED: 2,
    Row.CASIGN_PRELOADED: 2,
    Row.CASIGN_P256: 2,
    Row.CASIGN_SOFTHSM: 2,
    Row.EST: 2,  # the worker's 2 processes; the front-end shares their cores
    Row.RAW_PKCS11_2: 2,
    Row.SCALE_TWO: 2,
    Row.CFSSL: 2,  # a Go server: its goroutines run on every core
}

# `--skip NAME` names a group of rows that are measured together.
SKIP_GROUPS: dict[str, tuple[Row, ...]] = {
    "limit": (Row.MINIMAL_RSA, Row.LIMIT_RSA, Row.SIGN_ONLY_RSA),
    "limit-p256": (Row.MINIMAL_P256, Row.LIMIT_P256, Row.SIGN_ONLY_P256),
    "lint": (
        Row.LINT_SERVER_ON,
        Row.LINT_SERVER_OFF,
        Row.LINT_USR_ON,
        Row.LINT_USR_OFF,
        Row.LINT_TLS_ON,
        Row.LINT_TLS_OFF,
    ),
    "casign": (Row.CASIGN_RSA, Row.WORKER_RSS),
    "sealed": (Row.CASIGN_SEALED,),
    "preload": (Row.CASIGN_PRELOADED,),
    "latency": (Row.LATENCY,),
    "casign-p256": (Row.CASIGN_P256,),
    "softhsm": (Row.CASIGN_SOFTHSM, Row.RAW_PKCS11_1, Row.RAW_PKCS11_2),
    "openssl": (Row.OPENSSL_CA,),
    "cfssl": (Row.CFSSL,),
    "ocsp": (Row.OCSP_CACHED, Row.OCSP_NONCE),
    "est": (Row.EST, Row.EST_LATENCY),
    "scaling": (Row.SCALE_ONE, Row.SCALE_TWO),
}


@dataclass(frozen=True)
class Rate:
    """`jobs` certificates (or signatures) in `seconds` of wall time, using `cpu_seconds` of CPU.

    `cpu_seconds` counts the processes of the row (never the shared Redis server), so it stays
    put when other tenants of the machine take CPU away. With `--repeat`, this is the round of
    median rate, and `rounds` holds every round's rate.
    """

    jobs: int
    seconds: float
    how: str
    cpu_seconds: float | None = None
    rounds: tuple[float, ...] = ()

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else math.inf

    @property
    def cpu_ms_per_job(self) -> float | None:
        return None if self.cpu_seconds is None else 1000 * self.cpu_seconds / self.jobs

    @property
    def cores(self) -> float | None:
        """How many CPUs the row kept busy on average."""
        if self.cpu_seconds is None or self.seconds <= 0:
            return None
        return self.cpu_seconds / self.seconds


def median_round(rates: list[Rate]) -> Rate:
    """The round of median rate (the lower one of an even count), knowing every round's rate."""
    ordered = sorted(rates, key=lambda rate: rate.per_second)
    middle = ordered[(len(ordered) - 1) // 2]
    return replace(middle, rounds=tuple(rate.per_second for rate in rates))


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least `fraction` of them at or below."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Latency:
    """Submit-to-result times of single jobs sent one after another to an idle service."""

    samples_ms: tuple[float, ...]
    how: str

    @property
    def p50_ms(self) -> float:
        return percentile(list(self.samples_ms), 0.50)

    @property
    def p99_ms(self) -> float:
        return percentile(list(self.samples_ms), 0.99)


@dataclass(frozen=True)
class Rss:
    """VmRSS of each worker pool process (pid -> KiB) before and after `jobs` certificates."""

    before_kib: dict[int, int]
    after_kib: dict[int, int]
    jobs: int
    how: str

    @property
    def total_before_kib(self) -> int:
        return sum(self.before_kib.values())

    @property
    def total_after_kib(self) -> int:
        return sum(self.after_kib.get(pid, 0) for pid in self.before_kib)

    @property
    def growth(self) -> float:
        """After over before, for the processes alive at both readings."""
        return self.total_after_kib / self.total_before_kib if self.total_before_kib else math.nan


@dataclass(frozen=True)
class Missing:
    """A row that was not measured: skipped, or a tool that is not installed here."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """A row whose measurement broke; the run exits non-zero."""

    reason: str


Outcome = Rate | Latency | Rss | Missing | Failed


# The lint rows by profile: (lint on, lint off), the profile's own linter in the first.
LINT_ROWS: dict[str, tuple[Row, Row]] = {
    "server_cert": (Row.LINT_SERVER_ON, Row.LINT_SERVER_OFF),
    "usr_cert": (Row.LINT_USR_ON, Row.LINT_USR_OFF),
    "tls_server": (Row.LINT_TLS_ON, Row.LINT_TLS_OFF),
}


class BenchError(Exception):
    """A row cannot be measured, or what it measured is wrong (a refused job, a bad count)."""

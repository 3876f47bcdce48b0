"""The results as tables: rates and ratios, the targets of issue 4, and BENCHMARKS.md."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from bench.machine import Machine
from bench.rows import (
    LINT_ROWS,
    PARALLELISM,
    Failed,
    Latency,
    Missing,
    Outcome,
    Rate,
    Row,
    Rss,
)

TARGET_N = 20_000
SECTION_START = "<!-- what-bounds-it:start (hand-written; `python -m bench` keeps it) -->"
SECTION_END = "<!-- what-bounds-it:end -->"
_SECTION = re.compile(r"<!-- what-bounds-it:start.*?-->.*?<!-- what-bounds-it:end -->", re.DOTALL)
DEFAULT_SECTION = f"""{SECTION_START}
## What bounds it

Not written yet: read the profile of the casign rows and say here what limits them.
{SECTION_END}"""


@dataclass(frozen=True)
class RunSettings:
    """How the run was asked for: what the header of BENCHMARKS.md states."""

    command: str
    count: int
    repeat: int
    leaf_key: str
    batch_size: int
    preload: int
    openssl_count: int
    cfssl_count: int


Basis = Literal["wall", "cpu"]


@dataclass
class Report:
    """Every row's outcome in one run, and the profiles taken (text lines)."""

    settings: RunSettings
    machine: Machine
    outcomes: dict[Row, Outcome] = field(default_factory=dict)
    profile_lines: list[str] = field(default_factory=list)
    scaling_lines: list[str] = field(default_factory=list)
    load_averages: list[str] = field(default_factory=list)  # at the start and at the end

    def rate(self, row: Row, basis: Basis = "wall") -> float | None:
        """The measured rate, or (`cpu`) what the row's CPU time allows on its own cores."""
        outcome = self.outcomes.get(row)
        if not isinstance(outcome, Rate):
            return None
        return outcome.per_second if basis == "wall" else cpu_bound_rate(row, outcome)

    def ratio(
        self, row: Row, over: Row, factor: float = 1.0, basis: Basis = "wall"
    ) -> float | None:
        """rate(row) / (factor x rate(over)), when both were measured."""
        numerator, denominator = self.rate(row, basis), self.rate(over, basis)
        if numerator is None or not denominator:
            return None
        return numerator / (factor * denominator)

    @property
    def failed(self) -> list[Row]:
        return [row for row, outcome in self.outcomes.items() if isinstance(outcome, Failed)]


def cpu_bound_rate(row: Row, rate: Rate) -> float | None:
    """PARALLELISM[row] / CPU seconds per job: the rate with the row's cores to itself."""
    if rate.cpu_seconds is None or rate.cpu_seconds <= 0:
        return None
    return PARALLELISM.get(row, 1) * rate.jobs / rate.cpu_seconds


def _times(value: float | None, text: Callable[[float], str]) -> str:
    return "" if value is None or math.isnan(value) else text(value)


def compared(report: Report, row: Row) -> str:
    """The ratio a row is read against (wall-clock rates), as text."""
    r = report.ratio
    match row:
        case Row.MINIMAL_RSA:
            return _times(r(row, Row.SIGN_ONLY_RSA), lambda v: f"{v:.2f} x sign only")
        case Row.MINIMAL_P256:
            return _times(r(row, Row.SIGN_ONLY_P256), lambda v: f"{v:.2f} x sign only")
        case Row.LIMIT_RSA:
            return _times(r(row, Row.MINIMAL_RSA), lambda v: f"{v:.2f} x minimal pipeline")
        case Row.LIMIT_P256:
            return _times(r(row, Row.MINIMAL_P256), lambda v: f"{v:.2f} x minimal pipeline")
        case Row.CASIGN_RSA:
            return _times(r(row, Row.LIMIT_RSA, 2), lambda v: f"{v:.2f} x (2 x limit)")
        case Row.CASIGN_PRELOADED:
            return _times(r(row, Row.CASIGN_RSA), lambda v: f"{v:.2f} x empty index")
        case Row.CASIGN_SEALED:
            return _times(r(row, Row.CASIGN_RSA), lambda v: f"{v:.2f} x open")
        case Row.EST:
            return _times(r(row, Row.CASIGN_RSA), lambda v: f"{v:.2f} x Producer.submit_many")
        case Row.CASIGN_P256:
            return _times(r(row, Row.LIMIT_P256, 2), lambda v: f"{v:.2f} x (2 x limit)")
        case Row.SCALE_TWO:
            return _times(r(row, Row.SCALE_ONE), lambda v: f"{v:.2f} x 1 worker")
        case Row.CASIGN_SOFTHSM:
            return _times(r(row, Row.RAW_PKCS11_2), lambda v: f"{v:.2f} x raw, 2 processes")
        case Row.RAW_PKCS11_2:
            return _times(r(row, Row.RAW_PKCS11_1), lambda v: f"{v:.2f} x 1 process")
        case Row.OPENSSL_CA | Row.CFSSL:
            return _times(r(Row.CASIGN_RSA, row), lambda v: f"casign RSA-2048 = {v:.1f} x")
        case Row.OCSP_CACHED:
            return _times(r(row, Row.OCSP_NONCE), lambda v: f"{v:.1f} x signed each")
        case Row.LINT_SERVER_ON | Row.LINT_USR_ON | Row.LINT_TLS_ON:
            (off,) = [rows[1] for rows in LINT_ROWS.values() if rows[0] is row]
            return _times(r(row, off), lambda v: f"{v:.2f} x lint off")
        case _:
            return ""


COLUMNS = ("row", "jobs", "s", "rate", "CPU ms/job", "cores", "CPU-bound", "compared", "how")


def _cells(report: Report, row: Row) -> list[str]:
    """The cells of one row, after its name, in COLUMNS order."""
    outcome = report.outcomes.get(row, Missing("not run"))
    match outcome:
        case Rate():
            spread = (
                f" ({min(outcome.rounds):,.0f}-{max(outcome.rounds):,.0f})"
                if len(outcome.rounds) > 1
                else ""
            )
            return [
                f"{outcome.jobs:,}",
                f"{outcome.seconds:.2f}",
                f"{outcome.per_second:,.0f}/s{spread}",
                _times(outcome.cpu_ms_per_job, lambda v: f"{v:.3f}"),
                _times(outcome.cores, lambda v: f"{v:.2f}"),
                _times(cpu_bound_rate(row, outcome), lambda v: f"{v:,.0f}/s"),
                compared(report, row),
                outcome.how,
            ]
        case Latency():
            return [
                f"{len(outcome.samples_ms):,}",
                f"{sum(outcome.samples_ms) / 1000:.2f}",
                f"p50 {outcome.p50_ms:.1f} ms, p99 {outcome.p99_ms:.1f} ms",
                "",
                "",
                "",
                "",
                outcome.how,
            ]
        case Rss():
            mib_before = outcome.total_before_kib / 1024
            mib_after = outcome.total_after_kib / 1024
            return [
                f"{outcome.jobs:,}",
                "",
                f"{mib_before:.1f} -> {mib_after:.1f} MiB",
                "",
                "",
                "",
                _times(outcome.growth, lambda v: f"{v:.3f} x before"),
                outcome.how,
            ]
        case Missing():
            return ["", "", "not measured", "", "", "", "", outcome.reason]
        case Failed():
            return ["", "", "FAILED", "", "", "", "", outcome.reason]


@dataclass(frozen=True)
class TargetCheck:
    """One target of issue 4, on wall-clock rates and, where it has one, on CPU-bound rates."""

    target: str
    required: str
    measured: str
    met: bool | None
    cpu_measured: str = ""
    cpu_met: bool | None = None


def _shown(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == " x":
        return f"{value:,.1f} x"
    return f"{value:.2f}{unit}"


def _at_least(bound: float) -> Callable[[float], bool]:
    return lambda value: value >= bound


def _below(bound: float) -> Callable[[float], bool]:
    return lambda value: value < bound


def _check(
    target: str,
    required: str,
    ok: Callable[[float], bool],
    unit: str,
    wall: float | None,
    cpu: float | None = None,
) -> TargetCheck:
    def judged(value: float | None) -> tuple[str, bool | None]:
        if value is None or math.isnan(value):
            return "", None
        return _shown(value, unit), ok(value)

    measured, met = judged(wall)
    cpu_measured, cpu_met = judged(cpu)
    return TargetCheck(target, required, measured, met, cpu_measured, cpu_met)


def target_checks(report: Report) -> list[TargetCheck]:
    """Each target of issue 4 against what this run measured."""
    r = report.ratio
    latency = report.outcomes.get(Row.LATENCY)
    rss = report.outcomes.get(Row.WORKER_RSS)
    preload = report.settings.preload
    ratios = (
        ("casign RSA-2048 / (2 x limit RSA-2048)", Row.CASIGN_RSA, Row.LIMIT_RSA, 2, 0.70, ""),
        ("casign RSA-2048 / openssl ca", Row.CASIGN_RSA, Row.OPENSSL_CA, 1, 25, " x"),
        ("casign RSA-2048 / cfssl serve", Row.CASIGN_RSA, Row.CFSSL, 1, 3, " x"),
        (
            "casign SoftHSM / raw PKCS#11, 2 processes",
            Row.CASIGN_SOFTHSM,
            Row.RAW_PKCS11_2,
            1,
            0.70,
            "",
        ),
        (
            f"casign, {preload:,} more index entries / empty index",
            Row.CASIGN_PRELOADED,
            Row.CASIGN_RSA,
            1,
            0.90,
            "",
        ),
        ("casign EST / Producer.submit_many (issue 12)", Row.EST, Row.CASIGN_RSA, 1, 0.80, ""),
        (
            "limit RSA-2048 / minimal pipeline (issue 14)",
            Row.LIMIT_RSA,
            Row.MINIMAL_RSA,
            1,
            0.85,
            "",
        ),
        (
            "limit P-256 / minimal pipeline (issue 14)",
            Row.LIMIT_P256,
            Row.MINIMAL_P256,
            1,
            0.85,
            "",
        ),
        (
            "casign RSA-2048 / (2 x minimal pipeline) (issue 14)",
            Row.CASIGN_RSA,
            Row.MINIMAL_RSA,
            2,
            0.80,
            "",
        ),
        (
            "casign P-256 / (2 x minimal pipeline) (issue 14)",
            Row.CASIGN_P256,
            Row.MINIMAL_P256,
            2,
            0.80,
            "",
        ),
        (
            "casign sealed, ACL users / open (issue 10)",
            Row.CASIGN_SEALED,
            Row.CASIGN_RSA,
            1,
            0.90,
            "",
        ),
    )
    checks = [
        _check(
            name,
            f">= {least:g}",
            _at_least(least),
            unit,
            r(row, over, factor),
            r(row, over, factor, "cpu"),
        )
        for name, row, over, factor, least, unit in ratios
    ]
    checks.insert(
        3,
        _check(
            "casign P-256 rate",
            ">= 4,000/s",
            lambda v: v >= 4000,
            "/s",
            report.rate(Row.CASIGN_P256),
            report.rate(Row.CASIGN_P256, "cpu"),
        ),
    )
    checks.append(
        _check(
            f"worker RSS after / before ({rss.jobs:,} certificates)"
            if isinstance(rss, Rss)
            else "worker RSS after / before",
            "<= 1.10 (flat)",
            lambda v: v <= 1.10,
            "",
            rss.growth if isinstance(rss, Rss) else None,
        )
    )
    for name, required, limit, value in (
        ("single-job latency p50", "< 20 ms", 20.0, "p50_ms"),
        ("single-job latency p99", "< 50 ms", 50.0, "p99_ms"),
    ):
        checks.append(
            _check(
                name,
                required,
                _below(limit),
                " ms",
                getattr(latency, value) if isinstance(latency, Latency) else None,
            )
        )
    return checks


def _met(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: ""}[met]


TARGET_COLUMNS = ("target", "required", "measured", "met", "CPU-bound", "met (CPU-bound)")


def _target_cells(check: TargetCheck) -> list[str]:
    return [
        check.target,
        check.required,
        check.measured,
        _met(check.met),
        check.cpu_measured,
        _met(check.cpu_met),
    ]


LEGEND = (
    "rate: jobs / wall seconds (with --repeat, the median round and the range); CPU ms/job: "
    "CPU time of the row's own processes per job (workers, producer, openssl, cfssl; never the "
    "shared Redis server); cores: CPUs the row kept busy on average; CPU-bound: the row's "
    "parallelism (1, or 2 for casign, cfssl and 2 PKCS#11 processes) / CPU per job, the rate "
    "it would reach with its cores to itself, which other tenants of the machine do not move. "
    "lint rows: the limit row on the first --lint-count CSRs under each profile, with its "
    "pkilint linter (server_cert and usr_cert: RFC 5280, tls_server: CA/B Forum BR) and with "
    "lint off; the limit row itself is server_cert with its linter."
)


def print_tables(report: Report, console: Console) -> None:
    rates = Table(title=f"casign benchmark, N = {report.settings.count:,}")
    for name in COLUMNS:
        rates.add_column(
            name,
            justify="left" if name in {"row", "compared", "how"} else "right",
            no_wrap=name != "how",
        )
    for row in Row:
        rates.add_row(row.value, *_cells(report, row))
    console.print(rates)
    console.print(LEGEND, highlight=False)
    targets = Table(title="targets of issue 4")
    for name in TARGET_COLUMNS:
        targets.add_column(name, no_wrap=True)
    for check in target_checks(report):
        cells = _target_cells(check)
        for index, met in ((3, check.met), (5, check.cpu_met)):
            style = {True: "green", False: "red", None: "dim"}[met]
            cells[index] = f"[{style}]{cells[index]}[/{style}]"
        targets.add_row(*cells)
    console.print(targets)
    if report.settings.count < TARGET_N:
        console.print(f"N < {TARGET_N:,}: the targets are stated for N >= {TARGET_N:,}.")
    for line in [*report.scaling_lines, *report.profile_lines]:
        console.print(line, markup=False, highlight=False)


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown(report: Report, kept_section: str) -> str:
    """BENCHMARKS.md: how the run was made, the two tables, the profile, the kept section."""
    settings, machine = report.settings, report.machine
    lines = [
        "# Benchmarks",
        "",
        "Written by `python -m bench` (rewritten by every full run or `--write`, except the",
        "hand-written section at the end). The machine is shared and noisy: read the ratios",
        "between rows of one run, and the CPU-bound column, rather than the absolute rates.",
        "",
        f"- Run: `{settings.command}`, {machine.when}",
        f"- Machine: {machine.cpus} CPUs, {machine.cpu_model}",
        f"- Commit: {machine.commit}",
        "- Load average (1 / 5 / 15 min) at start and end: " + "; ".join(report.load_averages),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in machine.versions.items()),
        f"- Workload: N = {settings.count:,} CSRs ({settings.leaf_key} leaf key shared by all, "
        "distinct CNs), made before any timing; every row signs the same CSRs with the guide's "
        f"server_cert profile. `openssl ca` signs the first {settings.openssl_count:,} of them, "
        f"cfssl the first {settings.cfssl_count:,}. Producer batches of {settings.batch_size}.",
        f"- Rounds: {settings.repeat}, interleaved (limit, sign only, casign, ...).",
        "",
        "## Rates",
        "",
        _markdown_row(COLUMNS),
        "|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    lines.extend(_markdown_row([row.value, *_cells(report, row)]) for row in Row)
    lines += [
        "",
        LEGEND,
        "",
        "## Targets of issue 4",
        "",
        _markdown_row(TARGET_COLUMNS),
        "|---|---|--:|---|--:|---|",
    ]
    lines.extend(_markdown_row(_target_cells(check)) for check in target_checks(report))
    if settings.count < TARGET_N:
        lines += ["", f"N < {TARGET_N:,}: the targets are stated for N >= {TARGET_N:,}."]
    if report.scaling_lines:
        lines += ["", "## Scaling out (written by the run)", "", *report.scaling_lines]
    if report.profile_lines:
        lines += ["", "## Profile (py-spy, written by the run)", "", "```", *report.profile_lines]
        lines += ["```"]
    lines += ["", kept_section, ""]
    return "\n".join(lines)


def write_markdown(report: Report, path: Path) -> None:
    """Rewrite `path` whole, keeping its hand-written "What bounds it" section if it has one."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    found = _SECTION.search(existing)
    path.write_text(markdown(report, found.group(0) if found else DEFAULT_SECTION), "utf-8")

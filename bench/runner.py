"""One benchmark run: workload and CAs first, then every row in turn, the report, the clean-up."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import shlex
import signal
import sys
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import redis
from rich.console import Console

from bench.authorities import (
    INTERMEDIATE_LABEL,
    BenchAuthority,
    make_file_authority,
    make_softhsm_authority,
    softhsm_environment,
    softhsm_missing,
)
from bench.est_row import (
    DEFAULT_CLIENTS,
    EstFrontEnd,
    measure_est,
    measure_est_latency,
    running_est,
)
from bench.inprocess import (
    measure_limit,
    measure_minimal_and_limit,
    measure_sign_only,
    with_lint,
)
from bench.machine import describe_machine, load_average
from bench.ocsp_rate import measure_ocsp, running_ocsp
from bench.peers import (
    cfssl_missing,
    cfssl_server,
    measure_cfssl,
    measure_openssl_ca,
    openssl_missing,
)
from bench.pkcs11_rate import raw_sign_rate
from bench.profiling import SAMPLE_RATE, py_spy_missing, py_spy_recording, summarise
from bench.report import Report, RunSettings, print_tables, write_markdown
from bench.rows import (
    LINT_ROWS,
    SKIP_GROUPS,
    BenchError,
    Failed,
    Latency,
    Missing,
    Outcome,
    Rate,
    Row,
    Rss,
    median_round,
)
from bench.scaling import (
    RedisLoad,
    measured,
    one_worker,
    own_redis,
    second_worker,
    store_capacity_lines,
)
from bench.service import (
    CasignService,
    delete_keys,
    measure_latency,
    measure_throughput,
    preload_index,
    running_service,
)
from bench.workload import LEAF_KEY_TYPES, Workload, make_workload
from core.keys import KeyType
from store.results import ResultsStore
from worker.authority import SigningAuthority, load_authority

DEFAULT_REDIS_URL = os.environ.get("CASIGN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MIN_TABLE_WIDTH = 200
DEFAULT_REPORT = Path("BENCHMARKS.md")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure casign against its signing limit, `openssl ca` and cfssl "
        "on the same CSRs and print the table; a full run (or --write) writes it to "
        "BENCHMARKS.md.",
    )
    parser.add_argument("--count", type=int, default=20_000, help="CSRs per row (N)")
    parser.add_argument("--latency-jobs", type=int, default=200, help="single-job round trips (M)")
    parser.add_argument(
        "--skip",
        nargs="+",
        action="extend",
        default=[],
        choices=sorted(SKIP_GROUPS),
        metavar="ROW",
        help=f"rows not to measure: {', '.join(sorted(SKIP_GROUPS))}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"Markdown file to rewrite (giving it asks for the write; default {DEFAULT_REPORT})",
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"write the report to --out (default: only for a full run, every size at its "
        f"default and no row skipped, or when --out is given; a quick `--count 200` run never "
        f"rewrites {DEFAULT_REPORT})",
    )
    parser.add_argument(
        "--preload-index",
        type=int,
        default=1_000_000,
        metavar="K",
        help="index entries to add before rerunning the casign row (0: not measured)",
    )
    parser.add_argument(
        "--lint-count", type=int, default=2000, help="CSRs per lint on/off row of each profile"
    )
    parser.add_argument("--openssl-count", type=int, default=300, help="CSRs for `openssl ca`")
    parser.add_argument("--cfssl-count", type=int, default=3000, help="CSRs for cfssl serve")
    parser.add_argument("--batch-size", type=int, default=250, help="jobs per queue message")
    parser.add_argument(
        "--est-clients",
        type=int,
        default=DEFAULT_CLIENTS,
        help="concurrent EST clients of the casign EST row",
    )
    parser.add_argument("--leaf-key", choices=LEAF_KEY_TYPES, default="rsa2048")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of each rate row, interleaved; the table shows the median round",
    )
    parser.add_argument("--hsm-seconds", type=float, default=3.0, help="raw PKCS#11 loop time")
    parser.add_argument("--redis", default=DEFAULT_REDIS_URL, help="broker and store URL")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="rerun the casign RSA-2048 row under py-spy and write the stacks to DIR",
    )
    args = parser.parse_args(argv)
    for name in (
        "count", "latency_jobs", "batch_size", "openssl_count", "cfssl_count", "repeat",
        "est_clients", "lint_count",
    ):  # fmt: skip
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.preload_index < 0:
        parser.error("--preload-index must not be negative")
    args.report_path = report_path(args, parser)
    return args


# What makes a run partial: its table would not be comparable with the committed one.
_SIZE_OPTIONS = (
    "count", "latency_jobs", "skip", "preload_index", "lint_count", "openssl_count",
    "cfssl_count", "batch_size", "est_clients", "leaf_key", "hsm_seconds",
)  # fmt: skip


def report_path(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path | None:
    """Where this run writes its Markdown: --out or BENCHMARKS.md when asked (--write, --out)
    or for a full run; None for a partial run not asked to, or with --no-write."""
    if args.write is False:
        return None
    full = all(getattr(args, name) == parser.get_default(name) for name in _SIZE_OPTIONS)
    if args.write or args.out is not None or full:
        return args.out or DEFAULT_REPORT
    return None


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the ExitStack stops workers and removes keys


class Run:
    """The state of one run: what to skip, where to write, and the report being filled."""

    def __init__(self, args: argparse.Namespace, report: Report, console: Console) -> None:
        self.args = args
        self.report = report
        self.console = console
        self.skipped = {row: name for name in args.skip for row in SKIP_GROUPS[name]}
        self.run_id = f"casign-bench-{uuid.uuid4().hex[:10]}"
        self.rounds: dict[Row, list[Rate]] = {}

    @property
    def repeat(self) -> int:
        repeat: int = self.args.repeat
        return repeat

    def wants(self, *rows: Row) -> bool:
        return any(row not in self.skipped for row in rows)

    def set_missing(self, rows: Sequence[Row], reason: str) -> None:
        for row in rows:
            self.report.outcomes.setdefault(row, Missing(reason))

    def measure(
        self, row: Row, measurement: Callable[[], Outcome], round_: int | None = None
    ) -> Outcome:
        """Run one row (or one round of it) unless skipped; a failure is kept, the run goes on."""
        if row in self.skipped:
            outcome: Outcome = Missing(f"skipped (--skip {self.skipped[row]})")
            self.report.outcomes[row] = outcome
            return outcome
        if isinstance(self.report.outcomes.get(row), Failed):
            return Missing("failed in an earlier round")
        label = row.value
        if round_ is not None and self.repeat > 1:
            label += f" (round {round_ + 1} of {self.repeat})"
        self.console.print(f"[bold]{label}[/] ...", highlight=False)
        try:
            outcome = measurement()
        except BenchError as exc:
            outcome = Failed(str(exc))
        except Exception as exc:
            traceback.print_exc()
            outcome = Failed(f"{type(exc).__name__}: {exc}")
        self.console.print(f"  {label}: {_brief(outcome)}", highlight=False)
        if isinstance(outcome, Rate):
            self.rounds.setdefault(row, []).append(outcome)
            self.report.outcomes[row] = median_round(self.rounds[row])
        else:
            self.report.outcomes[row] = outcome
        return outcome

    def store(self, name: str) -> ResultsStore:
        return ResultsStore.from_url(self.args.redis, f"{self.run_id}:{name}")

    def queue(self, name: str) -> str:
        return f"{self.run_id}.queue.{name}"


def _brief(outcome: Outcome) -> str:
    match outcome:
        case Rate():
            return f"{outcome.jobs:,} in {outcome.seconds:.2f} s = {outcome.per_second:,.0f}/s"
        case Latency():
            return f"p50 {outcome.p50_ms:.1f} ms, p99 {outcome.p99_ms:.1f} ms"
        case Rss():
            return f"{outcome.total_before_kib} -> {outcome.total_after_kib} KiB"
        case Missing() | Failed():
            return f"{type(outcome).__name__.lower()}: {outcome.reason}"


def measure_in_process(
    run: Run,
    authority: BenchAuthority,
    signing: SigningAuthority,
    workload: Workload,
    rows: tuple[Row, Row, Row],
    round_: int,
) -> None:
    """One round of the minimal pipeline and the limit row (casign's pipeline in a loop), slice
    by slice in turn, then the sign-only row of one CA key, so their ratios share the machine's
    state."""
    minimal_row, limit_row, sign_row = rows
    tag = f"limit-{authority.name}-{round_}"
    store = run.store(tag)
    pair: list[Rate] = []

    def both() -> Rate:
        pair.extend(measure_minimal_and_limit(signing, store, workload, run.args.batch_size, tag))
        return pair[0]

    def limit() -> Rate:
        if not pair:
            raise BenchError("measured with the minimal pipeline's row, which failed")
        return pair[1]

    try:
        run.measure(minimal_row, both, round_)
        run.measure(limit_row, limit, round_)
    finally:
        delete_keys(store.client, f"{store.prefix}*")
        store.client.close()
    run.measure(sign_row, lambda: measure_sign_only(signing, workload), round_)


def measure_lint(run: Run, signing: SigningAuthority, workload: Workload, round_: int) -> None:
    """One round of the in-process limit per profile, with the profile's linter and without."""
    lint_workload = workload.head(run.args.lint_count)
    for profile, rows in LINT_ROWS.items():
        for row, lint in zip(rows, (True, False), strict=True):
            tag = f"lint-{profile}-{'on' if lint else 'off'}-{round_}"
            store = run.store(tag)
            linted = with_lint(signing, profile, lint)
            try:
                run.measure(
                    row,
                    functools.partial(
                        measure_limit,
                        linted,
                        store,
                        lint_workload,
                        run.args.batch_size,
                        tag,
                        profile,
                    ),
                    round_,
                )
            finally:
                delete_keys(store.client, f"{store.prefix}*")
                store.client.close()


@contextlib.contextmanager
def service(
    run: Run,
    authority: BenchAuthority,
    name: str,
    workload: Workload,
    work_dir: Path,
    needed: bool = True,
    sealed: bool = False,
) -> Iterator[CasignService | None]:
    """A running casign worker for `authority` when `needed`, else None; `sealed`: serving one
    listed producer, the worker and the producer on their own Redis users."""
    if not needed:
        yield None
        return
    what = ", sealed, ACL users" if sealed else ""
    run.console.print(f"starting a casign worker ({authority.name}{what}) ...")
    with running_service(
        authority,
        run.args.redis,
        f"{run.run_id}:{name}",
        run.queue(name),
        work_dir / f"worker-{name}.log",
        workload,
        sealed_in=work_dir / f"ca-{name}" if sealed else None,
    ) as started:
        yield started


def _jobs(outcome: Outcome) -> int:
    """Certificates a row's round had the worker sign."""
    if isinstance(outcome, Rate):
        return outcome.jobs
    if isinstance(outcome, Latency):
        return len(outcome.samples_ms) + 1
    return 0


def measure_rsa(run: Run, authority: BenchAuthority, workload: Workload, work_dir: Path) -> None:
    """Rounds of limit, sign only and casign RSA-2048, then latency, preloaded index, memory."""
    args = run.args
    limit_rows = (Row.MINIMAL_RSA, Row.LIMIT_RSA, Row.SIGN_ONLY_RSA)
    lint_rows = [row for rows in LINT_ROWS.values() for row in rows]
    wants_lint = run.wants(*lint_rows)
    signing = (
        load_authority(authority.folder.root) if run.wants(*limit_rows) or wants_lint else None
    )
    casign_rows = (Row.CASIGN_RSA, Row.LATENCY, Row.CASIGN_PRELOADED, Row.WORKER_RSS)
    needed = run.wants(*casign_rows, Row.EST, Row.EST_LATENCY)
    with (
        service(run, authority, "rsa", workload, work_dir, needed) as casign,
        service(
            run, authority, "sealed", workload, work_dir, run.wants(Row.CASIGN_SEALED), sealed=True
        ) as sealed,
        est_front_end(run, casign, work_dir) as front,
    ):
        rss_before = casign.pool_rss_kib() if casign else {}
        jobs = 0
        for round_ in range(run.repeat):
            if signing is not None and run.wants(*limit_rows):
                measure_in_process(run, authority, signing, workload, limit_rows, round_)
            if signing is not None and wants_lint:
                measure_lint(run, signing, workload, round_)
            if casign is not None:
                outcome = run.measure(
                    Row.CASIGN_RSA,
                    functools.partial(
                        measure_throughput, casign, workload, f"rsa-{round_}", args.batch_size
                    ),
                    round_,
                )
                jobs += _jobs(outcome)
            if sealed is not None:  # interleaved with the open row: the boundary's cost
                run.measure(
                    Row.CASIGN_SEALED,
                    functools.partial(_sealed_rate, sealed, workload, round_, args.batch_size),
                    round_,
                )
            if casign is not None and front is not None:  # interleaved: the ratio's two rows
                outcome = run.measure(
                    Row.EST,
                    functools.partial(
                        measure_est, front, casign, workload, args.est_clients, f"round{round_}"
                    ),
                    round_,
                )
                jobs += _jobs(outcome)
        if casign is None:
            return
        if front is not None:
            outcome = run.measure(
                Row.EST_LATENCY,
                lambda: measure_est_latency(front, casign, workload, args.latency_jobs, "latency"),
            )
            jobs += _jobs(outcome)
        outcome = run.measure(
            Row.LATENCY, lambda: measure_latency(casign, workload, args.latency_jobs, "latency")
        )
        jobs += _jobs(outcome)
        if args.preload_index == 0:
            run.set_missing([Row.CASIGN_PRELOADED], "not measured (--preload-index 0)")
        else:
            outcome = run.measure(Row.CASIGN_PRELOADED, lambda: _preloaded(run, casign, workload))
            jobs += _jobs(outcome)
        run.measure(Row.WORKER_RSS, lambda: _rss(rss_before, casign.pool_rss_kib(), jobs))
        if args.profile is not None and Row.CASIGN_RSA not in run.skipped:
            profile_casign(run, casign, workload, args.profile)


@contextlib.contextmanager
def est_front_end(
    run: Run, casign: CasignService | None, work_dir: Path
) -> Iterator[EstFrontEnd | None]:
    """`casign est` on the casign service when an EST row is wanted, else None.

    Its clients: one per round and one for the latency row, so that each enrolls new jobs.
    """
    if casign is None or not run.wants(Row.EST, Row.EST_LATENCY):
        yield None
        return
    tags = [f"round{round_}" for round_ in range(run.repeat)] + ["latency"]
    run.console.print(f"starting casign est ({run.args.est_clients} clients) ...")
    with contextlib.ExitStack() as stack:
        front: EstFrontEnd | None = None
        try:
            front = stack.enter_context(running_est(casign, work_dir, tags, run.args.est_clients))
        except BenchError as exc:
            for row in (Row.EST, Row.EST_LATENCY):
                run.report.outcomes[row] = Failed(str(exc))
        yield front


def _sealed_rate(sealed: CasignService, workload: Workload, round_: int, batch_size: int) -> Rate:
    """The casign row on a worker that serves one listed producer, each on its own Redis user."""
    rate = measure_throughput(sealed, workload, f"sealed-{round_}", batch_size)
    return dataclasses.replace(
        rate,
        how=f"as casign RSA-2048, every batch sealed (producers.toml), worker and producer on "
        f"their own Redis ACL users; {rate.how}",
    )


def _preloaded(run: Run, casign: CasignService, workload: Workload) -> Rate:
    """The casign row again, on a store holding `--preload-index` more index entries."""
    count = run.args.preload_index
    seconds = preload_index(casign.store, count)
    run.console.print(f"  added {count:,} index entries in {seconds:.1f} s", highlight=False)
    rate = measure_throughput(casign, workload, "preloaded", run.args.batch_size)
    return dataclasses.replace(
        rate,
        how=f"as casign RSA-2048 (1 round), the store already holding {count:,} more index entries",
    )


def _rss(before: dict[int, int], after: dict[int, int], jobs: int) -> Rss:
    if set(before) != set(after):
        raise BenchError(f"the pool processes changed from {sorted(before)} to {sorted(after)}")
    return Rss(before, after, jobs, "VmRSS of the worker's pool processes, summed")


def profile_casign(run: Run, casign: CasignService, workload: Workload, directory: Path) -> None:
    """The casign RSA-2048 row again, with py-spy sampling the worker and this producer."""
    missing = py_spy_missing()
    if missing:
        run.report.profile_lines.append(f"no profile: {missing}")
        return
    directory.mkdir(parents=True, exist_ok=True)
    worker_raw, producer_raw = directory / "worker.raw.txt", directory / "producer.raw.txt"
    for stale in (worker_raw, producer_raw):
        stale.unlink(missing_ok=True)
    run.console.print("profiling a rerun of casign RSA-2048 with py-spy ...")
    with (
        py_spy_recording(casign.main_pid, worker_raw, subprocesses=True),
        py_spy_recording(os.getpid(), producer_raw, subprocesses=False),
    ):
        rate = measure_throughput(casign, workload, "profiled", run.args.batch_size)
    main_pid = casign.main_pid
    summaries = [
        summarise(worker_raw, "worker pool processes", lambda pid: pid != main_pid),
        summarise(worker_raw, "worker main process (Celery consumer)", lambda pid: pid == main_pid),
        summarise(producer_raw, "producer (this process)"),
    ]
    lines = [
        f"casign RSA-2048 rerun under py-spy at {SAMPLE_RATE} Hz ({rate.jobs:,} jobs in "
        f"{rate.seconds:.1f} s, {rate.per_second:,.0f}/s with py-spy attached); "
        f"raw stacks in {directory}",
    ]
    for summary in summaries:
        lines += ["", *summary.lines()]
    run.report.profile_lines.extend(lines)


def measure_p256(run: Run, authority: BenchAuthority, workload: Workload, work_dir: Path) -> None:
    """Rounds of limit, sign only and casign with a P-256 CA key."""
    limit_rows = (Row.MINIMAL_P256, Row.LIMIT_P256, Row.SIGN_ONLY_P256)
    signing = load_authority(authority.folder.root) if run.wants(*limit_rows) else None
    needed = run.wants(Row.CASIGN_P256)
    with service(run, authority, "p256", workload, work_dir, needed) as casign:
        for round_ in range(run.repeat):
            if signing is not None:
                measure_in_process(run, authority, signing, workload, limit_rows, round_)
            if casign is not None:
                run.measure(
                    Row.CASIGN_P256,
                    functools.partial(
                        measure_throughput, casign, workload, f"p256-{round_}", run.args.batch_size
                    ),
                    round_,
                )


def measure_scaling(
    run: Run, authority: BenchAuthority, workload: Workload, work_dir: Path
) -> None:
    """One worker of one process, then two on one queue, on a Redis of the rows' own."""
    loads: list[RedisLoad] = []
    rates: dict[Row, Rate] = {}

    def scaled(row: Row, service: CasignService, how: str) -> Outcome:
        rate, load = measured(service, workload, row.name.lower(), run.args.batch_size, how)
        loads.append(load)
        rates[row] = rate
        return dataclasses.replace(rate, cpu_seconds=None)  # the second worker's CPU is not counted

    try:
        with (
            own_redis(work_dir / "redis-scaling") as redis_url,
            one_worker(authority, redis_url, run.run_id, workload, work_dir) as service,
        ):
            run.measure(
                Row.SCALE_ONE,
                lambda: scaled(Row.SCALE_ONE, service, "1 casign worker of 1 process, own Redis"),
            )
            with second_worker(service, work_dir):
                run.measure(
                    Row.SCALE_TWO,
                    lambda: scaled(
                        Row.SCALE_TWO,
                        service,
                        "2 casign workers of 1 process, one queue, own Redis",
                    ),
                )
    except BenchError as exc:
        run.set_missing([Row.SCALE_ONE, Row.SCALE_TWO], str(exc))
        return
    if len(rates) == 2:
        total = RedisLoad(
            sum(load.certificates for load in loads),
            sum(load.commands for load in loads),
            sum(load.cpu_seconds for load in loads),
        )
        run.report.scaling_lines.extend(
            store_capacity_lines(rates[Row.SCALE_ONE], rates[Row.SCALE_TWO], total)
        )


def measure_softhsm(run: Run, workload: Workload, work_dir: Path) -> None:
    """Rounds of the token's raw signing rate in 1 and 2 processes and of casign using it."""
    rows = (Row.RAW_PKCS11_1, Row.RAW_PKCS11_2, Row.CASIGN_SOFTHSM)
    missing = softhsm_missing()
    if missing:
        run.set_missing(rows, missing)
        return
    authority = make_softhsm_authority(work_dir / "softhsm")
    token = authority.token
    assert token is not None
    seconds = run.args.hsm_seconds
    needed = run.wants(Row.CASIGN_SOFTHSM)
    with (
        softhsm_environment(token),
        service(run, authority, "softhsm", workload, work_dir, needed) as casign,
    ):
        for round_ in range(run.repeat):
            for row, processes in ((Row.RAW_PKCS11_1, 1), (Row.RAW_PKCS11_2, 2)):
                run.measure(
                    row,
                    functools.partial(raw_sign_rate, token, INTERMEDIATE_LABEL, processes, seconds),
                    round_,
                )
            if casign is not None:
                run.measure(
                    Row.CASIGN_SOFTHSM,
                    functools.partial(
                        measure_throughput,
                        casign,
                        workload,
                        f"softhsm-{round_}",
                        run.args.batch_size,
                    ),
                    round_,
                )


def measure_peers(run: Run, authority: BenchAuthority, workload: Workload, work_dir: Path) -> None:
    """Rounds of `openssl ca` and `cfssl serve` with the RSA-2048 CA's intermediate."""
    args = run.args
    openssl_reason, cfssl_reason = openssl_missing(), cfssl_missing()
    if openssl_reason:
        run.set_missing([Row.OPENSSL_CA], openssl_reason)
    if cfssl_reason:
        run.set_missing([Row.CFSSL], cfssl_reason)
    cfssl_needed = cfssl_reason is None and run.wants(Row.CFSSL)
    intermediate = authority.folder.intermediate_certificate()
    with contextlib.ExitStack() as stack:
        port = (
            stack.enter_context(cfssl_server(authority.folder, work_dir / "cfssl"))
            if cfssl_needed
            else None
        )
        for round_ in range(run.repeat):
            if openssl_reason is None:
                run.measure(
                    Row.OPENSSL_CA,
                    functools.partial(
                        measure_openssl_ca,
                        authority.folder,
                        workload.head(args.openssl_count),
                        work_dir / f"openssl-{round_}",
                    ),
                    round_,
                )
            if port is not None:
                run.measure(
                    Row.CFSSL,
                    functools.partial(
                        measure_cfssl, port, workload.head(args.cfssl_count), intermediate
                    ),
                    round_,
                )


def measure_ocsp_rows(run: Run, authority: BenchAuthority, work_dir: Path) -> None:
    """Rounds of `casign ocsp` answering from its cache and signing for nonces."""
    with running_ocsp(
        authority.folder, run.args.redis, f"{run.run_id}:ocsp", work_dir / "ocsp.log"
    ) as server:
        for round_ in range(run.repeat):
            for row, nonce in ((Row.OCSP_CACHED, False), (Row.OCSP_NONCE, True)):
                run.measure(
                    row, functools.partial(measure_ocsp, server, run.args.count, nonce), round_
                )


def measure_all(run: Run, work_dir: Path) -> None:
    """Every row not skipped, one service at a time, on the same CSRs."""
    args = run.args
    console = run.console
    console.print(f"making {args.count:,} CSRs ({args.leaf_key} leaf key) ...")
    workload = make_workload(args.count, args.leaf_key)
    rsa_rows: tuple[Row, ...] = (
        Row.MINIMAL_RSA,
        Row.LIMIT_RSA,
        Row.SIGN_ONLY_RSA,
        Row.CASIGN_RSA,
        Row.CASIGN_SEALED,
    )
    rsa_rows += tuple(row for rows in LINT_ROWS.values() for row in rows)
    rsa_rows += (Row.CASIGN_PRELOADED, Row.LATENCY, Row.WORKER_RSS, Row.OPENSSL_CA, Row.CFSSL)
    rsa_rows += (Row.OCSP_CACHED, Row.OCSP_NONCE, Row.SCALE_ONE, Row.SCALE_TWO)
    p256_rows = (Row.MINIMAL_P256, Row.LIMIT_P256, Row.SIGN_ONLY_P256, Row.CASIGN_P256)
    console.print("making the CAs ...")
    rsa = (
        make_file_authority(work_dir / "ca-rsa", KeyType.RSA2048, "RSA-2048")
        if run.wants(*rsa_rows)
        else None
    )
    p256 = (
        make_file_authority(work_dir / "ca-p256", KeyType.P256, "P-256")
        if run.wants(*p256_rows)
        else None
    )
    if rsa is not None:
        measure_rsa(run, rsa, workload, work_dir)
    if p256 is not None:
        measure_p256(run, p256, workload, work_dir)
    if rsa is not None and run.wants(Row.SCALE_ONE, Row.SCALE_TWO):
        measure_scaling(run, rsa, workload, work_dir)
    if run.wants(Row.CASIGN_SOFTHSM, Row.RAW_PKCS11_1, Row.RAW_PKCS11_2):
        measure_softhsm(run, workload, work_dir)
    if rsa is not None and run.wants(Row.OPENSSL_CA, Row.CFSSL):
        measure_peers(run, rsa, workload, work_dir)
    if rsa is not None and run.wants(Row.OCSP_CACHED, Row.OCSP_NONCE):
        measure_ocsp_rows(run, rsa, work_dir)
    for row, name in run.skipped.items():
        run.report.outcomes.setdefault(row, Missing(f"skipped (--skip {name})"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every row measured or was missing, 1 when a row failed."""
    args = parse_args(argv)
    stderr = Console(stderr=True)
    stdout = Console(width=None if sys.stdout.isatty() else MIN_TABLE_WIDTH)
    client = redis.Redis.from_url(args.redis, decode_responses=True, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        stderr.print(f"[red]bench: no Redis at {args.redis} ({exc})[/]")
        return 2
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    settings = RunSettings(
        command=command,
        count=args.count,
        repeat=args.repeat,
        leaf_key=args.leaf_key,
        batch_size=args.batch_size,
        preload=args.preload_index,
        openssl_count=min(args.openssl_count, args.count),
        cfssl_count=min(args.cfssl_count, args.count),
    )
    report = Report(settings, describe_machine(client), load_averages=[load_average()])
    run = Run(args, report, stderr)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(client.close)
            stack.callback(delete_keys, client, f"_kombu.binding.{run.run_id}*")
            stack.callback(delete_keys, client, f"{run.run_id}*")
            work_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="casign-bench-"))
            )
            measure_all(run, work_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)
    report.load_averages.append(load_average())
    print_tables(report, stdout)
    if args.report_path is not None:
        write_markdown(report, args.report_path)
        stderr.print(f"wrote {args.report_path}")
    else:
        stderr.print(
            f"{DEFAULT_REPORT} not written: a partial run (sizes or rows other than the full "
            "run's); give --write (and --out FILE) to write its report"
        )
    if report.failed:
        stderr.print(f"[red]failed rows: {', '.join(row.value for row in report.failed)}[/]")
        return 1
    return 0

"""`python -m bench.soak`: a long run through casign as users run it, memory sampled on the way.

N jobs (default 1,000,000) go through one `Producer` to a `casign worker` of 2 processes on a
redis-server of the run's own (so its memory is casign's alone). CSRs are made chunk by chunk in
a helper process while the previous chunk is signed, and each chunk's results are taken as they
come and checked (every job must be issued), so the producer holds one chunk at a time. Every
`--sample-every` certificates the run samples the RSS of the worker's main process, of each pool
process and of this (producer) process, and Redis `used_memory` and `dbsize`.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis
from cryptography import x509

from bench.authorities import make_file_authority
from bench.machine import load_average
from bench.rows import BenchError
from bench.scaling import own_redis
from bench.service import CasignService, rss_kib, running_service
from bench.workload import LEAF_KEY_TYPES, PROFILE, csr_chunk, leaf_key_pem, make_workload
from core.keys import KeyType
from core.messages import JobResult

REPO = Path(__file__).resolve().parents[1]
KEY_TYPES = {"p256": KeyType.P256, "rsa2048": KeyType.RSA2048}
DEFAULT_COUNT = 1_000_000
DEFAULT_CHUNK = 5_000
DEFAULT_BATCH_SIZE = 250
WARMUP_CSRS = 100
VERIFY_EVERY = 1000  # one certificate in this many is verified against the intermediate
# The CA setting (casign.toml) after which closed job records expire (worker/retention.py).
RETENTION_SETTING = "job_retention_days"


@dataclass(frozen=True)
class Sample:
    """What was measured once `certificates` were back, `elapsed` seconds into the run."""

    certificates: int
    elapsed: float
    rate: float  # certificates per second since the previous sample
    worker_main_kib: int
    pool_kib: tuple[int, ...]
    producer_kib: int
    used_memory: int
    bytes_per_1000: float
    dbsize: int


@dataclass(frozen=True)
class Baseline:
    """Memory before the first soak job (after the service's warm-up)."""

    worker_main_kib: int
    pool_kib: tuple[int, ...]
    producer_kib: int
    used_memory: int
    dbsize: int


class Sampler:
    """Takes a `Sample` of the service, this process and its Redis."""

    def __init__(self, service: CasignService, client: redis.Redis) -> None:
        self.service = service
        self.client = client
        self.baseline = Baseline(
            rss_kib(service.main_pid),
            self._pool(),
            rss_kib(os.getpid()),
            self._used_memory(),
            int(client.dbsize()),
        )
        self.start = time.perf_counter()
        self._last = (0, self.start)
        self.samples: list[Sample] = []
        self.breakdown = ""

    def _pool(self) -> tuple[int, ...]:
        return tuple(self.service.pool_rss_kib().values())

    def _used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def take(self, certificates: int) -> Sample:
        now = time.perf_counter()
        last_count, last_time = self._last
        used = self._used_memory()
        sample = Sample(
            certificates,
            now - self.start,
            (certificates - last_count) / max(now - last_time, 1e-9),
            rss_kib(self.service.main_pid),
            self._pool(),
            rss_kib(os.getpid()),
            used,
            (used - self.baseline.used_memory) / certificates * 1000,
            int(self.client.dbsize()),
        )
        self._last = (certificates, now)
        self.samples.append(sample)
        return sample


def set_retention(settings_path: Path, days: int) -> None:
    """Write `job_retention_days = days` into the CA's casign.toml (replacing the one `init`
    wrote)."""
    text = settings_path.read_text(encoding="utf-8")
    line = f"{RETENTION_SETTING} = {days}"
    pattern = re.compile(rf"^{RETENTION_SETTING}\s*=.*$", re.MULTILINE)
    text = pattern.sub(line, text) if pattern.search(text) else text.rstrip("\n") + f"\n{line}\n"
    settings_path.write_text(text, encoding="utf-8")


def retention_note(days: int | None) -> str:
    """One sentence on whether job records expire within the run, and so how Redis memory
    should behave."""
    if days is not None and days > 0:
        return (
            f"Retention: `{RETENTION_SETTING} = {days}` in casign.toml; job records older than "
            "that expire, so Redis memory per 1,000 certificates levels off once they do (a run "
            "shorter than that cannot show it; certificates, index and audit are the CA's "
            "records and are kept)."
        )
    return (
        f"Retention: `{RETENTION_SETTING}` is {'0 (kept for ever)' if days == 0 else 'the default, 30 days'}: "
        "no job record expires during the run, so Redis memory grows linearly with the "
        "certificates (a flat figure per 1,000 certificates, not a flat total)."
    )


# The store's keys that grow with every certificate (`store.keys`), besides one job hash each.
GROWING_KEYS = ("certs", "index", "index:order", "serials", "audit")
JOB_RECORDS_SAMPLED = 1000


def memory_breakdown(service: CasignService, client: redis.Redis, count: int) -> str:
    """Redis bytes per 1,000 certificates by key: the CA's records, and the job records."""
    parts = []
    for name in GROWING_KEYS:
        used = client.memory_usage(service.store.key(name), samples=0) or 0
        parts.append(f"`{name}` {used / count * 1000:,.0f}")
    step = max(1, count // JOB_RECORDS_SAMPLED)
    sampled = [
        client.memory_usage(service.store.job_key(f"soak-{index:07d}"), samples=0) or 0
        for index in range(0, count, step)
    ]
    job_bytes = sum(sampled) / len(sampled)
    parts.append(f"job records (`job:{{id}}`, one hash each) {job_bytes * 1000:,.0f}")
    return (
        "Redis bytes per 1,000 certificates by key (MEMORY USAGE at the end, job records from "
        f"{len(sampled):,} sampled): " + ", ".join(parts) + "."
    )


def _check(result: JobResult, issued: int, intermediate: x509.Certificate) -> None:
    """Every job issued; one certificate in VERIFY_EVERY verified against the intermediate."""
    if not result.ok or not result.certificate_pem:
        raise BenchError(
            f"soak: job {result.job_id} not issued after {issued:,} certificates: "
            f"{result.status} [{result.code}] {result.message}"
        )
    if issued % VERIFY_EVERY == 0:
        certificate = x509.load_pem_x509_certificate(result.certificate_pem.encode("ascii"))
        certificate.verify_directly_issued_by(intermediate)


def soak(
    service: CasignService,
    client: redis.Redis,
    args: argparse.Namespace,
) -> Sampler:
    """Run `args.count` jobs through one producer, sampling every `args.sample_every`."""
    key_pem = leaf_key_pem(args.key)
    before = service.store.count_issued()
    sampler = Sampler(service, client)
    print_baseline(sampler.baseline)
    chunk = min(args.chunk, args.count)
    starts = list(range(0, args.count, chunk))
    context = multiprocessing.get_context("spawn")
    issued = 0
    with (
        ProcessPoolExecutor(max_workers=1, mp_context=context) as maker,
        service.producer(args.batch_size) as producer,
    ):

        def make(first: int) -> Future[list[str]]:
            return maker.submit(csr_chunk, key_pem, first, min(chunk, args.count - first))

        upcoming = make(starts[0])
        for position, first in enumerate(starts):
            pems = upcoming.result()
            if position + 1 < len(starts):
                upcoming = make(starts[position + 1])  # made while this chunk is signed
            requests = [
                producer.request(pem, profile=PROFILE, job_id=f"soak-{first + offset:07d}")
                for offset, pem in enumerate(pems)
            ]
            del pems
            job_ids = producer.submit_many(requests)
            del requests
            for result in producer.results(job_ids, timeout=max(300.0, len(job_ids) / 10)):
                issued += 1
                _check(result, issued, service.intermediate)
                if issued % args.sample_every == 0 or issued == args.count:
                    print_sample(sampler.take(issued))
    recorded = service.store.count_issued() - before
    if recorded != args.count:
        raise BenchError(f"soak: {recorded:,} index entries for {args.count:,} jobs")
    sampler.breakdown = memory_breakdown(service, client, args.count)
    print(sampler.breakdown, flush=True)
    return sampler


def _kib(value: int) -> str:
    return f"{value:,}"


def _mib(value: int) -> str:
    return f"{value / 2**20:,.1f}"


HEADER = (
    "| certificates | s | rate since last | worker main KiB | pool processes KiB "
    "| producer KiB | Redis used_memory MiB | Redis bytes / 1,000 certs | dbsize |"
)
RULE = "|--:|--:|--:|--:|--:|--:|--:|--:|--:|"


def sample_line(sample: Sample) -> str:
    pool = " / ".join(_kib(value) for value in sample.pool_kib)
    return (
        f"| {sample.certificates:,} | {sample.elapsed:,.0f} | {sample.rate:,.0f}/s "
        f"| {_kib(sample.worker_main_kib)} | {pool} | {_kib(sample.producer_kib)} "
        f"| {_mib(sample.used_memory)} | {sample.bytes_per_1000:,.0f} | {sample.dbsize:,} |"
    )


def print_baseline(baseline: Baseline) -> None:
    pool = " / ".join(_kib(value) for value in baseline.pool_kib)
    print(
        f"before the run (after warm-up): worker main {_kib(baseline.worker_main_kib)} KiB, "
        f"pool {pool} KiB, producer {_kib(baseline.producer_kib)} KiB, Redis used_memory "
        f"{_mib(baseline.used_memory)} MiB, dbsize {baseline.dbsize:,}",
        flush=True,
    )
    print(HEADER)
    print(RULE, flush=True)


def print_sample(sample: Sample) -> None:
    print(sample_line(sample), flush=True)


def _growth(first: int, last: int) -> str:
    change = (last - first) / first * 100 if first else 0.0
    return f"{first:,} -> {last:,} KiB ({change:+.1f}%)"


def judgement(samples: Sequence[Sample]) -> str:
    """One line: RSS growth first -> last sample, Redis bytes per 1,000 certificates at the end."""
    first, last = samples[0], samples[-1]
    return (
        f"Judgement: from the first sample ({first.certificates:,}) to the last "
        f"({last.certificates:,}), worker main {_growth(first.worker_main_kib, last.worker_main_kib)}, "
        f"pool processes summed {_growth(sum(first.pool_kib), sum(last.pool_kib))}, "
        f"producer {_growth(first.producer_kib, last.producer_kib)}; Redis "
        f"{first.bytes_per_1000:,.0f} -> {last.bytes_per_1000:,.0f} bytes per 1,000 "
        f"certificates ({last.used_memory / 2**20:,.1f} MiB used for {last.certificates:,}), "
        f"{_marginal(first, last)}."
    )


def _marginal(first: Sample, last: Sample) -> str:
    """Redis bytes per 1,000 certificates between two samples (the queue's own share cancels)."""
    if last.certificates == first.certificates:
        return "one sample only"
    per_1000 = (last.used_memory - first.used_memory) / (last.certificates - first.certificates)
    return f"{per_1000 * 1000:,.0f} bytes per 1,000 between the first and last sample"


def fragment(args: argparse.Namespace, command: str, sampler: Sampler, note: str) -> str:
    """The Markdown the run writes: how it ran, the samples, the judgement and the note."""
    base = sampler.baseline
    total = sampler.samples[-1]
    lines = [
        f"Run: `{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.key} CA and leaf "
        f"keys, batches of {args.batch_size}, chunks of {min(args.chunk, args.count):,} CSRs, "
        f"2 worker processes, a redis-server of the run's own (unix socket, no persistence); "
        f"{total.certificates:,} certificates in {total.elapsed:,.0f} s "
        f"({total.certificates / total.elapsed:,.0f}/s); load average at start and end: "
        f"{args.load_start}; {load_average()}.",
        "",
        f"Before the run (after the warm-up): worker main {_kib(base.worker_main_kib)} KiB, "
        f"pool processes {' / '.join(_kib(value) for value in base.pool_kib)} KiB, producer "
        f"{_kib(base.producer_kib)} KiB, Redis used_memory {_mib(base.used_memory)} MiB, "
        f"dbsize {base.dbsize:,}.",
        "",
        HEADER,
        RULE,
        *(sample_line(sample) for sample in sampler.samples),
        "",
        judgement(sampler.samples),
        "",
        sampler.breakdown,
        "",
        note,
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak: N jobs through 2 worker processes, memory sampled along the way.",
    )
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="jobs in all")
    parser.add_argument(
        "--sample-every", type=int, default=None, help="certificates between samples (count/20)"
    )
    parser.add_argument("--key", choices=LEAF_KEY_TYPES, default="p256", help="CA and leaf key")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="CSRs made at a time")
    parser.add_argument(
        "--job-retention-days",
        type=int,
        default=None,
        help=f"written as {RETENTION_SETTING} to the CA's casign.toml (default: init's 30)",
    )
    parser.add_argument("--out", type=Path, default=None, help="Markdown fragment to write")
    args = parser.parse_args(argv)
    if args.count < 1 or args.batch_size < 1 or args.chunk < 1:
        parser.error("--count, --batch-size and --chunk must be at least 1")
    if args.sample_every is None:
        args.sample_every = max(1, args.count // 20)
    if args.sample_every < 1:
        parser.error("--sample-every must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; 0 when every job was issued, 1 when the run failed."""
    args = parse_args(argv)
    args.load_start = load_average()
    command = shlex.join(["python", "-m", "bench.soak", *(sys.argv[1:] if argv is None else argv)])
    note = retention_note(args.job_retention_days)
    print(note, flush=True)
    run_id = f"soak{os.getpid()}"
    try:
        with contextlib.ExitStack() as stack:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="casign-soak-")))
            redis_url = stack.enter_context(own_redis(work_dir / "redis"))
            client = redis.Redis.from_url(redis_url)
            stack.callback(client.close)
            authority = make_file_authority(work_dir / "ca", KEY_TYPES[args.key], args.key)
            if args.job_retention_days is not None:
                set_retention(authority.folder.settings_path, args.job_retention_days)
            print(f"starting a worker of 2 processes, {args.count:,} jobs to come ...", flush=True)
            service = stack.enter_context(
                running_service(
                    authority,
                    redis_url,
                    run_id,
                    f"{run_id}.queue",
                    work_dir / "worker.log",
                    make_workload(WARMUP_CSRS, args.key),
                )
            )
            sampler = soak(service, client, args)
    except (BenchError, TimeoutError) as exc:
        print(f"soak failed: {exc}", file=sys.stderr)
        return 1
    text = fragment(args, command, sampler, note)
    print()
    print(judgement(sampler.samples))
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

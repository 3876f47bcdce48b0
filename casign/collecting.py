"""Waiting for jobs and writing their certificates: a progress bar, silence explained, Ctrl-C kept."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from casign.cli_base import progress_bar, write_certificate
from casign.csr_files import read_csr_file
from casign.manifest import ManifestJob
from core.errors import ConfigurationError, Rejected, SigningError
from core.messages import JobResult, SignRequest
from producers.trust import ResultCheck, untrusted
from store.results import ResultsStore

# `submit` says why nothing happens after this long; a person waits about this long, too.
NO_WORKER_AFTER_SECONDS = 5.0
POLL_SECONDS = 1.0
_KNOWN_JOBS_SAMPLE = 1000


class CertificateFolder:
    """Where NAME.cert.pem and ca-chain.cert.pem go: 0444, never over a different certificate."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def prepare(self) -> None:
        """Make the folder, or say in one sentence why it cannot be written to."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot make the output folder {self.out} ({exc.strerror})"
            ) from None
        if not os.access(self.out, os.W_OK | os.X_OK):
            raise ConfigurationError(f"cannot write in the output folder {self.out}")

    def path(self, name: str) -> Path:
        return self.out / f"{name}.cert.pem"

    def holds_other(self, name: str, pem: str) -> bool:
        """True when NAME.cert.pem exists with another certificate than `pem`."""
        try:
            return self.path(name).read_bytes().strip() != pem.encode().strip()
        except FileNotFoundError:
            return False

    def write(self, name: str, pem: str) -> bool:
        """Write NAME.cert.pem unless another certificate is there; False if one is."""
        if self.holds_other(name, pem):
            return False
        if not self.path(name).exists():
            write_certificate(self.path(name), pem)
        return True

    def write_chain(self, pem: str | None) -> bool:
        """Write ca-chain.cert.pem (the chain the certificates were checked by); False if none."""
        if not pem:
            return False
        write_certificate(self.out / "ca-chain.cert.pem", pem)
        return True


@dataclass
class Collected:
    """What waiting came to: certificates written, refusals, and what is still out."""

    written: list[str] = field(default_factory=list)
    refused: list[JobResult] = field(default_factory=list)
    not_written: list[JobResult] = field(default_factory=list)  # another certificate in the way
    waiting: list[str] = field(default_factory=list)
    stopped: Literal["interrupted", "timeout"] | None = None


class NoWorkerWatch:
    """Says once, after `after` seconds in which no worker took any of the jobs, why that may be."""

    def __init__(
        self,
        store: ResultsStore,
        job_ids: Iterable[str],
        explain: Callable[[float], str],
        say: Callable[[str], None],
        after: float = NO_WORKER_AFTER_SECONDS,
    ) -> None:
        self._store = store
        self._job_ids = list(job_ids)[:_KNOWN_JOBS_SAMPLE]
        self._explain = explain
        self._say = say
        self._after = after
        self._heard = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="casign-no-worker", daemon=True)

    def heard(self) -> None:
        """A result arrived: a worker is there."""
        self._heard.set()

    def __enter__(self) -> NoWorkerWatch:
        if self._job_ids:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def _watch(self) -> None:
        if self._done.wait(self._after) or self._heard.is_set():
            return
        try:
            if self._store.known_jobs(self._job_ids):
                return  # a worker recorded one: it is signing
            message = self._explain(self._after)
        except SigningError:
            return  # the store is unreachable: the waiting loop reports that itself
        if not self._done.is_set():
            self._say(message)


def poll_store(
    store: ResultsStore, fingerprints: Mapping[str, str], timeout: float
) -> Iterator[JobResult]:
    """Yield each job's result as the store gets it, asking every POLL_SECONDS; TimeoutError after."""
    waiting = dict(fingerprints)
    deadline = time.monotonic() + timeout
    while waiting:
        for job_id, result in store.job_results(sorted(waiting), waiting).items():
            if result.fingerprint != waiting[job_id]:
                continue  # not the answer to this request
            del waiting[job_id]
            yield result
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{len(waiting)} job(s) have no result after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def manifest_requests(jobs: Iterable[ManifestJob]) -> dict[str, SignRequest | None]:
    """Each listed job's request, rebuilt from its CSR file to check its answer against; None
    for a job whose CSR file is gone or no longer the one its job was sent with."""
    requests: dict[str, SignRequest | None] = {}
    for job in jobs:
        try:
            pem = read_csr_file(Path(job.csr)).pem
            request = SignRequest(
                job_id=job.job_id,
                csr_pem=pem,
                profile=job.profile,
                days=job.days,
                san=list(job.san),
            )
        except (ConfigurationError, Rejected, ValueError):
            requests[job.job_id] = None
            continue
        requests[job.job_id] = request if request.fingerprint() == job.fingerprint else None
    return requests


def checked_results(
    results: Iterable[JobResult], requests: Mapping[str, SignRequest | None], check: ResultCheck
) -> Iterator[JobResult]:
    """Each result checked against its request (`producers.trust`); an issued one whose request
    is not at hand cannot be checked, and is reported untrusted."""
    for result in results:
        request = requests.get(result.job_id)
        if request is not None:
            yield check.check(result, request)
        elif result.ok:
            yield untrusted(result, "its CSR file is gone or changed, so its key cannot be checked")
        else:
            yield result


def gather(
    results: Iterable[JobResult],
    names: Mapping[str, str],
    folder: CertificateFolder,
    store: ResultsStore,
    explain_silence: Callable[[float], str],
    chain_pem: Callable[[], str | None],
) -> Collected:
    """Write each issued certificate as it comes, and the chain `chain_pem` gives (with a trust
    anchor: the one the certificates were checked by); stop cleanly on Ctrl-C or the timeout."""
    collected = Collected()
    waiting = set(names)
    chain_written = folder.write_chain(chain_pem())
    with progress_bar() as progress:
        task = progress.add_task("signing", total=len(names))

        def say(message: str) -> None:
            progress.console.print(
                f"casign: {message}", markup=False, highlight=False, soft_wrap=True
            )

        with NoWorkerWatch(store, names, explain_silence, say) as watch:
            try:
                for result in results:
                    watch.heard()
                    if result.job_id not in waiting:
                        continue
                    waiting.discard(result.job_id)
                    name = names[result.job_id]
                    if not result.ok or not result.certificate_pem:
                        collected.refused.append(result)
                    elif folder.write(name, result.certificate_pem):
                        collected.written.append(name)
                    else:
                        collected.not_written.append(result)
                    progress.advance(task)
            except KeyboardInterrupt:
                collected.stopped = "interrupted"
            except TimeoutError:
                collected.stopped = "timeout"
    if not chain_written and collected.written:
        folder.write_chain(chain_pem())
    collected.waiting = sorted(waiting)
    return collected

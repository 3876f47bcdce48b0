"""Which jobs `casign submit` sends, answers from the store, or waits for; checked before any is sent."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from casign.collecting import CertificateFolder
from casign.csr_files import CsrFile, read_csr_file
from casign.manifest import JobManifest
from core.errors import ConfigurationError, Rejected
from core.errors import RefusalCode as Code
from core.messages import JobResult, SignRequest, describe_validation_error
from producers import Producer


def new_request(
    producer: Producer,
    csr_pem: str,
    profile: str,
    san: Sequence[str],
    days: int | None,
    job_id: str,
) -> SignRequest:
    """The job as it will be queued; a field the schema refuses is refused here, once."""
    try:
        return producer.request(csr_pem, profile=profile, san=san, days=days, job_id=job_id)
    except ValidationError as exc:
        raise Rejected(Code.JOB_MALFORMED, describe_validation_error(exc)) from None


def _prefixed_job_id(prefix: str, name: str) -> str:
    safe = "".join(char if char.isalnum() or char in "._:@+-" else "_" for char in name)
    return f"{prefix}{safe}"


@dataclass
class SubmitPlan:
    """What `submit` does with each CSR: answer it from the store, wait for it, or send it."""

    jobs: list[tuple[CsrFile, SignRequest]]
    answered: dict[str, JobResult]
    waiting: set[str]  # known to the store, not finished: a worker has it
    to_send: list[SignRequest]


def plan_jobs(
    producer: Producer,
    files: list[CsrFile],
    manifest: JobManifest,
    profile: str,
    days: int | None,
    san: list[str],
    job_id: str | None,
    job_id_prefix: str | None,
) -> SubmitPlan:
    """Give each CSR its job id: --job-id, the prefix, the job list's earlier one, or a new one.

    An earlier job of the same request is reused unless the store holds its refusal: that run
    is answered; the same request is then asked again under a new id.
    """
    jobs: list[tuple[CsrFile, SignRequest]] = []
    reused: set[str] = set()
    for file in files:
        chosen = job_id or (_prefixed_job_id(job_id_prefix, file.name) if job_id_prefix else None)
        request = new_request(producer, file.pem, profile, san, days, chosen or uuid.uuid4().hex)
        earlier = manifest.jobs.get(file.name)
        if chosen is None and earlier is not None and earlier.fingerprint == request.fingerprint():
            request = request.model_copy(update={"job_id": earlier.job_id})
            reused.add(request.job_id)
        jobs.append((file, request))
    answered = producer.answers_in_store(request for _, request in jobs)
    for index, (file, request) in enumerate(jobs):
        answer = answered.get(request.job_id)
        if request.job_id in reused and answer is not None and not answer.ok:
            del answered[request.job_id]
            jobs[index] = (file, request.model_copy(update={"job_id": uuid.uuid4().hex}))
    unanswered = [request for _, request in jobs if request.job_id not in answered]
    known = producer.store.known_jobs(request.job_id for request in unanswered)
    waiting = {
        request.job_id
        for request in unanswered
        if request.job_id in known
        and producer.store.job_state(request.job_id).get("fingerprint") == request.fingerprint()
    }  # a worker holds these; a job id reused for another request is sent, to be refused
    to_send = [request for request in unanswered if request.job_id not in waiting]
    return SubmitPlan(jobs, answered, waiting, to_send)


def conflicts(plan: SubmitPlan, folder: CertificateFolder) -> list[str]:
    """Certificates already in the folder that this run would have to replace with another."""
    problems = []
    for file, request in plan.jobs:
        if not folder.path(file.name).exists():
            continue
        answer = plan.answered.get(request.job_id)
        pem = answer.certificate_pem if answer is not None else None
        if pem is not None and not folder.holds_other(file.name, pem):
            continue  # the same certificate again: this request's own, from an earlier run
        problems.append(
            f"{folder.path(file.name)} holds a certificate from another request; "
            "move it away or give another --out"
        )
    return problems


def read_csr_files(paths: Iterable[Path]) -> tuple[list[CsrFile], list[str]]:
    """Every CSR file read, and one line for each bad file and each clash of names."""
    files: list[CsrFile] = []
    problems: list[str] = []
    seen: dict[Path, None] = {}
    for path in paths:
        if path.resolve() in seen:
            continue
        seen[path.resolve()] = None
        try:
            files.append(read_csr_file(path))
        except Rejected as exc:
            problems.append(f"refused {path}: [{exc.code}] {exc.message}")
        except ConfigurationError as exc:
            problems.append(str(exc))
    by_name: dict[str, Path] = {}
    for file in files:
        if file.name in by_name:
            problems.append(
                f"{by_name[file.name]} and {file.path} would both be written as "
                f"{file.name}.cert.pem; rename one"
            )
        by_name.setdefault(file.name, file.path)
    return files, problems

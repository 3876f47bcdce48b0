"""`casign submit`, `request`, `collect` and `status`: the producer's side, never a CA key."""

from __future__ import annotations

import contextlib
import shlex
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from casign.cli_base import broker_option, ca_option, fail, open_store, split_sans, store_option
from casign.collecting import (
    CertificateFolder,
    Collected,
    checked_results,
    gather,
    manifest_requests,
    poll_store,
)
from casign.config import Endpoints, known_ca_folder, producer_identity, resolve_endpoints
from casign.csr_files import (
    check_profile_and_days,
    local_profiles,
    san_from_common_name,
)
from casign.job_status import describe_jobs
from casign.manifest import MANIFEST_NAME, JobManifest, ManifestJob
from casign.queue_view import QueueView, explain_silence
from casign.queue_view import worker_command as start_worker_command
from casign.submit_plan import SubmitPlan, conflicts, new_request, plan_jobs, read_csr_files
from core.errors import RefusalCode as Code
from core.files import PUBLIC_MODE, write_file_atomically
from core.keys import KeyType, write_private_key
from core.messages import JobResult
from core.secret_source import read_secret_file
from producers import Producer
from producers.trust import ResultCheck, TrustAnchor
from store.results import ResultsStore

DEFAULT_TIMEOUT = 600.0
EXIT_NOT_STARTED = 2  # nothing was queued: a local problem, named in one sentence
EXIT_REFUSED = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130
_SHOWN_JOB_IDS = 10


def _require_embedded_redis(endpoints: Endpoints) -> None:
    if endpoints.embedded_dir is None:
        return
    from store.embedded import EmbeddedRedis

    if not EmbeddedRedis(endpoints.embedded_dir).is_running():
        fail(
            f"the embedded Redis of {endpoints.embedded_dir} is not running; start "
            f"`casign worker --ca {endpoints.embedded_dir}` first, or give --broker and --store",
            EXIT_NOT_STARTED,
        )


def trust_anchor_option(function: Any) -> Any:
    return click.option(
        "--trust-anchor",
        "trust_anchor",
        default=None,
        metavar="FILE",
        help="The root certificate (PEM file, or its SHA-256) every certificate must chain to "
        "before it is written (default: the CA folder's, when it is on this machine).",
    )(function)


def resolve_trust_anchor(flag: str | None, ca_folder: Path | None) -> TrustAnchor | None:
    """--trust-anchor, else the root certificate of a CA folder on this machine, else None."""
    if flag is not None:
        return TrustAnchor.parse(flag)
    if ca_folder is not None and (ca_folder / "certs" / "ca.cert.pem").is_file():
        return TrustAnchor.parse(ca_folder / "certs" / "ca.cert.pem")
    return None


@contextlib.contextmanager
def open_producer(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    requester: str | None = None,
    endpoints: Endpoints | None = None,
    trust_anchor: TrustAnchor | None = None,
) -> Iterator[Producer]:
    """A producer on the given endpoints; on the CA folder's embedded Redis if none are given."""
    endpoints = endpoints or resolve_endpoints(broker, store, ca)
    _require_embedded_redis(endpoints)
    identity, secret_source = producer_identity()
    with Producer(
        endpoints.broker_url,
        endpoints.store_url,
        store_prefix=endpoints.store_prefix,
        requester=requester,
        queue=endpoints.queue,
        identity=identity,
        secret_source=secret_source,
        trust_anchor=trust_anchor,
    ) as producer:
        yield producer


def _same_place(command: str, ca: Path | None, broker: str | None, store: str | None) -> list[str]:
    """`casign COMMAND` with the --ca, --broker and --store this one was given (passwords masked)."""
    from kombu.utils.url import maybe_sanitize_url

    words = ["casign", command]
    if ca is not None:
        words += ["--ca", str(ca)]
    for flag, url in (("--broker", broker), ("--store", store)):
        if url is not None:
            words += [flag, str(maybe_sanitize_url(url))]
    return words


def _collect_command(manifest: Path, out: Path, ca: Path | None, store: str | None) -> str:
    words = _same_place("collect", ca, None, store)
    if out != manifest.parent:
        words += ["--out", str(out)]
    return shlex.join([*words, str(manifest)])


def _silence_explainer(endpoints: Endpoints, store: ResultsStore, ca_folder: Path | None) -> Any:
    def explain(waited: float) -> str:
        return explain_silence(
            waited,
            QueueView(endpoints.broker_url, endpoints.queue, producer_identity()[0]),
            store.workers_last_active(),
            start_worker_command(endpoints, ca_folder),
        )

    return explain


def _report(collected: Collected, names: dict[str, str], out: Path, how_to_finish: str) -> None:
    """Print what became of the jobs and exit with the code that sums it up."""
    for result in collected.refused:
        click.secho(
            f"refused {names[result.job_id]}: [{result.code}] {result.message}", fg="red", err=True
        )
    for result in collected.not_written:
        click.secho(
            f"not written: {out / (names[result.job_id] + '.cert.pem')} holds another "
            f"certificate; job {result.job_id} (serial {result.serial}) keeps its own in the store",
            fg="red",
            err=True,
        )
    click.echo(
        f"{len(collected.written)} certificate(s) written to {out}; chain: {out / 'ca-chain.cert.pem'}"
    )
    if collected.stopped is not None:
        why = "interrupted" if collected.stopped == "interrupted" else "timed out"
        fail(
            f"{why}: {len(collected.waiting)} job(s) not signed yet stay queued; "
            f"{how_to_finish} writes their certificates once they are signed",
            EXIT_INTERRUPTED if collected.stopped == "interrupted" else EXIT_TIMEOUT,
        )
    if collected.refused or collected.not_written:
        sys.exit(EXIT_REFUSED)


@click.command()
@ca_option
@broker_option
@store_option
@click.option("--profile", default="server_cert", show_default=True)
@click.option("--days", type=int, default=None, help="Validity in days (default: the profile's).")
@click.option("--san", multiple=True, help="Extra SANs for every CSR: DNS:..,IP:..,email:..")
@click.option(
    "--job-id",
    default=None,
    help="The job id (idempotency key) of the one CSR given, e.g. to retry a rate-limited job.",
)
@click.option(
    "--job-id-prefix",
    default=None,
    help="Job ids PREFIX followed by each certificate name (default: new ids, kept in the job list).",
)
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True)
@trust_anchor_option
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help=f"Folder for NAME.cert.pem, ca-chain.cert.pem and the job list {MANIFEST_NAME}.",
)
@click.argument(
    "csrs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
def submit(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    profile: str,
    days: int | None,
    san: tuple[str, ...],
    job_id: str | None,
    job_id_prefix: str | None,
    timeout: float,
    trust_anchor: str | None,
    out: Path,
    csrs: tuple[Path, ...],
) -> None:
    """Enqueue CSR files (PEM or DER) and write each certificate as it is signed.

    The jobs are listed in OUT/casign-jobs.json before they are queued; the same command
    again is answered from the store, signing nothing twice and never replacing a certificate
    with another.
    """
    if job_id is not None and (job_id_prefix is not None or len(set(csrs)) != 1):
        fail("--job-id names the job of one CSR; give one CSR, or --job-id-prefix", 2)
    endpoints = resolve_endpoints(broker, store, ca)
    ca_folder = known_ca_folder(ca, endpoints)
    anchor = resolve_trust_anchor(trust_anchor, ca_folder)
    check_profile_and_days(local_profiles(ca_folder), profile, days)
    files, problems = read_csr_files(csrs)
    if problems:
        for line in problems:
            click.secho(f"casign: {line}", fg="red", err=True)
        fail(f"nothing was queued ({len(problems)} problem(s) above)", EXIT_REFUSED)
    folder = CertificateFolder(out)
    folder.prepare()
    manifest = JobManifest.for_folder(out)
    with open_producer(ca, broker, store, endpoints=endpoints, trust_anchor=anchor) as producer:
        plan = plan_jobs(
            producer, files, manifest, profile, days, split_sans(san), job_id, job_id_prefix
        )
        in_the_way = conflicts(plan, folder)
        if in_the_way:
            for line in in_the_way:
                click.secho(f"casign: {line}", fg="red", err=True)
            fail(f"nothing was queued ({len(in_the_way)} certificate(s) in the way)", 2)
        names = {request.job_id: file.name for file, request in plan.jobs}
        for file, request in plan.jobs:
            manifest.put(
                ManifestJob(
                    name=file.name,
                    job_id=request.job_id,
                    csr=str(file.path.absolute()),
                    profile=request.profile,
                    fingerprint=request.fingerprint(),
                    days=request.days,
                    san=tuple(request.san),
                )
            )
        manifest.save()
        producer.submit_many(plan.to_send)
        _announce(plan, names, endpoints.queue, manifest.path)
        results = _answered_then_waited(producer, plan, timeout)
        collected = gather(
            results,
            names,
            folder,
            producer.store,
            _silence_explainer(endpoints, producer.store, ca_folder),
            producer.chain_pem,
        )
    _report(
        collected,
        names,
        out,
        f"`{_collect_command(manifest.path, out, ca, store)}` (or the same `casign submit` again)",
    )


def _answered_then_waited(
    producer: Producer, plan: SubmitPlan, timeout: float
) -> Iterator[JobResult]:
    yield from plan.answered.values()
    unanswered = [request.job_id for _, request in plan.jobs if request.job_id not in plan.answered]
    if unanswered:
        yield from producer.results(unanswered, timeout)


def _announce(plan: SubmitPlan, names: dict[str, str], queue: str, manifest: Path) -> None:
    for _, request in plan.jobs[:_SHOWN_JOB_IDS]:
        click.echo(f"job {request.job_id}  {names[request.job_id]}")
    if len(plan.jobs) > _SHOWN_JOB_IDS:
        click.echo(f"... and {len(plan.jobs) - _SHOWN_JOB_IDS} more")
    click.echo(
        f"{len(plan.to_send)} job(s) queued on {queue}, {len(plan.answered)} answered from the "
        f"store, {len(plan.waiting)} being signed; job list: {manifest}"
    )


def make_key_and_csr(
    common_name: str, key_type: KeyType, san: Sequence[x509.GeneralName] = ()
) -> tuple[Any, x509.CertificateSigningRequest]:
    """A new key and its CSR, with the SANs in the CSR as `openssl req -addext` puts them."""
    key = key_type.generate()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return key, csr


@click.command()
@ca_option
@broker_option
@store_option
@click.option("--cn", "common_name", required=True, help="Common Name (an FQDN for servers).")
@click.option("--profile", default="server_cert", show_default=True)
@click.option("--days", type=int, default=None)
@click.option(
    "--san",
    multiple=True,
    help="DNS:..,IP:..,email:..; repeatable (default: the CN, when it is a host name or address).",
)
@click.option(
    "--key-type", type=click.Choice(["rsa2048", "p256"]), default="rsa2048", show_default=True
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Encrypt the new key (AES-256) with the passphrase in this file.",
)
@click.option("--job-id", default=None, help="The job's id (idempotency key; default: a new one).")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True)
@trust_anchor_option
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True)
def request(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    common_name: str,
    profile: str,
    days: int | None,
    san: tuple[str, ...],
    key_type: str,
    passphrase_file: Path | None,
    job_id: str | None,
    timeout: float,
    trust_anchor: str | None,
    out: Path,
) -> None:
    """Make a key and CSR here, have the CSR signed, write key, certificate and chain.

    Everything that can be checked is checked before the key is made; a refused request leaves
    nothing behind, and one still waiting keeps its key and CSR with the command that finishes it.
    """
    from worker.policy import parse_san_text

    name = common_name.replace("/", "_").replace("*", "wildcard")
    endpoints = resolve_endpoints(broker, store, ca)
    ca_folder = known_ca_folder(ca, endpoints)
    anchor = resolve_trust_anchor(trust_anchor, ca_folder)
    profiles = local_profiles(ca_folder)
    check_profile_and_days(profiles, profile, days)
    sans = split_sans(san) or san_from_common_name(common_name, profile, profiles)
    general_names = [parse_san_text(text) for text in sans]
    passphrase = read_secret_file(passphrase_file, "passphrase") if passphrase_file else None
    folder = CertificateFolder(out)
    folder.prepare()
    manifest = JobManifest.for_folder(out)
    key_path, csr_path = out / f"{name}.key.pem", out / f"{name}.csr.pem"
    collect_line = _collect_command(manifest.path, out, ca, store)
    _refuse_to_replace(key_path, folder, name, manifest, collect_line)
    with open_producer(ca, broker, store, endpoints=endpoints, trust_anchor=anchor) as producer:
        producer.store.ping()  # a missing store is found before a key exists
        key, csr = make_key_and_csr(common_name, KeyType(key_type), general_names)
        csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        job = new_request(producer, csr_pem, profile, [], days, job_id or uuid.uuid4().hex)
        write_private_key(key_path, key, passphrase)
        write_file_atomically(csr_path, csr_pem, PUBLIC_MODE)
        manifest.put(
            ManifestJob(
                name=name,
                job_id=job.job_id,
                csr=str(csr_path.absolute()),
                profile=profile,
                fingerprint=job.fingerprint(),
                days=days,
                key=str(key_path.absolute()),
            )
        )
        try:
            manifest.save()
            producer.submit_many([job])
        except BaseException:
            _discard(key_path, csr_path, manifest, name)
            raise
        click.echo(f"job {job.job_id}  {name}")
        names = {job.job_id: name}
        collected = gather(
            producer.results([job.job_id], timeout),
            names,
            folder,
            producer.store,
            _silence_explainer(endpoints, producer.store, ca_folder),
            producer.chain_pem,
        )
    if collected.written:
        click.echo(f"key:         {key_path}" + (" (AES-256 encrypted)" if passphrase else ""))
        click.echo(f"certificate: {folder.path(name)}")
        click.echo(f"chain:       {out / 'ca-chain.cert.pem'}")
        return
    if collected.stopped is not None:
        why = "interrupted" if collected.stopped == "interrupted" else "timed out"
        fail(
            f"{why}: job {job.job_id} is not signed yet; its key and CSR stay in {out}, and "
            f"`{collect_line}` writes its certificate once it is signed",
            EXIT_INTERRUPTED if collected.stopped == "interrupted" else EXIT_TIMEOUT,
        )
    (result,) = collected.refused or collected.not_written
    if result.code == Code.AUTH_RATE_LIMITED:
        retry = shlex.join(
            [*_same_place("submit", ca, broker, store), "--job-id", job.job_id]
            + ["--profile", profile]
            + (["--days", str(days)] if days is not None else [])
            + [str(csr_path), "--out", str(out)]
        )
        fail(
            f"refused [{result.code}]: {result.message}; the key and CSR stay in {out}: "
            f"retry later with `{retry}`",
            EXIT_REFUSED,
        )
    _discard(key_path, csr_path, manifest, name)
    fail(f"refused [{result.code}]: {result.message} (nothing was kept)", EXIT_REFUSED)


def _refuse_to_replace(
    key_path: Path, folder: CertificateFolder, name: str, manifest: JobManifest, collect_line: str
) -> None:
    """A key or certificate of this name is already in the folder: say what it belongs to."""
    earlier = manifest.jobs.get(name)
    if key_path.exists() and folder.path(name).exists():
        fail(f"{key_path} and its certificate exist; refusing to overwrite a key", 2)
    if key_path.exists() and earlier is not None and earlier.key == str(key_path.absolute()):
        fail(
            f"{key_path} waits for job {earlier.job_id}: `{collect_line}` writes its certificate "
            "once it is signed (remove the key and CSR to start over)",
            2,
        )
    if key_path.exists():
        fail(f"{key_path} exists; refusing to overwrite a key", 2)
    if folder.path(name).exists():
        fail(f"{folder.path(name)} exists without its key; refusing to replace it", 2)


def _discard(key_path: Path, csr_path: Path, manifest: JobManifest, name: str) -> None:
    """Remove what `request` wrote for a job that will never be signed."""
    key_path.unlink(missing_ok=True)
    csr_path.unlink(missing_ok=True)
    manifest.remove(name)
    with contextlib.suppress(OSError):
        manifest.save()


@click.command()
@ca_option
@store_option
@broker_option
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True)
@trust_anchor_option
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder for the certificates (default: the job list's folder).",
)
@click.argument("manifest_path", metavar="JOB_LIST", type=click.Path(path_type=Path, exists=True))
def collect(
    ca: Path | None,
    store: str | None,
    broker: str | None,
    timeout: float,
    trust_anchor: str | None,
    out: Path | None,
    manifest_path: Path,
) -> None:
    """Wait for the jobs of a casign-jobs.json (or its folder) and write their certificates.

    Nothing is sent: jobs still queued are signed when a worker takes them.
    """
    manifest = JobManifest.load(manifest_path)
    out = out or manifest.folder
    endpoints = resolve_endpoints(broker, store, ca, need_broker=False)
    ca_folder = known_ca_folder(ca, endpoints)
    anchor = resolve_trust_anchor(trust_anchor, ca_folder)
    _require_embedded_redis(endpoints)
    folder = CertificateFolder(out)
    folder.prepare()
    names = {job.job_id: job.name for job in manifest.jobs.values()}
    fingerprints = {job.job_id: job.fingerprint for job in manifest.jobs.values()}
    requests = manifest_requests(manifest.jobs.values())
    results_store = ResultsStore.from_url(endpoints.store_url, endpoints.store_prefix)
    check = ResultCheck(anchor, results_store.chain)
    try:
        collected = gather(
            checked_results(poll_store(results_store, fingerprints, timeout), requests, check),
            names,
            folder,
            results_store,
            _silence_explainer(endpoints, results_store, ca_folder),
            check.chain_pem,
        )
    finally:
        results_store.close()
    _report(collected, names, out, f"`{_collect_command(manifest.path, out, ca, store)}`")


@click.command()
@ca_option
@broker_option
@store_option
@click.argument("job")
def status(ca: Path | None, broker: str | None, store: str | None, job: str) -> None:
    """Tell where a job is: issued, refused, signing, queued (with what is ahead) or unknown.

    JOB is a job id, or a casign-jobs.json (or its folder) for every job in it.
    """
    endpoints = resolve_endpoints(broker, store, ca, need_broker=False)
    ca_folder = known_ca_folder(ca, endpoints)
    as_path = Path(job)
    listed = as_path.is_file() or (as_path / MANIFEST_NAME).is_file()
    manifest = JobManifest.load(as_path) if listed else None
    labels = (
        {entry.job_id: f"{entry.name}  {entry.job_id}" for entry in manifest.jobs.values()}
        if manifest is not None
        else {job: job}
    )
    with open_store(endpoints) as results_store:
        states = describe_jobs(
            results_store,
            QueueView(endpoints.broker_url, endpoints.queue, producer_identity()[0]),
            list(labels),
            start_worker_command(endpoints, ca_folder),
        )
    for job_id, (text, _) in states.items():
        click.echo(f"{labels[job_id]}: {text}")
    if not all(known for _, known in states.values()):
        sys.exit(1)

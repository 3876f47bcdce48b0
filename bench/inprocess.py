"""The in-process rows: the issuance pipeline in a loop (the limit), and the bare signature."""

from __future__ import annotations

import dataclasses
import functools
import gc
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from bench.cpu import CpuMeter
from bench.rows import BenchError, Rate
from bench.workload import PROFILE, Workload
from core.messages import JobResult
from store.results import ResultsStore
from worker.authority import SigningAuthority
from worker.issuance import BatchSigner
from worker.profiles import ProfileSet

SIGN_ONLY_MAX_JOBS = 5000
WARMUP_JOBS = 20
LEAF_DAYS = 375
# Netscape extensions of the guide's server_cert (REFERENCE.md section 2).
NS_CERT_TYPE = ObjectIdentifier("2.16.840.1.113730.1.1")
NS_COMMENT = ObjectIdentifier("2.16.840.1.113730.1.13")
NS_CERT_TYPE_SERVER = bytes.fromhex("03020640")  # BIT STRING, bit 1 (SSL server) set
NS_COMMENT_TEXT = b"OpenSSL Generated Server Certificate"


def jobs_for(workload: Workload, tag: str, profile: str = PROFILE) -> list[dict[str, object]]:
    """The jobs as a worker receives them off the queue, with job ids unique to `tag`; each
    names its CN as a DNS SAN (tls_server requires one, the others take it as given)."""
    return [
        {
            "job_id": f"{tag}-{index:07d}",
            "csr_pem": pem,
            "profile": profile,
            "san": [f"DNS:{name}"],
        }
        for index, (pem, name) in enumerate(
            zip(workload.csr_pems, workload.common_names, strict=True)
        )
    ]


def with_lint(authority: SigningAuthority, profile: str, lint: bool) -> SigningAuthority:
    """`authority` with only `profile`, whose linter is its own (lint on) or off."""
    chosen = authority.profiles.get(profile)
    if chosen is None:
        raise BenchError(f"the bench CA has no {profile} profile")
    if not lint:
        chosen = chosen.model_copy(update={"lint": "off"})
    return dataclasses.replace(authority, profiles=ProfileSet({profile: chosen}), _extensions={})


def measure_limit(
    authority: SigningAuthority,
    store: ResultsStore,
    workload: Workload,
    batch_size: int,
    tag: str,
    profile: str = PROFILE,
) -> Rate:
    """`BatchSigner.sign_batch` over the workload in one process: policy, lint, reserve, sign,
    publish, under `profile` as the authority defines it."""
    signer = BatchSigner(authority, store)
    linter = authority.profiles.get(profile)
    warmup = jobs_for(workload.head(WARMUP_JOBS), f"{tag}-warmup", profile)
    _check_issued(signer.sign_batch(warmup), len(warmup))
    jobs = jobs_for(workload, tag, profile)
    gc.freeze()  # as a worker process does once its signer is open (worker/process.py)
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    issued = 0
    cpu = CpuMeter()
    start = time.perf_counter()
    for batch in batches:
        results = signer.sign_batch(batch)
        issued += sum(result.status == "issued" for result in results)
    elapsed = time.perf_counter() - start
    cpu_seconds = cpu.seconds()
    if issued != len(jobs):
        raise BenchError(f"the pipeline issued {issued} of {len(jobs)} certificates")
    return Rate(
        len(jobs),
        elapsed,
        f"BatchSigner.sign_batch in a loop, {profile} (lint "
        f"{linter.lint if linter else 'unknown'}), batches of {batch_size}, 1 process, no queue",
        cpu_seconds,
    )


def _check_issued(results: list[JobResult], expected: int) -> None:
    issued = sum(result.status == "issued" for result in results)
    if issued != expected:
        first = next(result for result in results if result.status != "issued")
        raise BenchError(
            f"warm-up issued {issued} of {expected} certificates ({first.code}: {first.message})"
        )


def server_cert_builder(
    csr: x509.CertificateSigningRequest, authority: SigningAuthority, now: datetime
) -> x509.CertificateBuilder:
    """A to-be-signed certificate shaped like the guide's server_cert, built without casign."""
    public_key = csr.public_key()
    common_name = str(csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    intermediate = authority.intermediate
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), False),
        (x509.UnrecognizedExtension(NS_CERT_TYPE, NS_CERT_TYPE_SERVER), False),
        (
            x509.UnrecognizedExtension(
                NS_COMMENT, bytes([0x16, len(NS_COMMENT_TEXT)]) + NS_COMMENT_TEXT
            ),
            False,
        ),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
        (
            x509.AuthorityKeyIdentifier(
                key_identifier=authority.key_identifier,
                authority_cert_issuer=[x509.DirectoryName(intermediate.issuer)],
                authority_cert_serial_number=intermediate.serial_number,
            ),
            False,
        ),
        (
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName([x509.DNSName(common_name)]), False),
    ]
    return x509.CertificateBuilder(
        issuer_name=intermediate.subject,
        subject_name=csr.subject,
        public_key=public_key,
        serial_number=secrets.randbits(159) | (1 << 64),
        not_valid_before=now,
        not_valid_after=now + timedelta(days=LEAF_DAYS),
        extensions=[x509.Extension(value.oid, critical, value) for value, critical in extensions],
    )


MINIMAL_HOW = (
    "parse CSR, check its signature, server_cert extensions, sign, verify, PEM; "
    "nothing else, 1 process"
)


def minimal_issuer(authority: SigningAuthority) -> Callable[[bytes], bytes]:
    """The least a signing service must do per CSR, written without casign: parse the CSR,
    check its signature, build the guide's server_cert extensions, sign, verify the
    certificate against the CA certificate, PEM-encode it. No policy, store or audit."""
    now = datetime.now(UTC).replace(microsecond=0)
    key, digest, intermediate = authority.key, hashes.SHA256(), authority.intermediate

    def issue(pem: bytes) -> bytes:
        csr = x509.load_pem_x509_csr(pem)
        if not csr.is_signature_valid:
            raise BenchError("a workload CSR's signature does not verify")
        certificate = server_cert_builder(csr, authority, now).sign(key, digest)
        certificate.verify_directly_issued_by(intermediate)
        return certificate.public_bytes(serialization.Encoding.PEM)

    return issue


@dataclasses.dataclass
class _Clock:
    """Wall and CPU seconds summed over the slices one side of a pair ran."""

    wall: float = 0.0
    cpu: float = 0.0

    def run(self, work: Callable[[], object]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu


def measure_minimal_and_limit(
    authority: SigningAuthority,
    store: ResultsStore,
    workload: Workload,
    batch_size: int,
    tag: str,
) -> tuple[Rate, Rate]:
    """The minimal pipeline and casign's (`BatchSigner.sign_batch`) on the same slices of
    `batch_size` CSRs, one slice each in turn (which goes first alternates), so that both meet
    the same load from the machine's other tenants and their ratio is the pipelines', not the
    moment's."""
    issue, signer = minimal_issuer(authority), BatchSigner(authority, store)
    pems = [pem.encode("ascii") for pem in workload.csr_pems]
    for pem in pems[:WARMUP_JOBS]:
        issue(pem)
    warmup = jobs_for(workload.head(WARMUP_JOBS), f"{tag}-warmup")
    _check_issued(signer.sign_batch(warmup), len(warmup))
    jobs = jobs_for(workload, tag)
    gc.freeze()  # as a worker process does once its signer is open (worker/process.py)
    minimal, limit, issued = _Clock(), _Clock(), 0

    def issue_slice(slice_pems: list[bytes]) -> None:
        for pem in slice_pems:
            issue(pem)

    def sign_slice(batch: list[dict[str, object]]) -> None:
        nonlocal issued
        issued += sum(result.status == "issued" for result in signer.sign_batch(batch))

    for number, first in enumerate(range(0, len(jobs), batch_size)):
        sides = [
            (minimal, functools.partial(issue_slice, pems[first : first + batch_size])),
            (limit, functools.partial(sign_slice, jobs[first : first + batch_size])),
        ]
        for clock, work in sides if number % 2 == 0 else reversed(sides):
            clock.run(work)
    if issued != len(jobs):
        raise BenchError(f"the pipeline issued {issued} of {len(jobs)} certificates")
    linter = authority.profiles.get(PROFILE)
    how = (
        f"BatchSigner.sign_batch in a loop, {PROFILE} (lint "
        f"{linter.lint if linter else 'unknown'}), batches of {batch_size}, 1 process, no "
        "queue; slice by slice in turn with the minimal pipeline"
    )
    return (
        Rate(
            len(pems),
            minimal.wall,
            MINIMAL_HOW + "; slice by slice in turn with limit",
            minimal.cpu,
        ),
        Rate(len(jobs), limit.wall, how, limit.cpu),
    )


def measure_sign_only(authority: SigningAuthority, workload: Workload) -> Rate:
    """`CertificateBuilder.sign` alone with the CA key, on builders made before timing."""
    now = datetime.now(UTC).replace(microsecond=0)
    subset = workload.head(SIGN_ONLY_MAX_JOBS)
    builders = [
        server_cert_builder(x509.load_pem_x509_csr(pem.encode("ascii")), authority, now)
        for pem in subset.csr_pems
    ]
    key, digest = authority.key, hashes.SHA256()
    for builder in builders[:WARMUP_JOBS]:
        builder.sign(key, digest)
    cpu = CpuMeter()
    start = time.perf_counter()
    for builder in builders:
        builder.sign(key, digest)
    elapsed = time.perf_counter() - start
    return Rate(
        len(builders),
        elapsed,
        "x509.CertificateBuilder.sign only, same CA key, 1 process",
        cpu.seconds(),
    )

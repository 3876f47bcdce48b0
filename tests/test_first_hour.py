"""A new user's first hour (issue 16): each stumble found by following README.md, as a test.

Every test runs `casign` as a user does (a subprocess), against the real Redis, real worker
processes, SoftHSM and openssl.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from casign.collecting import NO_WORKER_AFTER_SECONDS
from core.errors import RefusalCode
from producers import Producer
from store.embedded import EmbeddedRedis
from store.results import ResultsStore
from tests.csrs import make_csr
from tests.softhsm_token import SOFTHSM_AVAILABLE, SOFTHSM_SKIP_REASON
from tests.test_cli import CASIGN, casign, clean_env, openssl_csr, verify
from tests.workers import WorkerProcess, start_worker
from worker.cafolder import CAFolder

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# NO_WORKER_AFTER_SECONDS after queueing, plus the command's own start on a loaded machine.
HINT_TIMEOUT = 25.0
MAKE_TOKEN = REPO / "softhsm" / "make-token.sh"

needs_softhsm = pytest.mark.skipif(
    not SOFTHSM_AVAILABLE or shutil.which("pkcs11-tool") is None,
    reason=SOFTHSM_SKIP_REASON + " (and pkcs11-tool from opensc)",
)


@pytest.fixture(autouse=True)
def _drained_queue(store: ResultsStore, queue: str) -> Iterator[None]:
    """Remove what this test left in its queue (jobs it queued with no worker to take them)."""
    yield
    store.client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


@pytest.fixture
def queue_env(store_prefix: str, queue: str) -> dict[str, str]:
    """The environment of a `casign` command on this test's queue and key prefix."""
    return clean_env(CASIGN_STORE_PREFIX=store_prefix, CASIGN_QUEUE=queue)


@pytest.fixture
def endpoints(broker_url: str, redis_url: str) -> list[str]:
    return ["--broker", broker_url, "--store", redis_url]


@pytest.fixture
def worker_starter() -> Iterator[list[WorkerProcess]]:
    """Workers started by the test itself (when the story needs one), stopped after it."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def start_test_worker(
    started: list[WorkerProcess],
    ca_folder: CAFolder,
    broker_url: str,
    redis_url: str,
    store: ResultsStore,
    queue: str,
    log: Path,
) -> None:
    started.append(start_worker(ca_folder.root, broker_url, redis_url, store, queue, log, 1))


def queue_length(store: ResultsStore, queue: str) -> int:
    return int(store.client.llen(queue))


class RunningCasign:
    """A `casign` command left running, its stderr read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*CASIGN, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr_lines: list[tuple[float, str]] = []
        self.stdout_lines: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append((time.monotonic() - self.started, line))

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        self.stdout_lines.extend(self.process.stdout)

    def wait_for_stderr(self, text: str, timeout: float) -> float:
        """Seconds from the start until a stderr line held `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.stderr_lines):
                if text in line:
                    return at
            assert self.process.poll() is None, self.stderr()
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} on stderr within {timeout} s:\n{self.stderr()}")

    def interrupt(self) -> tuple[int, str, str]:
        """Ctrl-C, as a terminal sends it; (exit code, stdout, stderr)."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        for reader in self._readers:
            reader.join(timeout=5)
        return self.process.returncode, "".join(self.stdout_lines), self.stderr()

    def stderr(self) -> str:
        return "".join(line for _, line in self.stderr_lines)


def manifest_jobs(out: Path) -> dict[str, str]:
    """certificate name -> job id, from the job list `submit`/`request` wrote."""
    document = json.loads((out / "casign-jobs.json").read_text())
    return {job["name"]: job["job_id"] for job in document["jobs"]}


def der_csr(directory: Path, name: str, common_name: str) -> Path:
    pem = make_csr(common_name).encode()
    path = directory / f"{name}.csr.der"
    path.write_bytes(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    return path


# -- 1. casign init is all or nothing ---------------------------------------------------------


def make_token(directory: Path, label: str, key: str) -> tuple[str, dict[str, str]]:
    """softhsm/make-token.sh DIR LABEL intermediate KEY; (the URI it printed, its environment)."""
    run = subprocess.run(
        ["bash", str(MAKE_TOKEN), str(directory), label, "intermediate", key],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    uri = next(line for line in run.stdout.splitlines() if line.startswith("pkcs11:"))
    return uri, clean_env(SOFTHSM2_CONF=str(directory / "softhsm2.conf"))


def nothing_left(parent: Path, name: str) -> None:
    assert not (parent / name).exists(), f"a failed init left {parent / name}"
    leftovers = [entry.name for entry in parent.iterdir() if entry.name.startswith(f".{name}.")]
    assert leftovers == [], leftovers


@needs_softhsm
def test_a_failed_init_leaves_nothing_and_says_what_to_fix(tmp_path: Path) -> None:
    # The README's old steps: make-token.sh's default makes a key, so init finds one there.
    uri, env = make_token(tmp_path / "hsm", "ca", "rsa2048")
    refused = casign(
        "init", tmp_path / "ca", "--key-type", "rsa2048", "--intermediate-key-uri", uri,
        cwd=tmp_path, env=env, expect=2,
    )  # fmt: skip
    assert "already holds an object labelled 'intermediate'" in refused.stderr
    assert "softhsm/make-token.sh DIR LABEL OBJECT none" in refused.stderr
    nothing_left(tmp_path, "ca")

    # No SOFTHSM2_CONF: SoftHSM looks in its default folder; the message says so.
    unset = casign(
        "init", tmp_path / "ca", "--key-type", "rsa2048", "--intermediate-key-uri", uri,
        cwd=tmp_path, expect=2,
    )  # fmt: skip
    assert "SOFTHSM2_CONF is not set" in unset.stderr
    nothing_left(tmp_path, "ca")

    # A PIN in the URI is refused before anything is made.
    pin_value = casign(
        "init", tmp_path / "ca", "--intermediate-key-uri",
        "pkcs11:token=ca;object=intermediate?pin-value=1234", cwd=tmp_path, env=env, expect=2,
    )  # fmt: skip
    assert "pin-source=file:PATH" in pin_value.stderr
    assert "1234" not in pin_value.stderr
    nothing_left(tmp_path, "ca")

    # The fix the message names (an empty token), then the same command: it works.
    fixed_uri, fixed_env = make_token(tmp_path / "hsm-empty", "ca", "none")
    made = casign(
        "init", tmp_path / "ca", "--key-type", "rsa2048", "--intermediate-key-uri", fixed_uri,
        cwd=tmp_path, env=fixed_env,
    )  # fmt: skip
    assert "casign worker --ca" in made.stdout
    assert CAFolder(tmp_path / "ca").exists()
    nothing_left_but_the_ca = [e.name for e in tmp_path.iterdir() if e.name.startswith(".ca.")]
    assert nothing_left_but_the_ca == []


def test_init_into_a_folder_holding_other_files_keeps_them(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "notes.txt").write_text("mine\n")
    casign("init", tmp_path / "ca", "--key-type", "p256", cwd=tmp_path)
    assert (tmp_path / "ca" / "notes.txt").read_text() == "mine\n"
    assert CAFolder(tmp_path / "ca").exists()
    cnf = (tmp_path / "ca" / "intermediate" / "openssl.cnf").read_text()
    assert f"dir               = {tmp_path / 'ca' / 'intermediate'}" in cnf  # not the staging


def readme_block(marker: str) -> str:
    """The ```sh block that follows `marker` in README.md."""
    text = README.read_text()
    after = text[text.index(marker) :]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match is not None
    return match.group(1)


@needs_softhsm
def test_the_readme_softhsm_steps_work_as_written(
    tmp_path: Path, redis_url: str, store_prefix: str, store: ResultsStore
) -> None:
    (tmp_path / "softhsm").symlink_to(REPO / "softhsm")
    steps = readme_block("<!-- softhsm-steps")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", steps],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    settings = (tmp_path / "ca" / "intermediate" / "casign.toml").read_text()
    assert f"pin-source=file:{tmp_path / 'hsm' / 'user-pin'}" in settings  # made absolute

    # The token key signs, from another working folder, as a worker would.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    csr = openssl_csr(elsewhere, "www", "/CN=www.example.com")
    env = clean_env(
        SOFTHSM2_CONF=str(tmp_path / "hsm" / "softhsm2.conf"), CASIGN_STORE_PREFIX=store_prefix
    )
    casign(
        "sign", "--ca", tmp_path / "ca", "--store", redis_url, csr, "-o", elsewhere / "www.pem",
        cwd=elsewhere, env=env,
    )  # fmt: skip
    verify(tmp_path / "ca" / "intermediate" / "certs" / "ca-chain.cert.pem", elsewhere / "www.pem")


# -- 3 and 4. jobs a person can follow; feedback when nothing happens -------------------------


def test_submit_without_a_worker_says_so_and_status_tells_queued_from_unknown(
    ca_folder: CAFolder,
    endpoints: list[str],
    queue_env: dict[str, str],
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
) -> None:
    csrs = [openssl_csr(tmp_path, name, f"/CN={name}.example.com") for name in ("www", "api")]
    out = tmp_path / "out"
    running = RunningCasign(
        ["submit", "--ca", str(ca_folder.root), *endpoints, *map(str, csrs), "--out", str(out)],
        tmp_path,
        queue_env,
    )
    # The hint comes NO_WORKER_AFTER_SECONDS (5 s) after the jobs are queued; the rest of the
    # allowance is the command's own start on a loaded machine.
    seconds = running.wait_for_stderr("no worker has taken a job", timeout=HINT_TIMEOUT)
    assert seconds < HINT_TIMEOUT
    assert f"no worker has taken a job in {NO_WORKER_AFTER_SECONDS:g} s" in running.stderr()
    hint = running.stderr()
    assert f"queue '{queue}' holds 1 message(s)" in hint
    assert f"CASIGN_QUEUE={queue}" in hint and f"casign worker --ca {ca_folder.root}" in hint

    jobs = manifest_jobs(out)
    assert sorted(jobs) == ["api", "www"]
    queued = casign("status", *endpoints, jobs["www"], cwd=tmp_path, env=queue_env)
    assert f"{jobs['www']}: queued in '{queue}' with 0 job(s) in 0 message(s) ahead" in (
        queued.stdout
    )
    unknown = casign("status", *endpoints, "never-sent", cwd=tmp_path, env=queue_env, expect=1)
    assert "never-sent: unknown" in unknown.stdout

    code, stdout, stderr = running.interrupt()
    assert code == 130, stderr
    assert "Traceback" not in stderr
    for job_id in jobs.values():
        assert job_id in stdout  # the job ids were printed when they were queued
    assert "interrupted: 2 job(s) not signed yet stay queued" in stderr
    assert f"casign collect --ca {ca_folder.root}" in stderr
    assert str(out / "casign-jobs.json") in stderr
    assert queue_length(store, queue) >= 1  # nothing was lost


@pytest.mark.slow
def test_ctrl_c_then_collect_then_the_same_submit_signs_each_job_once(
    ca_folder: CAFolder,
    broker_url: str,
    redis_url: str,
    endpoints: list[str],
    queue_env: dict[str, str],
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
    worker_starter: list[WorkerProcess],
) -> None:
    csrs = [
        openssl_csr(tmp_path, "www", "/CN=www.example.com"),
        der_csr(tmp_path, "api", "api.example.com"),
    ]
    out = tmp_path / "out"
    submit = ["submit", "--ca", str(ca_folder.root), *endpoints, *map(str, csrs), "--out", str(out)]
    running = RunningCasign(submit, tmp_path, queue_env)
    running.wait_for_stderr("no worker has taken a job", timeout=HINT_TIMEOUT)
    code, _, stderr = running.interrupt()
    assert code == 130, stderr
    collect_line = re.search(r"`(casign collect [^`]+)`", stderr)
    assert collect_line is not None, stderr
    assert not list(out.glob("*.cert.pem"))

    start_test_worker(
        worker_starter, ca_folder, broker_url, redis_url, store, queue, tmp_path / "w.log"
    )
    args = collect_line.group(1).split()[1:]
    collected = casign(*args, "--store", redis_url, cwd=tmp_path, env=queue_env)
    assert "2 certificate(s) written" in collected.stdout
    chain = out / "ca-chain.cert.pem"
    for name in ("www", "api"):
        verify(chain, out / f"{name}.cert.pem")
    first = {name: (out / f"{name}.cert.pem").read_bytes() for name in ("www", "api")}
    assert store.count_issued() == 2

    again = casign(*submit, cwd=tmp_path, env=queue_env)
    assert "0 job(s) queued" in again.stdout and "2 answered from the store" in again.stdout
    assert store.count_issued() == 2  # nothing signed twice
    assert {name: (out / f"{name}.cert.pem").read_bytes() for name in first} == first

    # Another request under the same name never replaces the certificate; nothing is queued.
    (tmp_path / "other").mkdir()
    other = openssl_csr(tmp_path / "other", "www", "/CN=www.example.com")
    refused = casign(
        "submit", *endpoints, other, "--out", out, cwd=tmp_path, env=queue_env, expect=2
    )
    assert f"{out / 'www.cert.pem'} holds a certificate from another request" in refused.stderr
    assert (out / "www.cert.pem").read_bytes() == first["www"]
    assert queue_length(store, queue) == 0
    assert store.count_issued() == 2

    # Job ids from the command line: a prefix gives the same ids on every run.
    prefixed = tmp_path / "prefixed"
    first_run = casign(
        "submit", *endpoints, csrs[0], "--job-id-prefix", "batch7-", "--out", prefixed,
        cwd=tmp_path, env=queue_env,
    )  # fmt: skip
    assert "job batch7-www" in first_run.stdout
    assert manifest_jobs(prefixed) == {"www": "batch7-www"}
    casign(
        "submit", *endpoints, csrs[0], "--job-id-prefix", "batch7-", "--out", prefixed,
        cwd=tmp_path, env=queue_env,
    )  # fmt: skip
    assert store.job_state("batch7-www")["state"] == "issued"
    assert store.count_issued() == 3


def test_checks_that_need_no_worker_are_made_before_queueing(
    ca_folder: CAFolder,
    endpoints: list[str],
    queue_env: dict[str, str],
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
) -> None:
    csrs = [openssl_csr(tmp_path, f"h{index}", f"/CN=h{index}.example.com") for index in range(40)]
    ca = ["--ca", str(ca_folder.root)]
    typo = casign(
        "submit", *ca, *endpoints, "--profile", "server_crt", *csrs, "--out", tmp_path / "o",
        cwd=tmp_path, env=queue_env, expect=3,
    )  # fmt: skip
    assert typo.stderr.count("request.unknown_profile") == 1, typo.stderr
    assert "choose from server_cert, tls_server, usr_cert" in typo.stderr
    too_long = casign(
        "submit", *ca, *endpoints, "--days", "5000", *csrs, "--out", tmp_path / "o",
        cwd=tmp_path, env=queue_env, expect=3,
    )  # fmt: skip
    assert too_long.stderr.count("request.validity_too_long") == 1
    negative = casign(
        "submit", *endpoints, "--days", "0", *csrs, "--out", tmp_path / "o",
        cwd=tmp_path, env=queue_env, expect=3,
    )  # fmt: skip
    assert negative.stderr.count("request.validity_invalid") == 1

    garbage = tmp_path / "garbage.csr"
    garbage.write_bytes(b"\x00\x01 not a request")
    key = tmp_path / "h0.key.pem"
    clash = tmp_path / "h1.csr"  # h1.csr.pem and h1.csr would both be h1.cert.pem
    clash.write_text(make_csr("h1.example.com"))
    bad = casign(
        "submit", *endpoints, garbage, key, clash, *csrs, csrs[0], "--out", tmp_path / "o",
        cwd=tmp_path, env=queue_env, expect=3,
    )  # fmt: skip
    lines = bad.stderr.splitlines()
    assert sum(str(garbage) in line for line in lines) == 1
    assert any("holds a PEM private key, not a certificate request" in line for line in lines)
    assert sum("would both be written as h1.cert.pem" in line for line in lines) == 1
    assert "nothing was queued (3 problem(s) above)" in bad.stderr
    assert "BEGIN" not in bad.stderr
    assert queue_length(store, queue) == 0
    assert not (tmp_path / "o").exists()


def test_queue_view_finds_a_job_behind_others(
    broker_url: str, redis_url: str, store: ResultsStore, queue: str
) -> None:
    from casign.queue_view import QueueView

    with Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue) as producer:
        ahead = producer.submit_many(
            [producer.request(make_csr(f"a{index}.example.com")) for index in range(3)]
        )
        behind = producer.submit(make_csr("b.example.com"))
    view = QueueView(broker_url, queue)
    assert view.depth() == 2
    places = view.locate([behind, ahead[0], "absent"])
    assert places is not None
    assert (places[behind].jobs_ahead, places[behind].messages_ahead) == (3, 1)
    assert (places[ahead[0]].jobs_ahead, places[ahead[0]].messages_ahead) == (0, 0)
    assert "absent" not in places


def test_workers_leave_a_mark_per_queue(store: ResultsStore, queue: str) -> None:
    from casign.queue_view import worker_activity

    assert worker_activity(store.workers_last_active(), queue) == (
        "no worker has ever served this store"
    )
    store.note_worker_active("other-queue")
    assert "served queue 'other-queue' 0 s ago" in worker_activity(
        store.workers_last_active(), queue
    )
    store.note_worker_active(queue)
    now = time.time()
    assert now - store.workers_last_active()[queue] < 5
    assert worker_activity(store.workers_last_active(), queue, now + 300) == (
        "a worker last started or took a batch from it 5 min ago"
    )


# -- 5. casign request cleans up after itself -------------------------------------------------


def test_request_leaves_no_key_when_it_cannot_start(
    ca_folder: CAFolder, endpoints: list[str], queue_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cases = [
        (["--store", "redis://127.0.0.1:1/0", "--broker", "redis://127.0.0.1:1/0"], {}, 2),
        (endpoints, {"CASIGN_PRODUCER_ID": "hr-portal"}, 2),
        (["--ca", str(ca_folder.root), *endpoints, "--profile", "server_crt"], {}, 3),
    ]
    for flags, extra, code in cases:
        casign(
            "request", "--cn", "www.example.com", *flags, "--out", out,
            cwd=tmp_path, env=queue_env | extra, expect=code,
        )  # fmt: skip
        assert not (out / "www.example.com.key.pem").exists(), flags
        assert not (out / "www.example.com.csr.pem").exists(), flags


@pytest.mark.slow
def test_request_writes_the_key_with_its_certificate_or_says_how_to_finish(
    ca_folder: CAFolder,
    broker_url: str,
    redis_url: str,
    endpoints: list[str],
    queue_env: dict[str, str],
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
    worker_starter: list[WorkerProcess],
) -> None:
    out = tmp_path / "out"
    ca = ["--ca", str(ca_folder.root)]
    # No worker yet: Ctrl-C keeps the key and CSR with the command that finishes the job.
    running = RunningCasign(
        ["request", *ca, *endpoints, "--cn", "early.example.com", "--key-type", "p256",
         "--out", str(out)],
        tmp_path,
        queue_env,
    )  # fmt: skip
    running.wait_for_stderr("no worker has taken a job", timeout=HINT_TIMEOUT)
    code, _, stderr = running.interrupt()
    assert code == 130
    assert (out / "early.example.com.key.pem").exists()
    assert (out / "early.example.com.csr.pem").exists()
    collect_line = re.search(r"`(casign collect [^`]+)`", stderr)
    assert collect_line is not None, stderr
    retry = casign(
        "request", *ca, *endpoints, "--cn", "early.example.com", "--out", out,
        cwd=tmp_path, env=queue_env, expect=2,
    )  # fmt: skip
    assert "waits for job" in retry.stderr and "casign collect" in retry.stderr

    start_test_worker(
        worker_starter, ca_folder, broker_url, redis_url, store, queue, tmp_path / "w.log"
    )
    casign(*collect_line.group(1).split()[1:], cwd=tmp_path, env=queue_env)
    verify(out / "ca-chain.cert.pem", out / "early.example.com.cert.pem")

    # tls_server without --san: the CN becomes the SAN.
    made = casign(
        "request", *ca, *endpoints, "--cn", "www.example.com", "--profile", "tls_server",
        "--key-type", "p256", "--out", out, cwd=tmp_path, env=queue_env,
    )  # fmt: skip
    assert "certificate: " in made.stdout
    certificate = x509.load_pem_x509_certificate((out / "www.example.com.cert.pem").read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.com"]

    # A refusal leaves nothing behind, so the corrected command runs at once.
    refused = casign(
        "request", *ca, *endpoints, "--cn", "not a host", "--out", out,
        cwd=tmp_path, env=queue_env, expect=3,
    )  # fmt: skip
    assert "[subject.cn_not_fqdn]" in refused.stderr and "nothing was kept" in refused.stderr
    assert not list(out.glob("not a host*"))
    assert "not a host" not in json.dumps(manifest_jobs(out))


# -- 8. errors a user can cause: one sentence and an exit code --------------------------------


def test_wrong_ca_folders_are_named_first(
    ca_folder: CAFolder, redis_url: str, queue_env: dict[str, str], tmp_path: Path
) -> None:
    csr = openssl_csr(tmp_path, "www", "/CN=www.example.com")
    missing = casign(
        "submit", "--ca", tmp_path / "nope", csr, "--out", tmp_path / "o",
        cwd=tmp_path, env=queue_env, expect=2,
    )  # fmt: skip
    assert missing.stderr.startswith(f"casign: no CA folder at {tmp_path / 'nope'};")
    for command in (
        ["submit", csr, "--out", tmp_path / "o"],
        ["sign", "--store", redis_url, csr, "-o", tmp_path / "x.pem"],
    ):
        inside = casign(
            command[0], "--ca", ca_folder.intermediate, *command[1:],
            cwd=tmp_path, env=queue_env, expect=2,
        )  # fmt: skip
        assert f"give --ca {ca_folder.root}" in inside.stderr, inside.stderr
        assert "casign init" not in inside.stderr


def test_an_unwritable_out_is_found_before_anything_is_queued(
    endpoints: list[str],
    queue_env: dict[str, str],
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
) -> None:
    csr = openssl_csr(tmp_path, "www", "/CN=www.example.com")
    (tmp_path / "a-file").write_text("")
    refused = casign(
        "submit", *endpoints, csr, "--out", tmp_path / "a-file" / "out",
        cwd=tmp_path, env=queue_env, expect=2,
    )  # fmt: skip
    assert "cannot make the output folder" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert queue_length(store, queue) == 0


def test_an_ocsp_port_in_use_is_one_line(
    ca_folder: CAFolder, redis_url: str, queue_env: dict[str, str], tmp_path: Path
) -> None:
    casign("ocsp-cert", "--ca", ca_folder.root, "--store", redis_url, cwd=tmp_path, env=queue_env)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = casign(
            "ocsp", "--ca", ca_folder.root, "--store", redis_url, "--port", str(port),
            cwd=tmp_path, env=queue_env, expect=2,
        )  # fmt: skip
    assert busy.stderr.strip() == (
        f"casign: port {port} on 127.0.0.1 is in use by another program; choose another --port"
    )


# -- 12. small gaps ---------------------------------------------------------------------------


def test_inspect_reads_a_der_csr(tmp_path: Path) -> None:
    shown = casign("inspect", der_csr(tmp_path, "www", "www.example.com"), cwd=tmp_path).stdout
    assert "Certificate Request:" in shown
    assert "Subject: CN=www.example.com" in shown


def test_the_readme_lists_every_refusal_code_and_the_embedded_urls(tmp_path: Path) -> None:
    text = README.read_text()
    missing = [code.value for code in RefusalCode if f"`{code.value}`" not in text]
    assert missing == []
    embedded = EmbeddedRedis(tmp_path / "ca")
    folder = str(tmp_path.resolve() / "ca")
    assert embedded.broker_url == f"redis+socket://{folder}/redis.sock"
    assert embedded.url == f"unix://{folder}/redis.sock"
    assert "`redis+socket:///ABS/ca/redis.sock`" in text
    assert "`unix:///ABS/ca/redis.sock`" in text


def test_help_lists_collect(tmp_path: Path) -> None:
    shown = casign("--help", cwd=tmp_path).stdout
    assert "  collect " in shown
    done = subprocess.run(
        [sys.executable, "-m", "casign", "collect", "--help"],
        capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=60, check=True,
    )  # fmt: skip
    assert "JOB_LIST" in done.stdout


def test_submit_refuses_the_same_csr_size_as_the_signer() -> None:
    from casign.csr_files import MAX_CSR_BYTES
    from worker.policy import MAX_CSR_BYTES as SIGNER_LIMIT

    assert MAX_CSR_BYTES == SIGNER_LIMIT


@pytest.mark.slow
def test_a_rate_limited_request_keeps_its_key_and_is_retried_under_its_job_id(
    broker_url: str,
    redis_url: str,
    endpoints: list[str],
    queue_env: dict[str, str],
    store: ResultsStore,
    queue: str,
    tmp_path: Path,
    worker_starter: list[WorkerProcess],
) -> None:
    from tests.cas import make_alice_ca

    ca = make_alice_ca(tmp_path / "ca")
    secret = tmp_path / "cli.secret"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)  # a secret file open to others is refused
    ca.producers_path.write_text(
        f'[producers.cli]\nsecret = "file:{secret}"\nrate_per_second = 0.1\nburst = 1\n'
    )
    env = queue_env | {"CASIGN_PRODUCER_ID": "cli", "CASIGN_PRODUCER_SECRET": f"file:{secret}"}
    start_test_worker(worker_starter, ca, broker_url, redis_url, store, queue, tmp_path / "w.log")
    out = tmp_path / "out"
    casign("request", *endpoints, "--cn", "first.example.com", "--out", out, cwd=tmp_path, env=env)
    limited = casign(
        "request", *endpoints, "--cn", "second.example.com", "--out", out,
        cwd=tmp_path, env=env, expect=3,
    )  # fmt: skip
    assert "[auth.rate_limited]" in limited.stderr
    assert (out / "second.example.com.key.pem").exists()
    retry = re.search(r"retry later with `(casign submit [^`]+)`", limited.stderr)
    assert retry is not None, limited.stderr
    job_id = manifest_jobs(out)["second.example.com"]
    assert f"--job-id {job_id}" in retry.group(1)

    for _ in range(3):  # until the bucket holds a token again (one every 10 s)
        time.sleep(10.5)
        again = casign(*shlex.split(retry.group(1))[1:], cwd=tmp_path, env=env, expect=None)
        if again.returncode != 3:
            break
    assert again.returncode == 0, again.stderr
    assert store.job_state(job_id)["state"] == "issued"
    certificate = x509.load_pem_x509_certificate((out / "second.example.com.cert.pem").read_bytes())
    key = serialization.load_pem_private_key(
        (out / "second.example.com.key.pem").read_bytes(), None
    )
    assert certificate.public_key() == key.public_key()

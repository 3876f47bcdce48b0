"""Fault injection for the slow tests: a Redis the test owns, processes to kill, the invariants."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID

from casign.cli import main as casign_main
from core.index import IndexEntry, format_serial, openssl_oneline
from core.messages import JobResult
from core.queue import message_arguments
from producers import Producer
from store.acl import AclAdmin, KeyScope, Role, role_user, write_user_line
from store.embedded import redis_server_binary
from store.results import ResultsStore
from tests.workers import WorkerProcess

_POLL_SECONDS = 0.02


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class OwnedRedis:
    """A redis-server this test starts, kills and restarts: TCP on 127.0.0.1, AOF fsynced always.

    With ACLs on (an `admin_password`), an ACL file it loads at every start, begun as casign
    begins one (a default user no client can log in as: `store.acl.locked_default_user_line`),
    holds an `admin` user (the test's own checks) and the users the roles are given
    (`casign producer add`, `casign acl add`, which save them there), so that they outlive a
    restart as in production.
    """

    directory: Path
    port: int = field(default_factory=free_tcp_port)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    admin_password: str | None = None

    @property
    def url(self) -> str:
        """The URL of the test's own checks: the admin's, with ACLs on."""
        if self.admin_password is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return self.user_url("admin", self.admin_password)

    @property
    def address(self) -> str:
        """The URL without a user: what a role's settings name before its user is added."""
        return f"redis://127.0.0.1:{self.port}/0"

    def user_url(self, user: str, password: str) -> str:
        """The URL a role connects with as its own user."""
        return f"redis://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def acl_path(self) -> Path:
        return self.directory / "users.acl"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def client(self) -> redis.Redis:
        """A client that fails fast (no retries), for the test's own checks."""
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def start(self, timeout: float = 20.0) -> None:
        """Run redis-server on this port and folder, loading the AOF, and wait until it serves."""
        self.directory.mkdir(parents=True, exist_ok=True)
        acl = []
        if self.admin_password is not None:
            if not self.acl_path.exists():  # begun as casign begins one: no default user to use
                admin = f"user admin on >{self.admin_password} ~* &* +@all"
                write_user_line(self.acl_path, "admin", admin, 0o600)
            acl = ["--aclfile", str(self.acl_path)]
        command = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--logfile",
            str(self.log_path),
            *acl,
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.client() as probe:
                    if probe.ping():
                        return
            except redis.BusyLoadingError:
                pass
            except (redis.RedisError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"redis-server did not start; {self.log_path} ends:\n{self.log_tail()}"
                )
            time.sleep(_POLL_SECONDS)

    def stop(self, how: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop the server with `how` (SIGTERM: fsync and exit; SIGKILL: at once) and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(how)
        self.process.wait(timeout=timeout)

    def restart(self, how: signal.Signals, down_seconds: float = 1.0) -> None:
        """Stop with `how`, stay down `down_seconds`, start again on the same port and AOF."""
        self.stop(how)
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def acl_denials(self, ignore: Iterable[str] = ()) -> list[str]:
        """What ACL LOG recorded as refused to any user, but the `ignore`d objects."""
        with self.client() as admin:
            entries = admin.acl_log(128)
        return [
            f"{_text(entry.get('username'))}: {_text(entry.get('reason'))} "
            f"{_text(entry.get('object'))}"
            for entry in entries
            if _text(entry.get("object")) not in ignore
        ]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# The producer every fault test's jobs come from: listed in producers.toml, every message sealed.
FAULTS_PRODUCER = "faults"


@dataclass(frozen=True)
class SealedCA:
    """A copy of a CA folder that serves one listed producer, each role with its own Redis user.

    Made as an operator makes it: `casign producer add` (producers.toml, the secret, the Redis
    user) and `casign acl add signer`, both through the broker Redis's admin URL.
    """

    root: Path
    producer: str
    secret_source: str
    users: Mapping[Role, tuple[str, str]]  # role -> (user, password)

    def url(self, server: OwnedRedis, role: Role) -> str:
        """The URL of `server` for `role`, as its own user."""
        return server.user_url(*self.users[role])


def seal_ca(
    source: Path, destination: Path, broker: OwnedRedis, store: OwnedRedis, scope: KeyScope
) -> SealedCA:
    """Copy the CA at `source` to `destination`, list FAULTS_PRODUCER and make the role users.

    The users go to the broker Redis with the commands an operator runs; a store on a Redis
    of its own gets the same users (same passwords) through its admin, as `casign producer add`
    prints them for a second Redis.
    """
    shutil.copytree(source, destination, symlinks=True)
    env = {
        "CASIGN_STORE_PREFIX": scope.prefix,
        "CASIGN_QUEUE": scope.queue,
        "CASIGN_REDIS_ADMIN_URL": broker.url,
    }
    where = ["--ca", str(destination), "--store", store.address, "--broker", broker.address]
    for command in (["producer", "add", FAULTS_PRODUCER], ["acl", "add", "signer"]):
        done = CliRunner().invoke(casign_main, [*command, *where], env=env)
        if done.exit_code != 0:
            raise RuntimeError(f"casign {' '.join(command)} failed: {done.output}")
    private = destination / "intermediate" / "private"
    passwords = {
        Role.PRODUCER: private / "producers" / f"{FAULTS_PRODUCER}.redis-password",
        Role.SIGNER: private / "redis" / "signer.redis-password",
    }
    users = {
        role: (
            role_user(scope, role, FAULTS_PRODUCER if role is Role.PRODUCER else None).name,
            path.read_text(encoding="utf-8").strip(),
        )
        for role, path in passwords.items()
    }
    if store is not broker:
        admin = AclAdmin.from_url(store.url, "the store Redis")
        try:
            for role, (_, password) in users.items():
                admin.apply(role_user(scope, role, FAULTS_PRODUCER), password)
            admin.save()
        finally:
            admin.close()
    secret = private / "producers" / f"{FAULTS_PRODUCER}.secret"
    return SealedCA(destination, FAULTS_PRODUCER, f"file:{secret}", users)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid`, read from /proc/PID/task/*/children (Linux 3.5+)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        children.extend(int(word) for word in text.split())
    return sorted(set(children))


def pool_processes(worker: WorkerProcess, expected: int, timeout: float = 30.0) -> list[int]:
    """The worker's pool processes once `expected` of them run (the main respawns lost ones)."""
    deadline = time.monotonic() + timeout
    while True:
        children = [pid for pid in child_pids(worker.process.pid) if _is_pool_process(pid)]
        if len(children) >= expected:
            return children
        if worker.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"worker has {len(children)} pool process(es), expected {expected}; "
                f"its log ends:\n{worker.log()[-3000:]}"
            )
        time.sleep(_POLL_SECONDS)


def cpu_ticks(pid: int) -> int:
    """User + system CPU ticks the process has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime (proc(5), counted after the name)


def process_age(pid: int) -> float:
    """Seconds since the process started (0 if it is gone)."""
    try:
        start_ticks = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


# A pool process younger than this may still be starting: killing it then is a different fault.
_SETTLED_SECONDS = 1.0


def pool_settled(worker: WorkerProcess, expected: int, timeout: float = 30.0) -> None:
    """Wait until the worker has `expected` pool processes, each past its start."""
    deadline = time.monotonic() + timeout
    while min(map(process_age, pool_processes(worker, expected))) < _SETTLED_SECONDS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool processes did not settle within {timeout:g} s")
        time.sleep(_POLL_SECONDS)


# CPU ticks (10 ms) in a 0.2 s look that mark a pool process as signing: 2, not more, since on
# a shared 2-core machine at a load of 10 a signing process gets a sixth of a core.
_BUSY_TICKS = 2


def busy_pool_process(worker: WorkerProcess, expected: int, timeout: float = 30.0) -> int:
    """The pool process using the most CPU now (at least `_BUSY_TICKS` in 0.2 s): signing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = pool_processes(worker, expected)
        before = {pid: cpu_ticks(pid) for pid in pids}
        time.sleep(0.2)
        used = {
            pid: cpu_ticks(pid) - before[pid]
            for pid in pids
            if process_age(pid) >= _SETTLED_SECONDS
        }
        busy = [pid for pid, ticks in used.items() if ticks >= _BUSY_TICKS]
        if busy:
            return max(busy, key=used.__getitem__)
    raise RuntimeError("no pool process was busy signing")


def _is_pool_process(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_whole_worker(worker: WorkerProcess) -> list[int]:
    """SIGKILL the worker's main process and its pool processes at once; return their pids."""
    pids = [worker.process.pid, *child_pids(worker.process.pid)]
    os.killpg(worker.process.pid, signal.SIGKILL)  # the worker leads its own process group
    worker.process.wait(timeout=30)
    return pids


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(_POLL_SECONDS)


def pending_count(store: ResultsStore) -> int:
    return int(store.client.scard(store.key("pending")))


def pending_jobs(store: ResultsStore) -> set[str]:
    """The job ids reserved but not published."""
    return {str(member) for member in store.client.smembers(store.key("pending"))}


def _hash(store: ResultsStore, name: str) -> dict[str, str]:
    """A hash of the store as text (the store's client decodes replies)."""
    return {str(k): str(v) for k, v in store.client.hgetall(store.key(name)).items()}


def unacked_job_ids(broker: redis.Redis) -> set[str]:
    """Job ids in the messages kombu's Redis transport holds delivered but unacknowledged.

    Such a message returns to the queue only after the broker's visibility timeout.
    """
    job_ids: set[str] = set()
    for raw in broker.hvals("unacked"):
        job_ids |= _job_ids_in(json.loads(raw)[0])
    return job_ids


def queued_job_ids(broker: redis.Redis, queue: str) -> set[str]:
    """Job ids in the messages waiting in the queue's Redis list."""
    job_ids: set[str] = set()
    for raw in broker.lrange(queue, 0, -1):
        job_ids |= _job_ids_in(json.loads(raw))
    return job_ids


def locate_jobs(
    store: ResultsStore, broker: redis.Redis, queue: str, job_ids: Iterable[str]
) -> dict[str, int]:
    """How many of `job_ids` are issued, reserved, queued, held unacked, or nowhere at all."""
    ids = set(job_ids)
    pipe = store.client.pipeline(transaction=False)
    for job_id in sorted(ids):
        pipe.hget(store.job_key(job_id), "state")
    states = dict(zip(sorted(ids), pipe.execute(), strict=True))
    queued, held = queued_job_ids(broker, queue) & ids, unacked_job_ids(broker) & ids
    places = {"issued": 0, "reserved": 0, "refused": 0, "queued": 0, "unacked": 0, "nowhere": 0}
    for job_id in ids:
        state = states[job_id]
        if state:
            places[state] = places.get(state, 0) + 1
        elif job_id in queued:
            places["queued"] += 1
        elif job_id in held:
            places["unacked"] += 1
        else:
            places["nowhere"] += 1
    return places


def _job_ids_in(message: dict[str, Any]) -> set[str]:
    """The job ids of one Celery (protocol 2) sign_batch message as kombu stores it."""
    args = message_arguments(message)[0]
    return {job["job_id"] for batch in args for job in batch["jobs"]}


@dataclass(frozen=True)
class StoreCounts:
    """What the store holds for one run, for the report."""

    jobs: int
    serials: int
    index_entries: int
    certificates: int
    pending: int


def assert_exactly_once(
    store: ResultsStore,
    results: Iterable[JobResult],
    common_names: Mapping[str, str],
    intermediate: x509.Certificate,
) -> StoreCounts:
    """Every job of `common_names` has exactly one certificate, the one the store holds.

    Checks: every job answered once and issued; no serial twice (`serials` hash, index and
    certificates all hold exactly one entry per job); each answer is the stored certificate,
    signed by the intermediate, for the job's subject, and its index line matches it; nothing
    is left pending.
    """
    answers: dict[str, JobResult] = {}
    for result in results:
        assert result.job_id not in answers, f"job {result.job_id} answered twice"
        answers[result.job_id] = result
    assert set(answers) == set(common_names), (
        f"{len(set(common_names) - set(answers))} job(s) without an answer, "
        f"{len(set(answers) - set(common_names))} unexpected"
    )
    not_issued = {r.job_id: (r.status, r.code, r.message) for r in answers.values() if not r.ok}
    assert not_issued == {}, (
        f"{len(not_issued)} job(s) not issued, e.g. {next(iter(not_issued.items()))}"
    )

    client = store.client
    serial_owners = _hash(store, "serials")
    index = _hash(store, "index")
    certificates = _hash(store, "certs")
    order = client.lrange(store.key("index:order"), 0, -1)
    pending = pending_jobs(store)
    jobs = len(common_names)

    answered_serials = {r.serial for r in answers.values()}
    assert len(answered_serials) == jobs, "two jobs were answered with one serial"
    assert len(serial_owners) == jobs, f"{len(serial_owners)} serials drawn for {jobs} jobs"
    assert sorted(serial_owners.values()) == sorted(common_names), "a job owns two serials"
    assert len(index) == jobs and len(certificates) == jobs, (
        f"{len(index)} index entries and {len(certificates)} certificates for {jobs} jobs"
    )
    assert set(index) == set(certificates) == set(serial_owners) == answered_serials
    assert len(order) == len(set(order)) == jobs, "index:order lists a serial twice"
    assert pending == set(), f"{len(pending)} job(s) still pending"

    pipe = client.pipeline(transaction=False)
    for job_id in answers:
        pipe.hmget(store.job_key(job_id), "state", "serial", "record")
    rows = dict(zip(answers, pipe.execute(), strict=True))
    for job_id, result in answers.items():
        state, serial, record = rows[job_id]
        assert (state, serial, record) == ("issued", result.serial, None), job_id
        assert serial_owners[serial] == job_id
        assert result.certificate_pem == certificates[serial], f"{job_id}: not the stored one"
        certificate = x509.load_pem_x509_certificate(certificates[serial].encode())
        assert format_serial(certificate.serial_number) == serial
        certificate.verify_directly_issued_by(intermediate)
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert [name.value for name in names] == [common_names[job_id]], job_id
        entry = IndexEntry.from_openssl_line(index[serial])
        assert format_serial(entry.serial) == serial
        assert entry.subject == openssl_oneline(certificate.subject)
        assert entry.expires == certificate.not_valid_after_utc

    # One "issued" decision in the audit log per job, naming the job's serial.
    audited: dict[str, list[str]] = {}
    for stored in store.audit_entries():
        decision = json.loads(stored.partition(" ")[2])
        if decision.get("event") == "issued":
            audited.setdefault(decision["job_id"], []).append(decision.get("serial"))
    assert audited == {job_id: [r.serial] for job_id, r in answers.items()}, (
        "the audit log does not hold exactly one issued decision per job"
    )
    return StoreCounts(jobs, len(serial_owners), len(index), len(certificates), len(pending))


class Collector(threading.Thread):
    """Reads a producer's results while the test breaks things; the deadline may be extended.

    `Producer.results` is called in rounds of a few seconds with the jobs still out, so a
    round that ends with TimeoutError just leads to the next one; any other exception from
    the producer (the store unreachable) is kept in `errors` and the next round goes on.
    """

    def __init__(
        self,
        producer: Producer,
        job_ids: Iterable[str],
        timeout: float,
        locate: Callable[[set[str]], Mapping[str, int]] | None = None,
    ) -> None:
        super().__init__(name="collector", daemon=True)
        self.producer = producer
        self.locate = locate
        self.remaining = set(job_ids)
        self.deadline = time.monotonic() + timeout
        self.results: list[JobResult] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while self.remaining and time.monotonic() < self.deadline:
            try:
                for result in self.producer.results(sorted(self.remaining), timeout=5):
                    self.remaining.discard(result.job_id)
                    self.results.append(result)
            except TimeoutError:
                continue
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)

    def finish(self) -> list[JobResult]:
        """Wait for every result (until the deadline) and return them."""
        self.join(max(self.deadline - time.monotonic(), 0) + 10)
        assert not self.is_alive(), "the collector did not stop"
        if self.remaining:
            where = self.locate(self.remaining) if self.locate else "not located"
            raise AssertionError(
                f"{len(self.remaining)} job(s) without a result by the deadline "
                f"(first: {sorted(self.remaining)[0]}); where they are: {where}; "
                f"producer errors: {self.errors[:3]}"
            )
        return self.results


def kill_whole_worker_when(
    worker: WorkerProcess, condition: Callable[[], bool], timeout: float, what: str
) -> list[int]:
    """SIGKILL the whole worker at a moment `condition` holds while its main process is frozen.

    The main process is stopped (SIGSTOP) while `condition` is checked, so what it holds in the
    broker cannot change between the check and the kill; the pool processes keep signing.
    """
    main = worker.process.pid
    deadline = time.monotonic() + timeout
    while True:
        os.kill(main, signal.SIGSTOP)
        try:
            if condition():
                return kill_whole_worker(worker)
        except BaseException:
            os.kill(main, signal.SIGCONT)
            raise
        os.kill(main, signal.SIGCONT)
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(_POLL_SECONDS / 2)


def assert_none_half_recorded(store: ResultsStore, job_ids: Iterable[str]) -> dict[str, int]:
    """Each job is wholly issued, wholly reserved (pending, record kept), or not there at all.

    Issued: its serial is its own, its certificate and index entry are stored, it is not
    pending. Reserved: pending, with the record that rebuilds its TBS, its serial held in
    `serials`, and no certificate or index entry under that serial. Absent: nothing at all.
    Returns how many jobs are in each state.
    """
    ids = list(job_ids)
    client = store.client
    pending = pending_jobs(store)
    serial_owners = _hash(store, "serials")
    owned = {job_id: serial for serial, job_id in serial_owners.items()}
    certificates = {str(serial) for serial in client.hkeys(store.key("certs"))}
    index = {str(serial) for serial in client.hkeys(store.key("index"))}
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(store.job_key(job_id), "state", "serial", "record")
    tally = {"issued": 0, "reserved": 0, "absent": 0}
    for job_id, (state, serial, record) in zip(ids, pipe.execute(), strict=True):
        if state == "issued":
            assert serial_owners.get(serial) == job_id, f"{job_id}: serial not its own"
            assert serial in certificates and serial in index, f"{job_id}: issued, not stored"
            assert job_id not in pending and record is None, f"{job_id}: issued yet pending"
        elif state == "reserved":
            assert job_id in pending and record, f"{job_id}: reserved without pending record"
            assert serial_owners.get(serial) == job_id, f"{job_id}: reserved serial not held"
            assert serial not in certificates and serial not in index, f"{job_id}: half issued"
        else:
            assert state is None, f"{job_id}: unexpected state {state!r}"
            assert job_id not in pending and job_id not in owned, f"{job_id}: stray record"
        tally[state or "absent"] += 1
    return tally


def replaced(worker: WorkerProcess, victim: int, concurrency: int) -> bool:
    """True once `victim` is gone from the pool and the pool is full again."""
    alive = pool_processes(worker, 0)
    return victim not in alive and len(alive) >= concurrency


def resume(pid: int) -> None:
    """SIGCONT `pid` if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)

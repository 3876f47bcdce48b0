"""The signer trusts nothing a producer can write (issue 10): each attack as a test.

Each section keeps its own fixtures; the sections are independent of one another.
"""

from __future__ import annotations

# --- anchors, rights, secrets ------------------------------------------------------------------
# Producers trust an anchor, not the store; producers revoke only what they obtained; CRLs are
# never made on a producer's message; the signer starts only when told to serve anyone, and
# never beside the root key; passwords stay off command lines; secret files stay private.
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import producers.trust
from casign.cli import main as casign_main
from casign.supervise import stop_process_group
from core.auth import MessageKind, ca_identity, seal
from core.errors import ConfigurationError, RefusalCode
from core.index import Status
from core.keys import KeyType, write_private_key
from core.messages import JobResult, RevokeRequest, SignRequest
from core.queue import CRL_TASK, celery_settings
from keystore import load_signing_key, parse_key_uri
from producers import Producer
from producers.trust import ResultCheck, TrustAnchor
from store.embedded import EmbeddedRedis
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from tests.workers import start_worker
from worker.access import AccessPolicy, AllowedProducer, ProducerPolicy
from worker.adopt import adopt_ca
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner
from worker.lifecycle_tasks import handle_revoke
from worker.ocsp_delegate import ensure_ocsp_certificate

CASIGN = [sys.executable, "-m", "casign"]
PRODUCER_QUEUE = "casign.sign"


def _casign(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """`casign ARGS` as a separate process, with no CASIGN_* variable but those in `env`."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("CASIGN_")}
    return subprocess.run(
        [*CASIGN, *map(str, args)],
        env=base | (env or {}),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def _cli(store: ResultsStore, queue: str, *args: str | Path) -> Result:
    """`casign ARGS` in this process, on the test's store prefix and queue."""
    env = {"CASIGN_STORE_PREFIX": store.prefix.rstrip(":"), "CASIGN_QUEUE": queue}
    return CliRunner().invoke(casign_main, [str(arg) for arg in args], env=env)


def _place(store: ResultsStore, queue: str, broker_url: str, redis_url: str) -> dict[str, str]:
    """The environment that points a `casign` process at the test's broker, store and queue."""
    return {
        "CASIGN_BROKER_URL": broker_url,
        "CASIGN_STORE_URL": redis_url,
        "CASIGN_STORE_PREFIX": store.prefix.rstrip(":"),
        "CASIGN_QUEUE": queue,
    }


def _certificates(pem: str | bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem if isinstance(pem, bytes) else pem.encode())


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def own_ca(tmp_path: Path) -> CAFolder:
    """A CA of this test's own: some tests move its root key, or add files to it."""
    return make_alice_ca(tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    """Another CA, whose chain an attacker with write access to the store would swap in."""
    return make_alice_ca(
        tmp_path_factory.mktemp("other") / "ca",
        root_cn="Mallory Root CA",
        intermediate_cn="Mallory Intermediate CA",
    )


@pytest.fixture
def drained(redis_url: str, queue: str) -> Iterator[str]:
    """The test's queue, emptied afterwards of what no worker took."""
    yield queue
    client = redis.Redis.from_url(redis_url)
    client.delete(queue)
    client.close()


def _signed_in_store(
    authority: SigningAuthority, store: ResultsStore, job_id: str, csr_pem: str
) -> JobResult:
    """What a worker leaves in the store for one job (signed in this process), chain included."""
    store.set_chain(authority.chain_pem)
    (result,) = BatchSigner(authority, store).sign_batch([job(job_id, csr_pem)])
    assert result.ok, result
    return result


# The swapped chain: the store's chain is another CA's.


def test_a_swapped_chain_is_reported_untrusted_and_no_chain_is_written(
    ca_folder: CAFolder,
    authority: SigningAuthority,
    other_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    csr = tmp_path / "www.example.com.csr.pem"
    csr.write_text(make_csr("www.example.com"))
    _signed_in_store(authority, store, "swapped-chain", csr.read_text())
    store.set_chain(other_ca.chain_pem())  # what a writer to the store could do
    out = tmp_path / "out"
    place = ["--broker", broker_url, "--store", redis_url]
    anchor = ["--trust-anchor", ca_folder.root_cert_path]

    done = _cli(
        store, queue, "submit", *place, *anchor, "--job-id", "swapped-chain", csr, "--out", out
    )
    assert done.exit_code == 3, done.output
    assert "[result.untrusted]" in done.output and "trust anchor" in done.output
    assert not (out / "ca-chain.cert.pem").exists()
    assert not (out / "www.example.com.cert.pem").exists()

    # With the chain put back, `collect` checks the same answer, and writes the chain it
    # validated: the real intermediate and the anchor.
    store.set_chain(ca_folder.chain_pem())
    done = _cli(store, queue, "collect", "--store", redis_url, *anchor, out)
    assert done.exit_code == 0, done.output
    written = _certificates((out / "ca-chain.cert.pem").read_bytes())
    assert written == _certificates(ca_folder.chain_pem())
    assert (out / "www.example.com.cert.pem").exists()


def test_a_fingerprint_anchor_takes_the_root_only_from_a_chain_that_holds_it(
    ca_folder: CAFolder,
    authority: SigningAuthority,
    other_ca: CAFolder,
    store: ResultsStore,
) -> None:
    root_der = ca_folder.root_certificate().public_bytes(serialization.Encoding.DER)
    anchor = TrustAnchor.parse(hashlib.sha256(root_der).hexdigest())
    request_pem = make_csr("fp.example.com")
    result = _signed_in_store(authority, store, "fingerprint-anchor", request_pem)
    wanted = SignRequest.model_validate(job("fingerprint-anchor", request_pem))
    chains = {"real": ca_folder.chain_pem(), "other": other_ca.chain_pem()}
    swapped = ResultCheck(anchor, lambda: chains["other"]).check(result, wanted)
    assert swapped.code == RefusalCode.RESULT_UNTRUSTED and swapped.certificate_pem is None
    check = ResultCheck(anchor, lambda: chains["real"])
    assert check.check(result, wanted) == result
    assert _certificates(check.chain_pem() or "") == _certificates(ca_folder.chain_pem())


def test_an_answer_for_another_usage_or_under_another_serial_is_untrusted(
    ca_folder: CAFolder, authority: SigningAuthority, store: ResultsStore
) -> None:
    """The same key's certificate of another profile (a client certificate handed to a server
    request), or a true certificate under a serial it does not have, is not reported issued."""
    pem = make_csr("both.example.com")
    store.set_chain(authority.chain_pem)
    (client,) = BatchSigner(authority, store).sign_batch(
        [job("as-client", pem, "usr_cert", san=["email:both@example.com"])]
    )
    assert client.ok, client
    check = ResultCheck(TrustAnchor.parse(ca_folder.root_cert_path), store.chain)
    as_server = SignRequest.model_validate(job("as-client", pem, "server_cert"))
    wrong_usage = check.check(client, as_server)
    assert wrong_usage.code == RefusalCode.RESULT_UNTRUSTED
    assert "serverAuth" in (wrong_usage.message or "")
    as_client = SignRequest.model_validate(
        job("as-client", pem, "usr_cert", san=["email:both@example.com"])
    )
    assert check.check(client, as_client) == client
    renamed = check.check(client.model_copy(update={"serial": "0BADC0DE"}), as_client)
    assert renamed.code == RefusalCode.RESULT_UNTRUSTED and "serial" in (renamed.message or "")


def test_without_an_anchor_answers_are_still_taken_and_a_warning_is_logged_once(
    authority: SigningAuthority,
    store: ResultsStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(producers.trust, "_warned_without_anchor", False)
    pem = make_csr("no-anchor.example.com")
    result = _signed_in_store(authority, store, "no-anchor", pem)
    request = SignRequest.model_validate(job("no-anchor", pem))
    check = ResultCheck(None, store.chain)
    with caplog.at_level(logging.WARNING, logger="casign.producer"):
        assert check.check(result, request) == result
        assert check.check(result, request) == result
        assert check.chain_pem() == store.chain()
    warned = [record for record in caplog.records if "no trust anchor" in record.getMessage()]
    assert len(warned) == 1


# A certificate for another key: an answer pushed by whoever can write to the store.


def test_a_certificate_for_another_key_is_reported_untrusted(
    ca_folder: CAFolder,
    authority: SigningAuthority,
    store: ResultsStore,
    drained: str,
    broker_url: str,
    redis_url: str,
) -> None:
    theirs = _signed_in_store(
        authority,
        store,
        "someone-else",
        make_csr("a.example.com", key=ec.generate_private_key(ec.SECP256R1())),
    )
    mine = ec.generate_private_key(ec.SECP256R1())
    with Producer(
        broker_url,
        redis_url,
        store_prefix=store.prefix,
        queue=drained,
        trust_anchor=ca_folder.root_cert_path,
    ) as producer:
        csr_pem = make_csr("a.example.com", key=mine)
        job_id = producer.submit(csr_pem)
        request = producer.request(csr_pem, job_id=job_id)
        reply_list = store.reply_key(producer.reply_to)

        def push(**fields: object) -> None:
            forged = JobResult(job_id=job_id, status="issued", **fields)  # type: ignore[arg-type]
            store.client.rpush(reply_list, forged.model_dump_json(exclude_none=True))

        # Without the request's fingerprint an answer is not one: it is ignored.
        push(serial=theirs.serial, certificate_pem=theirs.certificate_pem)
        with pytest.raises(TimeoutError):
            list(producer.results([job_id], timeout=2.5))
        # With it, the certificate is checked: another key's is reported, not handed out.
        push(
            serial=theirs.serial,
            certificate_pem=theirs.certificate_pem,
            fingerprint=request.fingerprint(),
        )
        (answer,) = producer.results([job_id], timeout=10)
        assert not answer.ok and answer.code == RefusalCode.RESULT_UNTRUSTED
        assert "another key" in (answer.message or "") and answer.certificate_pem is None
        assert producer.chain_pem() is None  # nothing validated, so no chain to hand out

        # A job it neither sent nor was told to expect cannot be waited for at all.
        with pytest.raises(ValueError, match="expect"):
            list(producer.results(["never-sent"], timeout=1))

        # The real answer, from the signer, passes every check.
        second = producer.submit(csr_pem)
        sent = producer.request(csr_pem, job_id=second)
        BatchSigner(authority, store).sign_batch([sent.model_dump()], reply_to=producer.reply_to)
        (issued,) = producer.results([second], timeout=10)
        assert issued.ok, issued
        assert _certificates(producer.chain_pem() or "") == _certificates(ca_folder.chain_pem())


# Revocation rights: a producer revokes what it obtained; the OCSP delegate only the operator.


def _seal_revocation(
    name: str, secret: bytes, ca: str, serial: str, reason: str
) -> dict[str, object]:
    request = RevokeRequest(
        request_id=uuid.uuid4().hex, serial=serial, reason=reason, reply_to=f"{name}-replies"
    )
    envelope = seal(
        secret,
        MessageKind.REVOKE,
        producer=name,
        ca=ca,
        queue=PRODUCER_QUEUE,
        reply_to=request.reply_to,
        payload=request.sealed_payload(),
    )
    return request.model_copy(update={"envelope": envelope}).model_dump()


def test_a_producer_revokes_only_what_it_obtained_and_never_the_ocsp_delegate(
    own_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authority = load_authority(own_ca.root)
    ca = ca_identity(authority.intermediate)
    secrets_of = {name: (name * 32)[:32].encode() for name in ("web", "hr", "ops")}
    producers = {}
    for name, secret in secrets_of.items():
        monkeypatch.setenv(f"TEST_{name.upper()}_SECRET", secret.decode())
        rights = {"revoke": "any"} if name == "ops" else {}
        policy = ProducerPolicy(secret=f"env:TEST_{name.upper()}_SECRET", **rights)  # type: ignore[arg-type]
        producers[name] = AllowedProducer(name, secret, policy)
    access = AccessPolicy(producers, ca, PRODUCER_QUEUE)
    jobs = [job("web-order-1", make_csr("shop.example.com"))]
    envelope = seal(
        secrets_of["web"],
        MessageKind.SIGN,
        producer="web",
        ca=ca,
        queue=PRODUCER_QUEUE,
        reply_to="web-replies",
        payload=jobs,
    )
    (issued,) = BatchSigner(authority, store, access).sign_batch(jobs, "web-replies", envelope)
    assert issued.ok and issued.serial is not None
    serial = issued.serial
    revocations = RevocationStore(store)

    def revoke_as(name: str, target: str, reason: str = "keyCompromise") -> str | None:
        raw = _seal_revocation(name, secrets_of[name], ca, target, reason)
        result = handle_revoke(raw, revocations, access)
        assert result is not None
        return result.code

    def status(target: str) -> Status:
        entry = store.index_entry(target)
        assert entry is not None
        return entry.status

    assert revoke_as("hr", serial) == "revoke.not_allowed"  # web's certificate, not hr's
    assert revoke_as("web", serial, "CACompromise") == "revoke.not_allowed"  # not its reason
    assert status(serial) is Status.VALID
    assert '"reason":"revoke.not_allowed"' in list(store.audit_entries())[-1]
    assert revoke_as("web", serial) is None and status(serial) is Status.REVOKED

    delegate = ensure_ocsp_certificate(own_ca, authority, store)
    delegate_serial = f"{delegate.certificate.serial_number:X}"
    delegate_serial = delegate_serial.rjust(len(delegate_serial) + len(delegate_serial) % 2, "0")
    assert revoke_as("ops", delegate_serial) == "revoke.not_allowed"  # revoke = "any" or not
    unsealed = RevokeRequest(request_id="open-1", serial=delegate_serial, reply_to="anyone")
    open_signer = handle_revoke(unsealed.model_dump(), revocations, None)
    assert open_signer is not None and open_signer.code == "revoke.not_allowed"
    assert status(delegate_serial) is Status.VALID

    done = _cli(
        store, queue, "revoke", delegate_serial, "--in-process", "--ca", own_ca.root,
        "--store", redis_url, "--reason", "keyCompromise",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert status(delegate_serial) is Status.REVOKED
    assert '"requester":"operator"' in list(store.audit_entries())[-1]


# CRLs: on the signer's own schedule, never on a producer's message.


def _crl_number(revocations: RevocationStore) -> int | None:
    crl = revocations.latest_crl()
    if crl is None:
        return None
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_a_crl_message_from_a_producer_is_not_acted_on(
    own_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    revocations = RevocationStore(store)
    worker = start_worker(
        own_ca.root, broker_url, redis_url, store, queue, tmp_path / "w.log", 1, flags=["--beat"]
    )
    try:
        deadline = time.monotonic() + 60
        while (scheduled := _crl_number(revocations)) is None:
            assert time.monotonic() < deadline, worker.log()[-2000:]
            time.sleep(0.2)
        app = Celery("a-producer", set_as_current=False)
        app.conf.update(celery_settings(broker_url, queue))
        app.send_task(CRL_TASK, queue=queue, ignore_result=True)
        app.close()
        # A job queued behind it is answered, so the worker has been past the CRL message.
        with Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue) as producer:
            (result,) = producer.results([producer.submit(make_csr("after.example.com"))], 60)
        assert result.ok, result
        time.sleep(1.0)
    finally:
        worker.stop()
    assert _crl_number(revocations) == scheduled
    assert "unregistered task" in worker.log() and CRL_TASK in worker.log()


# Open mode only when asked; never beside the root key.


def test_without_producers_toml_the_worker_refuses_to_start_unless_open(
    own_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    place = _place(store, queue, broker_url, redis_url)
    refused = _casign(
        "worker", "--ca", own_ca.root, "--no-restart", "--allow-root-key", env=place, timeout=60
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{own_ca.producers_path} is absent" in refused.stderr and "--open" in refused.stderr
    assert "celery@" not in refused.stdout + refused.stderr  # refused before Celery started

    worker = start_worker(own_ca.root, broker_url, redis_url, store, queue, tmp_path / "w.log", 1)
    worker.stop()
    assert "open mode (--open)" in worker.log()


def test_a_readable_root_key_stops_the_worker(
    own_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    place = _place(store, queue, broker_url, redis_url)
    refused = _casign(
        "worker", "--ca", own_ca.root, "--no-restart", "--open", env=place, timeout=60
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert str(own_ca.root_key_path) in refused.stderr and "--allow-root-key" in refused.stderr

    offline = tmp_path / "offline-media"
    offline.mkdir()
    shutil.move(own_ca.root_key_path, offline / "ca.key.pem")
    worker = start_worker(
        own_ca.root, broker_url, redis_url, store, queue, tmp_path / "w.log", 1,
        allow_root_key=False,
    )  # fmt: skip
    worker.stop()


def test_init_keeps_the_root_passphrase_apart_and_writes_it_nowhere(tmp_path: Path) -> None:
    intermediate_pass = _private(tmp_path / "intermediate.pass", "intermediate passphrase\n")
    root_pass = _private(tmp_path / "root.pass", "a root passphrase of its own\n")
    same = _casign(
        "init", tmp_path / "same", "--key-type", "p256",
        "--passphrase-file", intermediate_pass, "--root-passphrase-file", intermediate_pass,
    )  # fmt: skip
    assert same.returncode == 2 and "a passphrase of its own" in same.stderr
    done = _casign(
        "init", tmp_path / "ca", "--key-type", "p256",
        "--passphrase-file", intermediate_pass, "--root-passphrase-file", root_pass,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "offline media" in done.stdout
    folder = CAFolder(tmp_path / "ca")
    root_pem = folder.root_key_path.read_bytes()
    serialization.load_pem_private_key(root_pem, b"a root passphrase of its own")
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(root_pem, b"intermediate passphrase")
    load_signing_key(folder.intermediate_key_uri())  # the intermediate's, from casign.toml
    for path in folder.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"a root passphrase of its own" not in data
            assert str(root_pass).encode() not in data, path


# Secrets and files.


def test_a_planted_symlink_at_the_chain_file_leaves_the_key_untouched(
    authority: SigningAuthority,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    csr = tmp_path / "www.example.com.csr.pem"
    csr.write_text(make_csr("www.example.com"))
    _signed_in_store(authority, store, "planted-link", csr.read_text())
    out = tmp_path / "out"
    out.mkdir()
    key = out / "www.example.com.key.pem"
    write_private_key(key, KeyType.P256.generate(), None)  # 0400
    before = key.read_bytes()
    (out / "ca-chain.cert.pem").symlink_to(key)

    done = _cli(
        store, queue, "submit", "--broker", broker_url, "--store", redis_url,
        "--job-id", "planted-link", csr, "--out", out,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert key.read_bytes() == before and (key.stat().st_mode & 0o777) == 0o400
    chain = out / "ca-chain.cert.pem"
    assert not chain.is_symlink() and (chain.stat().st_mode & 0o777) == 0o444
    assert _certificates(chain.read_bytes()) == _certificates(authority.chain_pem)


def test_a_planted_symlink_at_the_embedded_redis_conf_leaves_its_target_untouched(
    own_ca: CAFolder, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.key.pem"
    write_private_key(victim, KeyType.P256.generate(), None)  # 0400
    before = victim.read_bytes()
    (own_ca.root / "redis.conf").symlink_to(victim)
    with EmbeddedRedis(own_ca.root).running() as embedded:
        assert embedded.is_running()
    assert victim.read_bytes() == before and (victim.stat().st_mode & 0o777) == 0o400
    assert not (own_ca.root / "redis.conf").is_symlink()


def _with_password(redis_url: str, user: str, password: str) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def _process_tree(pid: int) -> list[int]:
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == parent:
                tree.append(int(stat.parent.name))
                frontier.append(int(stat.parent.name))
    return tree


def test_the_supervised_worker_child_has_no_password_on_its_command_line(
    own_ca: CAFolder, store: ResultsStore, queue: str, redis_url: str, tmp_path: Path
) -> None:
    if not redis_url.startswith("redis://"):
        pytest.skip("needs a Redis on TCP to give a password to")
    user, password = f"casign-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    url = _with_password(redis_url, user, password)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASIGN_")}
    env |= _place(store, queue, url, url)
    log_path = tmp_path / "supervisor.log"
    with log_path.open("ab") as log:
        supervisor = subprocess.Popen(
            [*CASIGN, "worker", "--ca", str(own_ca.root), "--open", "--allow-root-key",
             "--concurrency", "1", "--loglevel", "WARNING"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while store.chain() is None:  # a pool process of the child has opened the key
            assert supervisor.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        tree = _process_tree(supervisor.pid)
        assert len(tree) >= 3  # the supervisor, its Celery worker, a pool process
        command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree]
    finally:
        stop_process_group(supervisor, timeout=30)
        admin.acl_deluser(user)
        admin.close()
    assert any(b"--no-restart" in line for line in command_lines)  # the child was seen
    for line in command_lines:
        assert password.encode() not in line, line.replace(b"\0", b" ")


def test_a_secret_file_open_to_its_group_or_others_is_refused(
    broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    secret = _private(tmp_path / "web.secret", "w" * 32 + "\n", 0o640)
    with pytest.raises(ConfigurationError, match=f"{secret}.* mode 0640") as refused:
        Producer(broker_url, redis_url, identity="web", secret_source=f"file:{secret}")
    assert "chmod 600" in str(refused.value) and "w" * 16 not in str(refused.value)
    pin = parse_key_uri(f"file:{tmp_path / 'k.pem'}?pin-source=file:{secret}")
    with pytest.raises(ConfigurationError, match=str(secret)):
        pin.read_pin()
    secret.chmod(0o604)
    init = _casign("init", tmp_path / "ca", "--key-type", "p256", "--passphrase-file", secret)
    assert init.returncode == 2 and f"{secret}' is mode 0604" in init.stderr
    assert not (tmp_path / "ca").exists()
    secret.chmod(0o600)
    Producer(broker_url, redis_url, identity="web", secret_source=f"file:{secret}").close()


def test_an_empty_passphrase_file_is_refused_everywhere(
    own_ca: CAFolder,
    store: ResultsStore,
    drained: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    empty = _private(tmp_path / "empty.pass", "\n")
    out = tmp_path / "out"
    request = _casign(
        "request", "--cn", "www.example.com", "--passphrase-file", empty, "--out", out,
        "--timeout", "3", env=_place(store, drained, broker_url, redis_url),
    )  # fmt: skip
    assert request.returncode == 2, request.stdout + request.stderr
    assert f"{empty}' is empty" in request.stderr
    assert not out.exists() or not any(out.iterdir())

    init = _casign("init", tmp_path / "new-ca", "--passphrase-file", empty)
    assert init.returncode == 2 and "is empty" in init.stderr
    with pytest.raises(ConfigurationError, match="is empty"):
        adopt_ca(own_ca.root, store, empty)
    with pytest.raises(ConfigurationError, match="is empty"):
        parse_key_uri(f"file:{own_ca.intermediate_key_path}?pin-source=file:{empty}").read_pin()
    with pytest.raises(ValueError, match="unencrypted"):
        write_private_key(tmp_path / "k.pem", KeyType.P256.generate(), "")


def test_the_compose_signer_holds_neither_the_root_key_nor_its_passphrase(
    store: ResultsStore, queue: str, broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    if shutil.which("softhsm2-util") is None or shutil.which("pkcs11-tool") is None:
        pytest.skip("SoftHSM and opensc are not installed")
    state = tmp_path / "signer-data"
    script = Path(__file__).resolve().parents[1] / "softhsm" / "docker-signer.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASIGN_")}
    env |= _place(store, queue, broker_url, redis_url) | {"CASIGN_STATE_DIR": str(state)}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    log_path = tmp_path / "signer.log"
    with log_path.open("ab") as log:
        signer = subprocess.Popen(
            ["bash", str(script)], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while store.chain() is None:
            assert signer.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        stop_process_group(signer, timeout=30)
    folder = CAFolder(state / "ca")
    assert not folder.root_key_path.exists()
    assert folder.root_certificate() == _certificates(store.chain() or "")[-1]
    kept = [path.name for path in state.rglob("*") if path.is_file()]
    assert not [name for name in kept if "root" in name and "pass" in name], kept
    assert "open mode (--open)" in log_path.read_text()

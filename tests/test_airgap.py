"""The air-gapped signer: two stores that share nothing but files (`casign airgap`).

The online side is the test Redis under a fresh prefix (its queue, its store); the offline side
is the embedded Redis of a second CA folder, the only one holding the key. Between them only
bundle files (and the relay key, carried once) are copied.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casign.job_status import describe_jobs
from casign.queue_view import QueueView
from core.bundle import BundleRefused
from core.cms import CMSError, sign_detached, verify_detached
from core.errors import Retryable
from core.keys import KeyType
from core.messages import SignRequest
from producers.airgap_relay import export_bundles
from producers.revocation import send_revocation
from store.airgap import AirgapRecords
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.airgap_setup import AirGap, air_gap, openssl_verify_all
from tests.cas import make_alice_ca
from tests.casign_cli import run_casign
from tests.csrs import make_csr
from tests.openssl_cli import openssl
from tests.softhsm_token import SoftHsmToken
from worker.authority import load_authority


@pytest.fixture
def gap(tmp_path: Path, broker_url: str, redis_url: str) -> Iterator[AirGap]:
    if not redis_url.startswith("redis://"):
        pytest.skip("the online side needs the TCP Redis at 127.0.0.1:6379")
    with air_gap(tmp_path, broker_url, redis_url) as both:
        yield both


def submit(gap: AirGap, count: int, batch_size: int = 100) -> dict[str, list[SignRequest]]:
    """`count` jobs from each producer, sent to the online queue."""
    sent: dict[str, list[SignRequest]] = {}
    for name in ("alpha", "beta"):
        producer = gap.producer(name)
        requests = [
            producer.request(make_csr(f"host{number}.{name}.example.com"))
            for number in range(count)
        ]
        producer.submit_many(requests, batch_size=batch_size)
        sent[name] = requests
    return sent


def collect(gap: AirGap, sent: dict[str, list[SignRequest]]) -> dict[str, str]:
    """Every producer's answers (job id -> serial); each must be issued and trusted."""
    serials: dict[str, str] = {}
    for name, requests in sent.items():
        results = list(gap.producer(name).results([r.job_id for r in requests], timeout=30))
        assert len(results) == len(requests)
        for result in results:
            assert result.ok, (result.code, result.message)
            assert result.serial is not None
            serials[result.job_id] = result.serial
    return serials


def index_lines(store: ResultsStore) -> list[str]:
    return sorted(store.index_lines())


def round_trip(gap: AirGap) -> tuple[Path, Path]:
    """Export, sign and import once; the request and results bundles."""
    [bundle] = gap.export()
    report = gap.sign(bundle)
    [results] = report.results
    gap.import_(gap.carry_back(results))
    return bundle, results


def rewrite_member(path: Path, member: str, change: bytes | None = None) -> None:
    """The bundle at `path` with one member's bytes altered (one byte flipped, or `change`)."""
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]  # type: ignore[union-attr]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, original in members:
            data = original
            if info.name == member:
                if change is None:
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
                else:
                    data = change
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


def members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def certificates_in(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {
            info.name: tar.extractfile(info).read()  # type: ignore[union-attr]
            for info in tar
            if info.name.startswith("certs/")
        }


# -- the round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "jobs_each", [50, pytest.param(500, marks=pytest.mark.slow, id="1000-jobs")]
)
def test_jobs_from_two_producers_go_out_signed_and_come_back(
    gap: AirGap, tmp_path: Path, jobs_each: int
) -> None:
    total = 2 * jobs_each
    sent = submit(gap, jobs_each)
    [bundle] = gap.export()
    first = sent["alpha"][0].job_id
    assert gap.producer("alpha").status(first) is None
    assert gap.producer("alpha").waiting_offline(first)  # "exported, waiting for the signer"
    [(said, known)] = describe_jobs(
        gap.online_store, QueueView("unused://", gap.queue), [first], "casign worker"
    ).values()
    assert said.startswith("exported, waiting for the signer") and known
    assert gap.online_store.count_issued() == 0
    report = gap.sign(bundle)
    assert (report.issued, report.refused, report.gap) == (total, 0, [])
    [results] = report.results
    imported = gap.import_(gap.carry_back(results))
    assert (imported.issued, imported.batches) == (total, 2 * -(-jobs_each // 100))

    serials = collect(gap, sent)
    assert len(set(serials.values())) == total
    assert not gap.producer("alpha").waiting_offline(first)
    pems = [gap.online_store.certificate(serial) or "" for serial in serials.values()]
    openssl_verify_all(
        pems,
        gap.offline.root_cert_path,
        gap.offline.intermediate_cert_path,
        tmp_path / "verify",
    )
    assert index_lines(gap.offline_store) == index_lines(gap.online_store)
    assert len(index_lines(gap.online_store)) == total
    # The results manifest's signature verifies with openssl, against the chain alone.
    with tarfile.open(gap.carry_back(results)) as tar:
        tar.extractall(tmp_path / "results", filter="data")
    checked = subprocess.run(
        [
            "openssl", "cms", "-verify", "-binary", "-inform", "DER",
            "-in", str(tmp_path / "results" / "manifest.p7s"),
            "-content", str(tmp_path / "results" / "manifest.json"),
            "-CAfile", str(gap.offline.chain_path), "-out", "/dev/null",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "made request bundle 1" in (gap.online / "airgap" / "bundles.log").read_text()
    assert "took results bundle" in (gap.online / "airgap" / "bundles.log").read_text()
    assert "took request bundle 1" in (gap.offline.root / "airgap" / "bundles.log").read_text()


def test_an_empty_queue_makes_no_bundle(gap: AirGap) -> None:
    assert gap.export() == []


def test_an_export_that_fails_before_recording_leaves_the_batches_in_the_queue(
    gap: AirGap, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = submit(gap, 3, batch_size=2)

    def store_down(*args: object, **kwargs: object) -> None:
        raise Retryable("results store unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(AirgapRecords, "record_export", store_down)
        with pytest.raises(Retryable):
            gap.export()
    assert not (gap.directory / "online" / "requests.tar").exists()  # no file before a record
    queued = sum(gap.online_store.client.llen(queue) for queue in gap.relay.queues)
    assert queued == 4  # handed back, as a worker's are
    [bundle] = gap.export()
    report = gap.sign(bundle)
    assert report.issued == 6
    gap.import_(gap.carry_back(report.results[0]))
    collect(gap, sent)


def test_another_bundle_under_a_number_answered_before_is_refused(gap: AirGap) -> None:
    submit(gap, 1)
    [bundle] = gap.export()
    gap.sign(bundle)
    other_store = ResultsStore.from_url(gap.redis_url, gap.online_store.prefix + "other")
    try:
        other = dataclasses.replace(gap.relay, store=other_store)
        submit(gap, 1)
        [second] = export_bundles(other, gap.directory / "offline" / "other.tar")
        with pytest.raises(BundleRefused) as refused:
            gap.sign(second)
        assert refused.value.code == "bundle.conflict"
    finally:
        for key in other_store.client.scan_iter(match=f"{other_store.prefix}*"):
            other_store.client.delete(key)
        other_store.close()


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["manifest.json", "batches/000001.json", "manifest.mac"])
def test_an_altered_request_bundle_is_refused_whole_naming_the_part(gap: AirGap, part: str) -> None:
    submit(gap, 3)
    [bundle] = gap.export()
    rewrite_member(bundle, part)
    with pytest.raises(BundleRefused) as refused:
        gap.sign(bundle)
    assert refused.value.part == part
    assert part in str(refused.value)
    assert gap.offline_store.count_serials() == 0  # nothing was reserved, let alone signed


def test_a_request_bundle_with_an_extra_part_is_refused(gap: AirGap) -> None:
    submit(gap, 2)
    [bundle] = gap.export()
    with tarfile.open(bundle, "a") as tar:
        info = tarfile.TarInfo("batches/999999.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(BundleRefused, match=r"batches/999999\.json"):
        gap.sign(bundle)


@pytest.mark.parametrize(
    "part", ["manifest.json", "answers/000001.json", "certificate", "manifest.p7s", "crl.pem"]
)
def test_an_altered_results_bundle_is_refused_whole_naming_the_part(gap: AirGap, part: str) -> None:
    submit(gap, 3)
    [bundle] = gap.export()
    [results] = gap.sign(bundle).results
    carried = gap.carry_back(results)
    if part == "certificate":
        part = next(name for name in members(carried) if name.startswith("certs/"))
    rewrite_member(carried, part)
    with pytest.raises(BundleRefused) as refused:
        gap.import_(carried)
    assert refused.value.part == part
    assert gap.online_store.count_issued() == 0
    assert AirgapRecords(gap.online_store).count_unanswered() == 2  # still waiting, answerable


def test_a_results_bundle_signed_by_another_key_is_refused(gap: AirGap, tmp_path: Path) -> None:
    submit(gap, 1)
    [bundle] = gap.export()
    [results] = gap.sign(bundle).results
    forged = gap.carry_back(results)
    other = shutil.copy(forged, tmp_path / "forged.tar")
    impostor = load_authority(make_alice_ca(tmp_path / "impostor").root)
    with tarfile.open(other) as tar:
        manifest = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    rewrite_member(
        Path(other), "manifest.p7s", sign_detached(manifest, impostor.intermediate, impostor.key)
    )
    with pytest.raises(BundleRefused, match=r"manifest\.p7s"):
        gap.import_(Path(other))


def test_the_same_bundle_signed_twice_gives_the_same_certificates(gap: AirGap) -> None:
    submit(gap, 5, batch_size=2)
    [bundle] = gap.export()
    first = gap.sign(bundle, "first.tar")
    second = gap.sign(bundle, "second.tar")
    assert second.answered_before and not first.answered_before
    assert certificates_in(first.results[0]) == certificates_in(second.results[0])
    assert len(certificates_in(first.results[0])) == 10
    assert gap.offline_store.count_issued() == 10


def test_results_imported_twice_change_nothing(gap: AirGap) -> None:
    sent = submit(gap, 4)
    _, results = round_trip(gap)
    collect(gap, sent)

    def snapshot() -> dict[str, object]:
        client = gap.online_store.client
        keys = sorted(client.scan_iter(match=f"{gap.online_store.prefix}*"))
        return {key: client.dump(key) for key in keys}

    before = snapshot()
    again = gap.import_(gap.carry_back(results))
    assert again.already
    assert snapshot() == before


def test_an_import_stopped_halfway_and_made_again_publishes_each_batch_once(
    gap: AirGap, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = submit(gap, 4, batch_size=2)
    [bundle] = gap.export()
    carried = gap.carry_back(gap.sign(bundle).results[0])
    publish = ResultsStore.publish
    calls = []

    def publish_then_crash(store: ResultsStore, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Crash
        publish(store, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(ResultsStore, "publish", publish_then_crash)
        with pytest.raises(Crash):
            gap.import_(carried)
    assert gap.online_store.count_issued() == 2
    assert AirgapRecords(gap.online_store).count_unanswered() == 3
    again = gap.import_(carried)
    assert (again.skipped, again.batches, again.issued) == (1, 3, 6)
    collect(gap, sent)
    issued_lines = [
        entry for entry in gap.online_store.audit_entries() if '"event":"issued"' in entry
    ]
    assert len(issued_lines) == 8


def test_a_bundle_lost_in_transit_is_made_again_from_what_is_unanswered(gap: AirGap) -> None:
    from producers.airgap_relay import export_again, unanswered_bundles

    sent_first = submit(gap, 3)
    [lost] = gap.export("first.tar")
    original = lost.read_bytes()
    lost.unlink()  # never reaches the offline signer
    sent_second = submit(gap, 2)
    [second] = gap.export("second.tar")
    assert unanswered_bundles(gap.relay) == [1, 2]
    report = gap.sign(second, "results-2.tar")
    assert report.gap == [1]  # the signer says a bundle went missing
    gap.import_(gap.carry_back(report.results[0]))
    collect(gap, sent_second)
    assert unanswered_bundles(gap.relay) == [1]

    again = export_again(gap.relay, 1, gap.directory / "online" / "again.tar")
    assert again.read_bytes() == original  # the same bundle, byte for byte
    carried = gap.directory / "offline" / "again.tar"
    shutil.copy(again, carried)
    report = gap.sign(carried, "results-1.tar")
    assert report.issued == 6
    gap.import_(gap.carry_back(report.results[0]))
    collect(gap, sent_first)
    assert unanswered_bundles(gap.relay) == []


class Crash(BaseException):
    """The offline machine losing power: nothing in the signer catches it."""


def test_an_offline_crash_between_reserve_and_publish_is_recovered_by_the_next_sign(
    gap: AirGap, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = submit(gap, 4)
    [bundle] = gap.export()

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(ResultsStore, "publish", crash)
        with pytest.raises(Crash):
            gap.sign(bundle)
    assert len(gap.offline_store.pending_records()) == 4  # reserved, never published
    assert gap.offline_store.count_issued() == 0

    report = gap.sign(bundle)
    assert report.recovered == 4
    assert report.issued == 8
    assert gap.offline_store.pending_records() == []
    gap.import_(gap.carry_back(report.results[0]))
    collect(gap, sent)
    assert index_lines(gap.offline_store) == index_lines(gap.online_store)


def test_envelopes_are_judged_when_the_relay_exported_them(
    gap: AirGap, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = submit(gap, 2)
    [bundle] = gap.export()
    later = time.time() + 10 * 24 * 3600  # the trip took ten days; every envelope has expired
    monkeypatch.setattr("core.auth.time.time", lambda: later)
    report = gap.sign(bundle)
    assert report.issued == 4
    monkeypatch.undo()
    gap.import_(gap.carry_back(report.results[0]))
    collect(gap, sent)


def test_a_forged_batch_is_refused_whole_and_its_producer_told(gap: AirGap) -> None:
    producer = gap.producer("alpha")
    request = producer.request(make_csr("forged.example.com"))
    producer._secret = b"not the secret producers.toml names"
    producer.submit_many([request])
    [bundle] = gap.export()
    report = gap.sign(bundle)
    assert (report.issued, report.refused) == (0, 1)
    gap.import_(gap.carry_back(report.results[0]))
    [result] = producer.results([request.job_id], timeout=10)
    assert result.code == "auth.bad_signature"
    assert gap.online_store.count_issued() == 0


def test_a_revocation_goes_out_and_comes_back_with_a_crl(gap: AirGap) -> None:
    sent = submit(gap, 1)
    round_trip(gap)
    serials = collect(gap, sent)
    serial = next(iter(serials.values()))
    producer = gap.producer("alpha")
    owned = serials[sent["alpha"][0].job_id]
    request = send_revocation(
        producer._celery,
        gap.queue,
        producer.reply_to,
        owned,
        "keyCompromise",
        identity="alpha",
        secret=producer._secret,
        ca=gap.identity,
        envelope_seconds=3600,
    )
    [bundle] = gap.export("revoke.tar")
    report = gap.sign(bundle, "revoked.tar")
    gap.import_(gap.carry_back(report.results[0]))
    result = RevocationStore(gap.online_store).wait_result(producer.reply_to, request.request_id, 5)
    assert result.ok, result.message
    offline_line = gap.offline_store.index_entry(owned)
    assert offline_line is not None
    assert gap.online_store.index_entry(owned) == offline_line
    crl = RevocationStore(gap.online_store).latest_crl()
    assert crl is not None
    assert crl.get_revoked_certificate_by_serial_number(int(owned, 16)) is not None
    assert serial in serials.values()


def test_bundles_split_at_the_configured_size(gap: AirGap) -> None:
    sent = submit(gap, 20, batch_size=5)
    gap.max_bundle_bytes = 20_000
    bundles = gap.export()
    assert len(bundles) > 1
    for bundle in bundles:
        assert bundle.stat().st_size <= 20_000 + 8_192  # one batch over the limit goes alone
        for results in gap.sign(bundle, f"results-{bundle.stem}.tar").results:
            gap.import_(gap.carry_back(results))
    collect(gap, sent)


# -- the commands ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_casign_airgap_commands_carry_jobs_both_ways(gap: AirGap, tmp_path: Path) -> None:
    sent = submit(gap, 3)
    online_env = {
        "CASIGN_STORE_PREFIX": gap.online_store.prefix.rstrip(":"),
        "CASIGN_QUEUE": gap.queue,
    }
    out = tmp_path / "requests.tar"
    exported = run_casign(
        "airgap", "export", "--ca", gap.online, "--broker", gap.broker_url,
        "--store", gap.redis_url, "--out", out, "--producer", "alpha", "--producer", "beta",
        env=online_env,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "request bundle written" in exported.stdout
    (gap.offline.root / "airgap").mkdir(exist_ok=True)
    shutil.copy(gap.online / "airgap" / "relay.key", gap.offline.root / "airgap" / "relay.key")
    # The offline signer's embedded Redis is the test's own; the command opens the same socket.
    signed = run_casign(
        "airgap", "sign", out, "--ca", gap.offline.root, "--out", tmp_path / "results.tar",
        env={"CASIGN_QUEUE": gap.queue},
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    assert "6 issued" in signed.stdout
    imported = run_casign(
        "airgap", "import", tmp_path / "results.tar", "--ca", gap.online,
        "--store", gap.redis_url, env=online_env,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert "6 issued" in imported.stdout
    again = run_casign(
        "airgap", "import", tmp_path / "results.tar", "--ca", gap.online,
        "--store", gap.redis_url, env=online_env,
    )  # fmt: skip
    assert "nothing changed" in again.stdout
    collect(gap, sent)
    rewrite_member(tmp_path / "results.tar", "index.txt")
    refused = run_casign(
        "airgap", "import", tmp_path / "results.tar", "--ca", gap.online,
        "--store", gap.redis_url, env=online_env,
    )  # fmt: skip
    assert refused.returncode == 3
    assert "bundle.part_altered" in refused.stderr and "index.txt" in refused.stderr


# -- the CA's signature with a token key -------------------------------------------------------


@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.P256])
def test_a_token_key_signs_the_results_manifest_as_openssl_checks_it(
    softhsm_token: SoftHsmToken, tmp_path: Path, key_type: KeyType
) -> None:
    folder = make_alice_ca(
        tmp_path / "hsm-ca",
        key_type=key_type,
        intermediate_key_uri=softhsm_token.key_uri("intermediate"),
    )
    authority = load_authority(folder.root)
    manifest = b'{"format": "casign-airgap-results/1"}\n'
    signature = sign_detached(manifest, authority.intermediate, authority.key)
    verify_detached(manifest, signature, authority.intermediate)
    (tmp_path / "manifest.json").write_bytes(manifest)
    (tmp_path / "manifest.p7s").write_bytes(signature)
    checked = openssl(
        "cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "manifest.p7s",
        "-content", tmp_path / "manifest.json", "-CAfile", folder.chain_path, "-out", "/dev/null",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    with pytest.raises(CMSError) as altered:
        verify_detached(manifest + b" ", signature, authority.intermediate)
    assert altered.value.content_altered

"""Certificates a second through `casign airgap sign` against the queue worker's own path.

    python -m bench.airgap_rate --count 2000 [--rounds 2]

One CA (RSA-2048 key file), one embedded Redis as broker and stores (a prefix per side). Two
producers seal batches of 250 onto the queue; the relay exports them to one request bundle.
Then, round by round and interleaved, the same sealed batches are signed:

- queue worker path: what the `casign.sign_batch` task does with each message, in this process
  (`SignBatch.model_validate`, `BatchSigner.sign_batch`) into a store of its own;
- air-gap path: `worker.airgap.sign_bundle` on the bundle (digests, relay MAC, the same
  BatchSigner steps into the offline store, answers kept, results bundle with CRL written and
  CMS-signed), into another store.

Prints both rates, their ratio, and the bundle sizes per 1,000 certificates.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import tarfile
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from bench.workload import make_workload
from core.auth import ca_identity
from core.keys import KeyType
from core.messages import SignBatch
from producers.airgap_relay import Relay, export_bundles
from producers.producer import Producer
from store.embedded import EmbeddedRedis
from store.results import ResultsStore
from worker.access import AccessPolicy
from worker.airgap import sign_bundle
from worker.authority import load_authority
from worker.cafolder import CAFolder, CAOptions, init_ca
from worker.issuance import BatchSigner

PRODUCERS = ("alpha", "beta")
BATCH = 250


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="casign-airgap-bench-") as raw:
        run(Path(raw), args.count, args.rounds)


def make_bench_ca(directory: Path) -> CAFolder:
    """An RSA-2048 CA with two producers listed, their secrets beside it."""
    folder = init_ca(
        directory / "ca",
        CAOptions(
            root_cn="casign bench airgap Root CA",
            intermediate_cn="casign bench airgap Intermediate CA",
            key_type=KeyType.RSA2048,
            base_url="http://pki.bench.example.com",
        ),
    )
    secret_dir = directory / "secrets"
    secret_dir.mkdir()
    tables = []
    for name in PRODUCERS:
        (secret_dir / name).write_text(secrets.token_hex(32) + "\n")
        (secret_dir / name).chmod(0o400)
        tables.append(
            f'[producers.{name}]\nsecret = "file:{secret_dir / name}"\n'
            'profiles = ["server_cert"]\nairgap_envelope_seconds = 86400\n'
        )
    folder.producers_path.write_text("\n".join(tables))
    return folder


def run(directory: Path, count: int, rounds: int) -> None:
    folder = make_bench_ca(directory)
    secret_dir = directory / "secrets"
    authority = load_authority(folder.root)
    identity = ca_identity(authority.intermediate)
    queue = "casign.bench-airgap"
    workload = make_workload(count)
    embedded = EmbeddedRedis(folder.root)
    with embedded.running():
        online = ResultsStore.from_url(embedded.url, "online")
        for number, name in enumerate(PRODUCERS):
            with Producer(
                embedded.broker_url,
                embedded.url,
                store_prefix="online",
                queue=queue,
                identity=name,
                secret_source=f"file:{secret_dir / name}",
                ca_identity=identity,
                envelope_seconds=600,
            ) as producer:
                share = range(number, len(workload), len(PRODUCERS))
                producer.submit_many(
                    (
                        producer.request(
                            workload.csr_pems[index],
                            san=[f"DNS:{workload.common_names[index]}"],
                        )
                        for index in share
                    ),
                    batch_size=BATCH,
                )
        relay = Relay(
            embedded.broker_url,
            queue,
            online,
            identity,
            directory / "online-airgap",
            producers=PRODUCERS,
        )
        started = time.perf_counter()
        [bundle] = export_bundles(relay, directory / "requests.tar")
        export_seconds = time.perf_counter() - started
        airgap_dir = folder.root / "airgap"
        airgap_dir.mkdir(exist_ok=True)
        shutil.copy(relay.relay_key_path, airgap_dir / "relay.key")
        with tarfile.open(bundle) as tar:
            messages = [
                json.loads(tar.extractfile(info).read())["message"]  # type: ignore[union-attr]
                for info in tar
                if info.name.startswith("batches/")
            ]
        access = AccessPolicy.load(folder.producers_path, identity, queue)
        assert access is not None
        queue_rates, airgap_rates, results_size = [], [], 0
        queue_cpu, airgap_cpu = [], []
        for round_number in range(rounds):
            # The queue worker's path, message by message, into a store of its own.
            store = ResultsStore.from_url(embedded.url, f"queue-{uuid.uuid4().hex[:8]}")
            signer = BatchSigner(authority, store, access)
            started, cpu = time.perf_counter(), time.process_time()
            issued = 0
            for message in messages:
                parsed = SignBatch.model_validate(message)
                results = signer.sign_batch(parsed.jobs, parsed.reply_to, parsed.envelope)
                issued += sum(result.ok for result in results)
            queue_rates.append(issued / (time.perf_counter() - started))
            queue_cpu.append(issued / (time.process_time() - cpu))
            assert issued == count, f"queue path issued {issued} of {count}"
            # The air-gap path, the whole bundle, into the offline store of this round.
            offline = ResultsStore.from_url(embedded.url, f"offline-{uuid.uuid4().hex[:8]}")
            offline_signer = BatchSigner(authority, offline, access.for_airgap())
            out = directory / f"results-{round_number}.tar"
            started, cpu = time.perf_counter(), time.process_time()
            report = sign_bundle(offline_signer, bundle, out, airgap_dir)
            airgap_rates.append(report.issued / (time.perf_counter() - started))
            airgap_cpu.append(report.issued / (time.process_time() - cpu))
            assert report.issued == count, f"air-gap path issued {report.issued} of {count}"
            results_size = sum(path.stat().st_size for path in report.results)
    per_thousand = 1000 / count
    queue_median, airgap_median = (
        sorted(queue_rates)[rounds // 2],
        sorted(airgap_rates)[rounds // 2],
    )
    print(
        textwrap.dedent(
            f"""\
            jobs: {count} (batches of {BATCH}, 2 producers), rounds: {rounds}
            queue worker path (sign_batch per message, in process): {_rates(queue_rates)}
            airgap sign (bundle in, results bundle out):            {_rates(airgap_rates)}
            ratio airgap / queue (medians, wall): {airgap_median / queue_median:.2f}
            CPU-bound (jobs / CPU s of this process): queue {_rates(queue_cpu)}; airgap {_rates(airgap_cpu)}
            ratio airgap / queue (medians, CPU-bound): {_median(airgap_cpu) / _median(queue_cpu):.2f}
            export: {count / export_seconds:,.0f} jobs/s
            request bundle: {bundle.stat().st_size * per_thousand / 2**20:.2f} MiB per 1,000 jobs
            results bundle: {results_size * per_thousand / 2**20:.2f} MiB per 1,000 certificates"""
        )
    )


def _median(rates: list[float]) -> float:
    return sorted(rates)[len(rates) // 2]


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{rate:,.0f}/s" for rate in rates)


if __name__ == "__main__":
    main()

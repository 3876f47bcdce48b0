"""An online relay and an offline signer that share nothing but files, for the air-gap tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from core.auth import ca_identity
from producers.airgap_relay import ImportReport, Relay, export_bundles, import_results
from producers.producer import Producer
from store.embedded import EmbeddedRedis
from store.results import ResultsStore
from tests.cas import make_alice_ca
from worker.access import AccessPolicy
from worker.airgap import SignReport, sign_bundle
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner

PRODUCERS = ("alpha", "beta")
OFFLINE_PREFIX = "casign"


def write_secret(path: Path, value: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def make_offline_ca(directory: Path) -> CAFolder:
    """The offline machine's CA folder: key, certificates, producers.toml for two producers."""
    folder = make_alice_ca(directory / "offline" / "ca")
    secret_dir = directory / "secrets"
    secret_dir.mkdir()
    tables = []
    for name in PRODUCERS:
        write_secret(secret_dir / name, secrets.token_hex(32))
        tables.append(
            f"""\
            [producers.{name}]
            secret = "file:{secret_dir / name}"
            profiles = ["server_cert"]
            airgap_envelope_seconds = 86400
            """
        )
    folder.producers_path.write_text(
        "\n".join(textwrap.dedent(table) for table in tables), encoding="utf-8"
    )
    return folder


def make_online_ca(offline: CAFolder, directory: Path) -> Path:
    """The online relay's copy of the CA folder: certificates only, no private key."""
    online = directory / "online" / "ca"
    shutil.copytree(offline.root / "intermediate" / "certs", online / "intermediate" / "certs")
    shutil.copytree(offline.root / "certs", online / "certs")
    return online


@dataclass
class AirGap:
    """Both sides: the online store (a prefix on the test Redis) and the offline embedded one."""

    directory: Path
    offline: CAFolder
    online: Path
    broker_url: str
    redis_url: str
    online_store: ResultsStore
    offline_store: ResultsStore
    queue: str
    producers: dict[str, Producer] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return ca_identity(self.offline.intermediate_certificate())

    @property
    def relay(self) -> Relay:
        return Relay(
            self.broker_url,
            self.queue,
            self.online_store,
            self.identity,
            self.online / "airgap",
            max_bundle_bytes=self.max_bundle_bytes,
            chain_pem=(self.online / "intermediate" / "certs" / "ca-chain.cert.pem").read_text(),
            producers=PRODUCERS,
        )

    max_bundle_bytes: int = 64 * 2**20

    def producer(self, name: str) -> Producer:
        if name not in self.producers:
            self.producers[name] = Producer(
                self.broker_url,
                self.redis_url,
                store_prefix=self.online_store.prefix.rstrip(":"),
                queue=self.queue,
                identity=name,
                secret_source=f"file:{self.directory / 'secrets' / name}",
                ca_identity=self.identity,
                envelope_seconds=3600,
                trust_anchor=self.offline.root_cert_path,
            )
        return self.producers[name]

    def export(self, name: str = "requests.tar") -> list[Path]:
        """Export, then carry the relay key (first trip) and the bundles to the offline side."""
        written = export_bundles(self.relay, self.directory / "online" / name)
        key = self.offline.root / "airgap" / "relay.key"
        if not key.exists():
            key.parent.mkdir(exist_ok=True)
            shutil.copy(self.online / "airgap" / "relay.key", key)
        carried = []
        for path in written:
            target = self.directory / "offline" / path.name
            shutil.copy(path, target)
            carried.append(target)
        return carried

    def signer(self) -> BatchSigner:
        authority = load_authority(self.offline.root)
        access = AccessPolicy.load(self.offline.producers_path, self.identity, self.queue)
        assert access is not None
        return BatchSigner(authority, self.offline_store, access.for_airgap())

    def sign(self, bundle: Path, name: str = "results.tar") -> SignReport:
        return sign_bundle(
            self.signer(),
            bundle,
            self.directory / "offline" / name,
            self.offline.root / "airgap",
            self.max_bundle_bytes,
        )

    def carry_back(self, path: Path) -> Path:
        target = self.directory / "online" / path.name
        shutil.copy(path, target)
        return target

    def import_(self, path: Path) -> ImportReport:
        intermediate = x509.load_pem_x509_certificate(
            (self.online / "intermediate" / "certs" / "intermediate.cert.pem").read_bytes()
        )
        return import_results(self.relay, path, intermediate)

    def close(self) -> None:
        for producer in self.producers.values():
            producer.close()


@contextlib.contextmanager
def air_gap(directory: Path, broker_url: str, redis_url: str) -> Iterator[AirGap]:
    """Both sides, the online store's keys removed afterwards and the offline Redis stopped."""
    offline = make_offline_ca(directory)
    online = make_online_ca(offline, directory)
    prefix = f"casign-test:{uuid.uuid4().hex[:12]}"
    online_store = ResultsStore.from_url(redis_url, prefix)
    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    embedded = EmbeddedRedis(offline.root)
    with embedded.running():
        offline_store = ResultsStore.from_url(embedded.url, OFFLINE_PREFIX)
        gap = AirGap(
            directory, offline, online, broker_url, redis_url, online_store, offline_store, queue
        )
        try:
            yield gap
        finally:
            gap.close()
            offline_store.close()
            keys = list(online_store.client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                online_store.client.delete(*keys[start : start + 1000])
            online_store.client.delete(queue)
            online_store.close()


def openssl_verify_all(pems: list[str], root: Path, intermediate: Path, directory: Path) -> None:
    """`openssl verify` every certificate against the root, the intermediate untrusted."""
    directory.mkdir(exist_ok=True)
    paths = []
    for number, pem in enumerate(pems):
        path = directory / f"{number}.pem"
        path.write_text(pem, encoding="ascii")
        paths.append(str(path))
    for start in range(0, len(paths), 250):
        chunk = paths[start : start + 250]
        done = subprocess.run(
            ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(intermediate), *chunk],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count(": OK") == len(chunk), done.stdout

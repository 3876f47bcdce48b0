"""What keeping `index.txt` in step costs (worker/folder_sync.py), against signing the same batch.

    python -m bench.folder_sync_cost [SIZE ...]     # default 1000 10000 100000

For each index size: the first sync of a store of that many entries, a look that finds nothing
new, a sync after a batch of 250 issued (beside the time to sign those 250 in process, in the
same run, for the ratio), and a sync after one revocation. Uses the Redis at
CASIGN_TEST_REDIS_URL (127.0.0.1:6379) under a key prefix of its own, removed afterwards.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.folder_sync import sync_folder
from worker.issuance import BatchSigner

BATCH = 250
_LINE = "V\t271231000000Z\t\t{serial}\tunknown\t/C=GB/O=Alice Ltd/CN=host{index}.example.com"


def preload(store: ResultsStore, first: int, count: int) -> None:
    """Entries `first` .. `first + count - 1` in the index, as published ones are stored."""
    pipe = store.client.pipeline(transaction=False)
    for start in range(first, first + count, 5000):
        indices = range(start, min(start + 5000, first + count))
        serials = [f"7F{index:038X}" for index in indices]
        lines = {s: _LINE.format(serial=s, index=i) for s, i in zip(serials, indices, strict=True)}
        pipe.hset(store.key("index"), mapping=lines)
        pipe.rpush(store.key("index:order"), *serials)
        if len(pipe) >= 40:
            pipe.execute()
    pipe.execute()


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(folder: CAFolder, store: ResultsStore, sizes: list[int]) -> None:
    signer = BatchSigner(load_authority(folder.root), store)
    csrs = [make_csr(f"h{n}.example.com") for n in range(BATCH)]
    done = 0
    for size in sizes:
        preload(store, done, size - done)
        done = size
        first = timed(lambda: sync_folder(folder, store))
        nothing = [timed(lambda: sync_folder(folder, store)) for _ in range(10)]
        issued, signing, revoked = [], [], []
        for _ in range(3):
            started = time.perf_counter()
            results = signer.sign_batch([job(uuid.uuid4().hex, csr) for csr in csrs])
            signing.append(time.perf_counter() - started)
            issued.append(timed(lambda: sync_folder(folder, store)))
            RevocationStore(store).revoke(str(results[0].serial), "superseded")
            revoked.append(timed(lambda: sync_folder(folder, store)))
        ms = statistics.median
        print(
            f"index {size:>9,}: first sync {first * 1000:7.0f} ms | nothing new "
            f"{ms(nothing) * 1000:5.1f} ms | +{BATCH} issued {ms(issued) * 1000:6.0f} ms "
            f"(signing them: {ms(signing) * 1000:6.0f} ms, ratio {ms(issued) / ms(signing):.2f}) "
            f"| +1 revoked {ms(revoked) * 1000:6.0f} ms | "
            f"index.txt {folder.index_path.stat().st_size / 1e6:.1f} MB",
            flush=True,
        )


def main(arguments: list[str]) -> None:
    sizes = [int(size) for size in arguments] or [1000, 10_000, 100_000]
    url = os.environ.get("CASIGN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    store = ResultsStore.from_url(url, f"casign-bench-sync:{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory() as directory:
        try:
            measure(make_alice_ca(Path(directory) / "ca"), store, sizes)
        finally:
            for key in store.client.scan_iter(match=f"{store.prefix}*"):
                store.client.unlink(key)


if __name__ == "__main__":
    main(sys.argv[1:])

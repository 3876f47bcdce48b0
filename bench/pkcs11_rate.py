"""The token's own signing rate: python-pkcs11 C_Sign in a loop, in one or more processes."""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.synchronize import Barrier, Lock
from pathlib import Path

import pkcs11
from pkcs11 import Mechanism, ObjectClass
from pkcs11.types import SignMixin

from bench.rows import BenchError, Rate
from tests.softhsm_token import SoftHsmToken

# About the size of a leaf TBSCertificate, which is what the CA key signs.
TBS_BYTES = 900
START_TIMEOUT = 60.0
LOGIN_ATTEMPTS = 5


def _sign_loop(
    module_path: str,
    token_label: str,
    pin_file: str,
    key_label: str,
    seconds: float,
    login: Lock,
    barrier: Barrier,
    counts: multiprocessing.SimpleQueue[tuple[int, float, float]],
) -> None:
    """Log in, wait for the other processes, then sign for `seconds` (a spawned process)."""
    pin = Path(pin_file).read_text(encoding="utf-8").strip()
    data = os.urandom(TBS_BYTES)
    # SoftHSM keeps the token in files that C_Initialize and C_Login read; two processes doing
    # that at the same moment have failed with CKR_GENERAL_ERROR, so they take turns, and retry.
    with login:
        for attempt in range(LOGIN_ATTEMPTS):
            try:
                library = pkcs11.lib(module_path)
                session = library.get_token(token_label=token_label).open(user_pin=pin)
                break
            except pkcs11.GeneralError:
                if attempt == LOGIN_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
    with session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_label)
        if not isinstance(key, SignMixin):
            raise TypeError(f"token object {key_label!r} cannot sign")
        key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
        barrier.wait(timeout=START_TIMEOUT)
        signed = 0
        cpu_start = time.process_time()
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
            signed += 1
        counts.put((signed, time.perf_counter() - start, time.process_time() - cpu_start))


def raw_sign_rate(token: SoftHsmToken, key_label: str, processes: int, seconds: float) -> Rate:
    """Signatures a second of `processes` processes signing at once with the token's key.

    The processes inherit this process's environment, so SOFTHSM2_CONF must name the token's
    config (see `bench.authorities.softhsm_environment`).
    """
    context = multiprocessing.get_context("spawn")
    login = context.Lock()
    barrier = context.Barrier(processes)
    counts: multiprocessing.SimpleQueue[tuple[int, float, float]] = context.SimpleQueue()
    workers = [
        context.Process(
            target=_sign_loop,
            args=(
                token.module_path,
                token.token_label,
                str(token.pin_file),
                key_label,
                seconds,
                login,
                barrier,
                counts,
            ),
        )
        for _ in range(processes)
    ]
    for process in workers:
        process.start()
    try:
        for process in workers:
            process.join(timeout=START_TIMEOUT + seconds + 30)
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
                process.join()
    failed = [process.exitcode for process in workers if process.exitcode != 0]
    if failed:
        raise BenchError(f"a PKCS#11 signing process failed (exit codes {failed})")
    results = [counts.get() for _ in workers]
    signed = sum(count for count, _, _ in results)
    elapsed = max(seconds_taken for _, seconds_taken, _ in results)
    cpu_seconds = sum(cpu for _, _, cpu in results)
    noun = "process" if processes == 1 else "processes"
    return Rate(
        signed,
        elapsed,
        f"python-pkcs11 sign, SHA256_RSA_PKCS, RSA-2048 key in SoftHSM, {processes} {noun}",
        cpu_seconds,
    )

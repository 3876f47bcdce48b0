"""The README's test command says, at its end, how many PKCS#11 tests it skipped and how to run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_skipped_pkcs11_tests_are_counted_last_with_the_command_that_runs_them() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_pkcs11_backend.py",
        ],
        cwd=ROOT,
        env={**os.environ, "CASIGN_PKCS11_MODULE": "/nonexistent/libsofthsm2.so"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("casign: ") and "PKCS#11 test(s) skipped" in last, done.stdout[-2000:]
    count = int(last.split()[1])
    assert count >= 10
    assert "apt-get install -y softhsm2 opensc && python -m pytest" in last

"""The benchmark runs end to end on a small N and writes its table (never asserts a time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.rows import Row

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 1200


@pytest.mark.slow
@pytest.mark.flaky(reruns=1)  # it runs every row, SoftHSM and cfssl included, on a shared machine
def test_bench_runs_and_writes_every_row(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "B.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--count",
            "200",
            "--latency-jobs",
            "5",
            "--preload-index",
            "5000",
            "--redis",
            redis_url,
            "--out",
            str(out),
        ],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-5000:]}"
    written = out.read_text(encoding="utf-8")
    for row in Row:
        assert row.value in done.stdout, f"row {row.value!r} missing from:\n{done.stdout}"
        assert f"| {row.value} |" in written
    assert "targets of issue 4" in done.stdout
    assert "<!-- what-bounds-it:start" in written
    assert "Redis per 1,000 certificates" in written  # the scaling rows' own-Redis figures
    assert "minimal pipeline (issue 14)" in written

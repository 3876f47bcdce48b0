"""The soak runs end to end on a small N: its samples and judgement (never asserts a time)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 600


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_soak_samples_every_500_and_judges(tmp_path: Path) -> None:
    out = tmp_path / "soak.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--count", "2000", "--sample-every", "500",
         "--out", str(out)],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-5000:]}"
    written = out.read_text(encoding="utf-8")
    for text in (done.stdout, written):
        samples = [line for line in text.splitlines() if line.startswith("| ") and "," in line]
        samples = [line for line in samples if not line.startswith("| certificates")]
        assert [line.split(" | ")[0] for line in samples] == ["| 500", "| 1,000", "| 1,500",
                                                            "| 2,000"], text  # fmt: skip
        assert "Judgement: from the first sample (500) to the last (2,000)" in text
        assert "bytes per 1,000 certificates" in text
        assert "Retention:" in text

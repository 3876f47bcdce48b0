"""What the figures were measured on: CPUs, the commit, and the versions of the tools."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cryptography
import redis

REPO = Path(__file__).resolve().parents[1]


def _first_line(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if done.returncode == 0 and text else None


def cpu_model() -> str:
    """The first `model name` of /proc/cpuinfo, or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (how busy the other tenants keep the machine)."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text(encoding="ascii").split()[:3])
    except OSError:
        return "unknown"


def git_commit() -> str:
    """The short commit, and whether tracked files differ from it (they are measured too)."""
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
    try:
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        changed = []
    return f"{commit} with uncommitted changes to {len(changed)} file(s)" if changed else commit


@dataclass(frozen=True)
class Machine:
    when: str
    cpus: int
    cpu_model: str
    commit: str
    versions: dict[str, str]

    def summary(self) -> str:
        versions = ", ".join(f"{name} {version}" for name, version in self.versions.items())
        return f"{self.cpus} x {self.cpu_model}; commit {self.commit}; {versions}"


def describe_machine(client: redis.Redis) -> Machine:
    info = client.info("server")
    versions = {
        "Python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "Redis": str(info.get("redis_version", "?")),
    }
    for name, command in (
        ("OpenSSL", ["openssl", "version"]),
        ("cfssl", ["cfssl", "version"]),
        ("SoftHSM", ["softhsm2-util", "--version"]),
    ):
        line = _first_line(command)
        if line:
            versions[name] = line.removeprefix("OpenSSL ").removeprefix("Version: ").split(" (")[0]
    return Machine(
        when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpus=os.cpu_count() or 1,
        cpu_model=cpu_model(),
        commit=git_commit(),
        versions=versions,
    )

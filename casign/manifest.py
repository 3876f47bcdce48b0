"""`casign-jobs.json`: the jobs `submit` and `request` queued for one output folder.

It is written before anything is queued, so a person (or `casign collect`, `casign status`,
the same `submit` again) can always find what was asked for: one entry per certificate name,
with its job id, CSR file, profile and the request's fingerprint. Outcomes stay in the store.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigurationError
from core.files import PUBLIC_MODE, write_file_atomically

MANIFEST_NAME = "casign-jobs.json"
FORMAT = "casign-jobs/1"


@dataclass(frozen=True)
class ManifestJob:
    """One queued request: NAME.cert.pem in the folder is its certificate."""

    name: str
    job_id: str
    csr: str
    profile: str
    fingerprint: str
    days: int | None = None
    san: tuple[str, ...] = ()
    key: str | None = None  # the key `casign request` made for it

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ManifestJob:
        return cls(
            name=str(raw["name"]),
            job_id=str(raw["job_id"]),
            csr=str(raw["csr"]),
            profile=str(raw["profile"]),
            fingerprint=str(raw["fingerprint"]),
            days=None if raw.get("days") is None else int(raw["days"]),
            san=tuple(str(value) for value in raw.get("san", ())),
            key=None if raw.get("key") is None else str(raw["key"]),
        )


@dataclass
class JobManifest:
    """The manifest of one output folder, by certificate name."""

    path: Path
    jobs: dict[str, ManifestJob] = field(default_factory=dict)

    @classmethod
    def for_folder(cls, out: Path) -> JobManifest:
        """The folder's manifest as it is on disk; empty when there is none yet."""
        path = out / MANIFEST_NAME
        if not path.exists():
            return cls(path)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> JobManifest:
        """Read a manifest; `path` may be the folder that holds one."""
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            jobs = [ManifestJob.from_json(raw) for raw in document["jobs"]]
        except OSError as exc:
            raise ConfigurationError(f"cannot read the job list {path} ({exc.strerror})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigurationError(
                f"{path} is not a job list written by casign ({exc})"
            ) from None
        return cls(path, {job.name: job for job in jobs})

    @property
    def folder(self) -> Path:
        return self.path.parent

    def put(self, job: ManifestJob) -> None:
        self.jobs[job.name] = job

    def remove(self, name: str) -> None:
        self.jobs.pop(name, None)

    def by_job_id(self) -> dict[str, ManifestJob]:
        return {job.job_id: job for job in self.jobs.values()}

    def save(self) -> None:
        """Write the manifest atomically (0644), jobs sorted by name; remove it when empty."""
        if not self.jobs:
            self.path.unlink(missing_ok=True)
            return
        document = {
            "format": FORMAT,
            "jobs": [
                {**asdict(job), "san": list(job.san)}
                for job in sorted(self.jobs.values(), key=lambda job: job.name)
            ],
        }
        write_file_atomically(self.path, json.dumps(document, indent=2) + "\n", PUBLIC_MODE)

"""How long a CA keeps its job records: `job_retention_days` in the CA folder's casign.toml.

A job record (`P:job:{id}`, store.keys) is what answers a job id sent again: kept, the same id
gets the same certificate; expired, it is a new job. Certificates, the index, the serials
drawn, who obtained each certificate and the audit log are kept for ever whatever this says;
a job still reserved (not yet published) is kept until it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from core.errors import ConfigurationError


class SettingsFolder(Protocol):
    """What this module reads of a CA folder (worker.cafolder.CAFolder, which imports this
    module to write its default into a new casign.toml)."""

    @property
    def settings_path(self) -> Path: ...

    def settings(self) -> dict[str, object]: ...


DEFAULT_JOB_RETENTION_DAYS = 30
MAX_JOB_RETENTION_DAYS = 36_500
SECONDS_PER_DAY = 86_400


def job_retention_days(folder: SettingsFolder) -> int:
    """`job_retention_days` from casign.toml: 30 unless set; 0 keeps job records for ever."""
    value = folder.settings().get("job_retention_days")
    if value is None:
        return DEFAULT_JOB_RETENTION_DAYS
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{folder.settings_path}: job_retention_days must be an integer")
    if not 0 <= value <= MAX_JOB_RETENTION_DAYS:
        raise ConfigurationError(
            f"{folder.settings_path}: job_retention_days = {value} is outside 0 (keep for ever) "
            f"to {MAX_JOB_RETENTION_DAYS}"
        )
    return value

"""EST labels (RFC 7030 3.2.2): each names a certificate profile of the CA's `profiles.toml`.

The front-end reads only what a client must be told in advance (which profiles exist, the kinds
of subjectAltName each takes, whether one is required, what its CN must be); the signer applies
the whole profile when it signs.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigurationError
from core.errors import RefusalCode as Code
from est.refusals import EstRefusal
from est.settings import ServerSettings


def profiles_path(ca_root: Path) -> Path:
    return ca_root / "intermediate" / "profiles.toml"


@dataclass(frozen=True)
class LabelProfile:
    """What csrattrs tells a client about one profile."""

    name: str
    san_types: tuple[str, ...]
    san_required: bool
    common_name: str  # "fqdn" or "any"
    digest: str


def _profile(name: str, table: dict[str, object]) -> LabelProfile:
    san_types = table.get("san_types", ["DNS", "IP", "email", "URI"])
    return LabelProfile(
        name=name,
        san_types=tuple(str(kind) for kind in san_types) if isinstance(san_types, list) else (),
        san_required=table.get("san_required") is True,
        common_name=str(table.get("common_name", "any")),
        digest=str(table.get("digest", "sha256")),
    )


class LabelCatalog:
    """The labels a server offers, the default one, and each one's profile."""

    def __init__(self, profiles: dict[str, LabelProfile], server: ServerSettings) -> None:
        offered = server.labels if server.labels is not None else sorted(profiles)
        unknown = [label for label in [*offered, server.default_label] if label not in profiles]
        if unknown:
            raise ConfigurationError(
                f"EST label(s) {', '.join(sorted(set(unknown)))} name no profile of profiles.toml"
            )
        self.default = server.default_label
        self._offered = {label: profiles[label] for label in offered}
        self._offered.setdefault(self.default, profiles[self.default])

    @classmethod
    def load(cls, ca_root: Path, server: ServerSettings) -> LabelCatalog:
        path = profiles_path(ca_root)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"{path}: cannot read the profiles ({exc})") from None
        tables = document.get("profiles", {})
        profiles = {
            name: _profile(name, table) for name, table in tables.items() if isinstance(table, dict)
        }
        return cls(profiles, server)

    @property
    def labels(self) -> list[str]:
        return sorted(self._offered)

    def profile(self, label: str | None) -> LabelProfile:
        """The profile of `label` (the default without one); `est.unknown_label` otherwise."""
        found = self._offered.get(self.default if label is None else label)
        if found is None:
            raise EstRefusal(
                Code.EST_UNKNOWN_LABEL,
                f"label {label!r} is not offered here (offered: {', '.join(self.labels)})",
            )
        return found

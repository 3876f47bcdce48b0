"""The CRL settings of a CA folder's casign.toml, checked when the CA is loaded.

`crl_days`: nextUpdate - thisUpdate of every CRL, 1 to 10 days (Baseline Requirements 4.9.7),
default 7. `crl_shards`: unset for one CRL; N (2 to 256) for a partitioned CRL in N shards, a
certificate's shard being its serial mod N (`shard_of`), fixed when its serial is drawn, and
its CRL distribution point the profile's URL with `{shard}` replaced by that number.
"""

from __future__ import annotations

from core.errors import ConfigurationError
from worker.cafolder import CAFolder
from worker.profiles import SHARD_PLACEHOLDER, Profile, ProfileSet

DEFAULT_CRL_DAYS = 7
MAX_CRL_DAYS = 10  # BR 4.9.7: nextUpdate at most ten days after thisUpdate
MAX_CRL_SHARDS = 256


def _integer_setting(folder: CAFolder, name: str) -> int | None:
    value = folder.settings().get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{folder.settings_path}: {name} must be an integer")
    return value


def crl_days(folder: CAFolder) -> int:
    """`crl_days` from casign.toml (default 7); refused above 10, the BR 4.9.7 maximum."""
    days = _integer_setting(folder, "crl_days")
    if days is None:
        return DEFAULT_CRL_DAYS
    if not 1 <= days <= MAX_CRL_DAYS:
        raise ConfigurationError(
            f"{folder.settings_path}: crl_days = {days} is outside 1 to {MAX_CRL_DAYS}: a CRL's "
            f"nextUpdate may be at most {MAX_CRL_DAYS} days after its thisUpdate (BR 4.9.7)"
        )
    return days


def crl_shards(folder: CAFolder) -> int | None:
    """`crl_shards` from casign.toml: None (one CRL) when unset, else 2 to 256."""
    shards = _integer_setting(folder, "crl_shards")
    if shards is not None and not 2 <= shards <= MAX_CRL_SHARDS:
        raise ConfigurationError(
            f"{folder.settings_path}: crl_shards = {shards} is outside 2 to {MAX_CRL_SHARDS} "
            "(leave it out for one CRL)"
        )
    return shards


def shard_of(serial: int, shards: int) -> int:
    """The shard of the certificate with `serial`: serial mod `shards` (serials are random)."""
    return serial % shards


def check_shard_urls(profiles: ProfileSet, shards: int | None, source: str) -> None:
    """With shards, every profile names a `{shard}` CRL URL; without, none does."""
    for profile in _each(profiles):
        name, urls = profile.name, profile.crl_distribution_points
        if shards is None:
            if any(SHARD_PLACEHOLDER in url for url in urls):
                raise ConfigurationError(
                    f"{source}: profile {name!r}, crl_distribution_points names {SHARD_PLACEHOLDER}"
                    " but casign.toml sets no crl_shards"
                )
        elif not urls or not all(SHARD_PLACEHOLDER in url for url in urls):
            raise ConfigurationError(
                f"{source}: profile {name!r}, crl_distribution_points must name each shard's CRL "
                f"with {SHARD_PLACEHOLDER} (e.g. http://pki.example.com/crl/intermediate-"
                f"{SHARD_PLACEHOLDER}.crl) because casign.toml sets crl_shards = {shards}"
            )


def shard_idp_urls(profiles: ProfileSet, shard: int) -> list[str]:
    """The URLs certificates of `shard` name as their CRL distribution point, sorted."""
    urls = {
        url.replace(SHARD_PLACEHOLDER, str(shard))
        for profile in _each(profiles)
        for url in profile.crl_distribution_points
    }
    return sorted(urls)


def _each(profiles: ProfileSet) -> list[Profile]:
    return [profile for name in profiles.names if (profile := profiles.get(name)) is not None]

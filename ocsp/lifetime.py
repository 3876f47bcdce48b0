"""How long an OCSP answer is valid and when it must be signed again (Baseline Requirements).

BR 4.9.10: a response's validity interval is at least eight hours and at most ten days,
counted from thisUpdate through nextUpdate inclusive (so a 4-day interval ends one second
before thisUpdate + 4 days). An interval under sixteen hours is renewed before half of it has
passed; a longer one at least eight hours before nextUpdate and no later than four days after
thisUpdate. Renewing at min(interval / 2, 4 days) meets both rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.errors import ConfigurationError

MIN_VALIDITY = timedelta(hours=8)
MAX_VALIDITY = timedelta(days=10)
DEFAULT_VALIDITY = timedelta(days=4)
LATEST_RENEWAL = timedelta(days=4)
# Renew this long before the BR's deadline, so that a store outage shorter than this delays
# no renewal past it.
RENEWAL_LEAD = timedelta(minutes=10)
_ONE_SECOND = timedelta(seconds=1)


def describe(interval: timedelta) -> str:
    """`4d`, `12h`, `1d6h30m` (whole minutes), for messages."""
    minutes = int(interval.total_seconds()) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
    ]
    return "".join(parts) or f"{interval.total_seconds():g}s"


@dataclass(frozen=True)
class ResponseLifetime:
    """The validity interval every answer gets; refused outside the BR's window."""

    validity: timedelta = DEFAULT_VALIDITY

    def __post_init__(self) -> None:
        if not MIN_VALIDITY <= self.validity <= MAX_VALIDITY:
            raise ConfigurationError(
                f"OCSP validity {describe(self.validity)} is outside the Baseline Requirements' "
                f"window of {describe(MIN_VALIDITY)} to {describe(MAX_VALIDITY)} (BR 4.9.10)"
            )

    def next_update(self, this_update: datetime, signer_not_after: datetime) -> datetime:
        """nextUpdate for an answer made at `this_update`, never after its signer expires."""
        return min(this_update + self.validity - _ONE_SECOND, signer_not_after)


def renew_at(this_update: datetime, next_update: datetime) -> datetime:
    """When an answer with this interval is signed again (BR 4.9.10), less RENEWAL_LEAD."""
    interval = next_update - this_update + _ONE_SECOND
    # The floor only matters for an interval cut short by a delegate about to expire.
    return this_update + max(min(interval / 2, LATEST_RENEWAL) - RENEWAL_LEAD, interval / 4)

"""A product's license policy with its defaults filled in.

Stored policy fields are ``None`` when the owner left them out; these are the defaults:
unlimited activations, a lifetime license, updates while the license lasts, staging sites
free, unlimited downloads, downloads while the license lasts, no perpetual fallback, no
abuse signal, offline license files as long as the caller asks (up to the API's 365 days).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from connector.models import Product

# The latest expiry Keygate computes. Dates it accepts end before year 9000 and periods are at
# most 100 years, so only repeated renewals or extensions come near it; an automatic one
# (a shop's renewal order) stops here rather than fail, the owner's explicit one is refused.
LATEST_EXPIRY = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


def add_days(start: dt.datetime, days: int) -> dt.datetime:
    """``start`` plus ``days``, never later than :data:`LATEST_EXPIRY`."""
    try:
        return min(start + dt.timedelta(days=days), LATEST_EXPIRY)
    except OverflowError:  # past year 9999
        return LATEST_EXPIRY


@dataclass(frozen=True)
class Policy:
    activation_limit: int | None  # None: unlimited
    duration_days: int | None  # None: lifetime
    update_days: int | None  # None: updates while the license lasts
    staging_free: bool
    download_limit: int | None  # None: unlimited
    download_days: int | None  # None: while the license lasts
    perpetual_fallback: bool = False  # expired licenses keep working for older releases
    abuse_threshold: int | None = None  # binding changes in 30 days; None: no abuse signal
    abuse_suspend: bool = False  # suspend (not only flag) past the threshold
    offline_days: int | None = None  # longest an offline license file lasts; None: as asked

    @classmethod
    def of(cls, product: Product) -> Policy:
        return cls(
            activation_limit=product.activation_limit,
            duration_days=product.duration_days,
            update_days=product.update_days,
            staging_free=True if product.staging_free is None else product.staging_free,
            download_limit=product.download_limit,
            download_days=product.download_days,
            perpetual_fallback=bool(product.perpetual_fallback),
            abuse_threshold=product.abuse_threshold,
            abuse_suspend=bool(product.abuse_suspend),
            offline_days=product.offline_days,
        )

    def expires_at(self, start: dt.datetime) -> dt.datetime | None:
        return None if self.duration_days is None else add_days(start, self.duration_days)

    def updates_until(self, start: dt.datetime) -> dt.datetime | None:
        if self.update_days is None:
            return self.expires_at(start)
        return add_days(start, self.update_days)

    def downloads_until(self, start: dt.datetime) -> dt.datetime | None:
        if self.download_days is None:
            return self.expires_at(start)
        return add_days(start, self.download_days)

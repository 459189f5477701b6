"""License policy arithmetic: expiries computed from a start date and a number of days."""

from __future__ import annotations

import datetime as dt

from connector.licensing.policy import LATEST_EXPIRY, Policy, add_days


def test_computed_expiries_stop_at_the_latest_one() -> None:
    """A shop's renewals can push a license towards year 9999: it stops there, no error."""
    late = dt.datetime(9990, 1, 1, tzinfo=dt.UTC)
    assert add_days(late, 36600) == LATEST_EXPIRY
    assert add_days(dt.datetime.max.replace(tzinfo=dt.UTC), 1) == LATEST_EXPIRY
    assert add_days(late, 1) == late + dt.timedelta(days=1)


def test_a_policy_never_computes_a_date_python_cannot_hold() -> None:
    """Every window of a long policy from a very late start is capped, not an OverflowError."""
    policy = Policy(
        activation_limit=None,
        duration_days=36600,
        update_days=36600,
        staging_free=True,
        download_limit=None,
        download_days=36600,
    )
    start = dt.datetime(9950, 1, 1, tzinfo=dt.UTC)
    assert policy.expires_at(start) == LATEST_EXPIRY
    assert policy.updates_until(start) == LATEST_EXPIRY
    assert policy.downloads_until(start) == LATEST_EXPIRY


def test_each_window_counts_its_own_days_from_the_start() -> None:
    """A 30-day license with 10 days of updates and 5 of downloads: each window is its own
    number of days from the start, to the second; a window left out lasts the license."""
    start = dt.datetime(2026, 11, 20, 11, 59, 30, tzinfo=dt.UTC)
    policy = Policy(
        activation_limit=1,
        duration_days=30,
        update_days=10,
        staging_free=True,
        download_limit=None,
        download_days=5,
    )
    assert policy.expires_at(start) == start + dt.timedelta(days=30)
    assert policy.updates_until(start) == start + dt.timedelta(days=10)
    assert policy.downloads_until(start) == start + dt.timedelta(days=5)
    open_windows = Policy(
        activation_limit=1,
        duration_days=30,
        update_days=None,
        staging_free=True,
        download_limit=None,
        download_days=None,
    )
    assert open_windows.updates_until(start) == start + dt.timedelta(days=30)
    assert open_windows.downloads_until(start) == start + dt.timedelta(days=30)

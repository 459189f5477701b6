"""Sign-in limits of the owner's admin (/admin/login), beside the per-address limit
Flask-Limiter's decorator keeps on the view (10 POSTs a minute).

Per account, whatever the address: 20 sign-ins an hour that do not succeed. A sign-in spends
one unit of its account's budget *before* its password is checked (one atomic increment in
the limit storage), and a right password gives the unit back. Guesses sent at the same
moment therefore cannot all be checked before any of them is counted (Flask-Limiter's
``deduct_when`` tests the count before the view and adds to it after), and an owner who
signs in often never uses the budget up.

A refusal leaves a security record (``rate_limited``, scope ``ip`` or ``account``: at most one
a minute per address and scope, :func:`connector.audit.record_security_event`), and an
existing account's lockout (its first refusal in the window) an ``admin.login_locked`` audit
entry, which the dashboard shows for an hour. Never the password, and no entry for names no
account has (guessing names must not fill the audit log).

The counters live where Flask-Limiter keeps its own (``KEYGATE_RATELIMIT_STORAGE_URI``,
under keyed hashes only), and in its in-memory fallback while that storage cannot be reached.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from flask_limiter import RequestLimit
from limits import RateLimitItem, parse
from sqlalchemy.orm import Session

from connector.audit import record_audit, record_security_event
from connector.db import db
from connector.extensions import limiter
from connector.models import AdminUser
from connector.vault.crypto import keyed_hash

log = logging.getLogger(__name__)

ACCOUNT_BUDGET = parse("20/hour")
ACCOUNT_HASH = "admin-login-account"
LOCKED = "admin.login_locked"


@dataclass(frozen=True)
class Spent:
    """One sign-in's unit of a budget: refused once the budget is spent, given back when the
    sign-in succeeds."""

    scope: str  # "account"
    key: str  # the counter in the limit storage
    budget: RateLimitItem
    count: int | None  # this window's count with this sign-in; None: not counted

    @property
    def refused(self) -> bool:
        return self.count is not None and self.count > self.budget.amount

    @property
    def locks(self) -> bool:
        """This sign-in is the budget's first refusal in its window: the lockout."""
        return self.count == self.budget.amount + 1

    def retry_after(self) -> int:
        """Seconds until the budget's window ends and it is whole again."""
        try:
            ends = limiter.limiter.storage.get_expiry(self.key)
        except Exception:  # the storage went away since: its window is an hour at most
            ends = time.time() + self.budget.get_expiry()
        return max(1, math.ceil(ends - time.time()))


def _incr(key: str, expiry: int, amount: int) -> int | None:
    """Add ``amount`` to a counter in Flask-Limiter's storage (its in-memory fallback once
    the per-address check of this request found the storage down); the count after, or
    None when limits are off or the storage failed just now (the sign-in is then not held
    back, and that is logged: never a 500)."""
    if not limiter.enabled:
        return None
    try:
        return int(limiter.limiter.storage.incr(key, expiry, amount=amount))
    except Exception:
        log.warning("rate-limit storage unreachable; a sign-in was not counted")
        return None


def _spend(scope: str, budget: RateLimitItem, identifier: str) -> Spent:
    key = budget.key_for("admin-login", scope, identifier)
    return Spent(scope, key, budget, _incr(key, budget.get_expiry(), 1))


def spend_account(username: str) -> Spent:
    """Spend a unit of the budget of the account ``username`` names (counted under a keyed
    hash of the name, whether or not such an account exists)."""
    return _spend("account", ACCOUNT_BUDGET, keyed_hash(ACCOUNT_HASH, username))


def give_back(spent: Spent) -> None:
    """Return a succeeded sign-in's unit: only sign-ins that fail use a budget up."""
    if spent.count is None:
        return
    left = _incr(spent.key, spent.budget.get_expiry(), -1)
    if left is not None and left < 0:
        # The window ended between spending and giving back: no debt into the next one.
        _incr(spent.key, spent.budget.get_expiry(), 1)


def record_refusal(session: Session, spent: Spent, user: AdminUser | None) -> None:
    """Keep the record of a sign-in a budget refused (see the module's docstring)."""
    record_security_event(session, kind="rate_limited", scope=spent.scope)
    if spent.locks and user is not None:
        record_audit(
            session,
            store_id=None,
            actor="keygate",
            action=LOCKED,
            subject=user.username,
            detail={"scope": spent.scope, "failed": spent.budget.amount},
        )


def record_address_refusal(_limit: RequestLimit) -> None:
    """Flask-Limiter's ``on_breach`` for the per-address limit: a security record (the
    error page it answers with commits the request's session, so the record is kept)."""
    record_security_event(db.session, kind="rate_limited", scope="ip")

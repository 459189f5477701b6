"""Sign-in limits of the owner's admin (/admin/login), beside the per-address limit
Flask-Limiter's decorator keeps on the view (10 POSTs a minute; an IPv6 address counts as
its /64, which its holder can rotate through: ``client_network_key``).

Per account, whatever the address: 20 sign-ins an hour that do not succeed. A sign-in spends
one unit of its account's budget *before* its password is checked (one atomic increment in
the limit storage), and a right password gives the unit back. Guesses sent at the same
moment therefore cannot all be checked before any of them is counted (Flask-Limiter's
``deduct_when`` tests the count before the view and adds to it after), and an owner who
signs in often never uses the budget up.

Per device (OWASP's defence against lockout as a denial of service): a browser that signed
in carries a signed device cookie naming the user (HttpOnly, SameSite=Lax, Secure over https,
path /admin, 180 days, renewed by each sign-in). Its sign-ins as that user spend the device's
own budget (10 an hour that do not succeed) instead of the account's, and the account's
lockout does not refuse them: 20 guesses by a stranger at the default name ``admin`` do not
lock the owner out of their own browser. A cookie that is forged, altered, expired, names
another user (or a removed one) or was given before the user's password changed is no
cookie; a stolen one gives 10 guesses an hour.

A refusal leaves a security record (``rate_limited``, scope ``ip``, ``account`` or
``device``; at most one a minute per address and scope: ``record_security_event``), and the
lockout of an existing account or device (the budget's first refusal in its window) an
``admin.login_locked`` audit entry, which the dashboard shows for an hour. Never the
password, and no entry for names no account has (guessing names must not fill the log).

The counters live where Flask-Limiter keeps its own (``KEYGATE_RATELIMIT_STORAGE_URI``,
under keyed hashes only), and in its in-memory fallback while that storage cannot be reached.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass

from flask import current_app, request
from flask_limiter import RequestLimit
from limits import RateLimitItem, parse
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from connector.audit import record_audit, record_security_event
from connector.db import db
from connector.errors import KeygateError
from connector.extensions import limiter
from connector.models import AdminUser
from connector.redact import keygate_logger
from connector.tokens import ADMIN_DEVICE, dumps_timed, loads_timed
from connector.vault.crypto import keyed_hash

log = keygate_logger(__name__)

ACCOUNT_BUDGET = parse("20/hour")
ACCOUNT_HASH = "admin-login-account"
LOCKED = "admin.login_locked"
DEVICE_BUDGET = parse("10/hour")
DEVICE_COOKIE = "keygate_device"
DEVICE_MAX_AGE = 180 * 24 * 3600
DEVICE_HASH = "admin-login-device"
DEVICE_PASSWORD_HASH = "admin-device-password"  # noqa: S105 - a keyed-hash purpose


@dataclass(frozen=True)
class Spent:
    """One sign-in's unit of a budget: refused once the budget is spent, given back when the
    sign-in succeeds."""

    scope: str  # "account" or "device"
    key: str  # the counter in the limit storage
    budget: RateLimitItem
    count: int | None  # this window's count with this sign-in; None: not counted
    device: str | None = None  # the device cookie's id, for scope "device"

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


def _spend(scope: str, budget: RateLimitItem, hashed: str, device: str | None = None) -> Spent:
    key = budget.key_for("admin-login", scope, hashed)
    return Spent(scope, key, budget, _incr(key, budget.get_expiry(), 1), device)


def spend(username: str, user: AdminUser | None) -> Spent:
    """Spend a unit of this sign-in's budget: its device's, if the browser carries a device
    cookie naming ``user`` (the account ``username`` names, if any), else the account's
    (counted under a keyed hash of the name, whether or not such an account exists)."""
    device = _device_of(user)
    if device is not None:
        return _spend("device", DEVICE_BUDGET, keyed_hash(DEVICE_HASH, device), device)
    return _spend("account", ACCOUNT_BUDGET, keyed_hash(ACCOUNT_HASH, username))


def _device_of(user: AdminUser | None) -> str | None:
    """The id of the browser's device cookie if it is authentic, unexpired and names
    ``user`` (by id and name: a removed admin's id given to a new one is not them)."""
    token = request.cookies.get(DEVICE_COOKIE)
    if user is None or not token:
        return None
    try:
        value = loads_timed(ADMIN_DEVICE, token, DEVICE_MAX_AGE)
    except KeygateError:  # forged, altered or expired
        return None
    if (
        isinstance(value, dict)
        and value.get("u") == user.id
        and value.get("n") == user.username
        and value.get("p") == _password_mark(user)
        and isinstance(value.get("d"), str)
    ):
        device: str = value["d"]
        return device
    return None


def _password_mark(user: AdminUser) -> str:
    """Which password the device signed in with (a keyed hash of its hash, cut short): a
    new password (`keygate admin password`, the password page) ends every device's way past
    the account's lockout, as it ends every session (but the session and the device of the
    browser that changed it on the password page: :func:`keep_device`)."""
    return keyed_hash(DEVICE_PASSWORD_HASH, user.password_hash)[:16]


def remember_device(response: Response, user: AdminUser, spent: Spent) -> None:
    """Give the browser ``user`` just signed in from its device cookie (the same device,
    if it had one for them: its budget stays its own), valid for another 180 days."""
    _set_device_cookie(response, user, spent.device)


def device_before_new_password(user: AdminUser) -> str | None:
    """The id of this browser's device cookie for ``user``, read before their password
    changes (the cookie names the password it was given with)."""
    return _device_of(user)


def keep_device(response: Response, user: AdminUser, device: str | None) -> None:
    """The device cookie of the browser that just changed ``user``'s password, for the new
    one: that browser stays signed in, and keeps its way past the account's lockout (its own
    device, if it had one: its budget stays its own). Every other device's ends."""
    _set_device_cookie(response, user, device)


def _set_device_cookie(response: Response, user: AdminUser, device: str | None) -> None:
    device = device or secrets.token_urlsafe(16)
    response.set_cookie(
        DEVICE_COOKIE,
        dumps_timed(
            ADMIN_DEVICE,
            {"u": user.id, "n": user.username, "p": _password_mark(user), "d": device},
        ),
        max_age=DEVICE_MAX_AGE,
        path="/admin",
        secure=bool(current_app.config["SESSION_COOKIE_SECURE"]),
        httponly=True,
        samesite="Lax",
    )


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

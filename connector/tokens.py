"""Signed tokens for private links. One salt per purpose; never reuse a salt.

Library errors become ours: a tampered or unknown token is ``LinkInvalid`` (404); an expired
one (for timed purposes) is ``LinkExpired`` (410).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import current_app
from itsdangerous import BadData, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

from connector.errors import Gone, NotFound

DOWNLOAD = "keygate.download"
PORTAL = "keygate.portal"
CONNECT_STATE = "keygate.wc-connect-state"
ADMIN_ACTION = "keygate.admin-action"
FINGERPRINT = "keygate.fingerprint"
RELEASE = "keygate.release-download"
ADMIN_DEVICE = "keygate.admin-device"


class LinkInvalid(NotFound):
    type = "link-invalid"
    title = "This link is not valid"


class LinkExpired(Gone):
    type = "link-expired"
    title = "This link has expired"


def _secret() -> str:
    secret: str = current_app.config["SECRET_KEY"]
    return secret


def dumps(purpose: str, value: Any) -> str:
    """A stable signed token (validity is decided by the row it names, not by the token)."""
    return URLSafeSerializer(_secret(), salt=purpose).dumps(value)


def loads(purpose: str, token: str) -> Any:
    try:
        return URLSafeSerializer(_secret(), salt=purpose).loads(token)
    except (BadData, UnicodeError):  # UnicodeError: half a surrogate pair, not a token
        raise LinkInvalid("This link is not valid. Check that it was copied whole.") from None


def dumps_timed(purpose: str, value: Any) -> str:
    return URLSafeTimedSerializer(_secret(), salt=purpose).dumps(value)


def loads_timed(purpose: str, token: str, max_age: int | None) -> Any:
    """The value of a timed token; ``max_age`` None: authentic, whatever its age."""
    return loads_timed_with_time(purpose, token, max_age)[0]


def loads_timed_with_time(purpose: str, token: str, max_age: int | None) -> tuple[Any, dt.datetime]:
    """The value of a timed token and when it was signed (to the second, UTC)."""
    try:
        value, signed = URLSafeTimedSerializer(_secret(), salt=purpose).loads(
            token, max_age=max_age, return_timestamp=True
        )
        return value, signed
    except SignatureExpired:
        raise LinkExpired("This link has expired.") from None
    except (BadData, UnicodeError):
        raise LinkInvalid("This link is not valid. Check that it was copied whole.") from None


def download_token(grant_id: int) -> str:
    return dumps(DOWNLOAD, {"g": grant_id})


def grant_id_from_token(token: str) -> int:
    data = loads(DOWNLOAD, token)
    if not isinstance(data, dict) or not isinstance(data.get("g"), int):
        raise LinkInvalid("This link is not valid.")
    grant_id: int = data["g"]
    return grant_id


def fingerprint_token(grant_id: int) -> str:
    """The hidden fingerprint of a buyer's watermarked copy: names its grant, signed."""
    return dumps(FINGERPRINT, {"g": grant_id})


def grant_id_from_fingerprint(token: str) -> int:
    data = loads(FINGERPRINT, token)
    if not isinstance(data, dict) or not isinstance(data.get("g"), int):
        raise LinkInvalid("This fingerprint is not valid.")
    grant_id: int = data["g"]
    return grant_id


def portal_token(order_id: int) -> str:
    """The buyer's portal link token: names the order, expires (``portal_link_days``)."""
    return dumps_timed(PORTAL, {"o": order_id})


def order_id_from_portal_token(token: str, *, expired_too: bool = False) -> int:
    """The order a portal token names.

    Args:
        expired_too: accept an authentic token however old (to mail a fresh link to the
            order's own address, never to show the order).

    Raises:
        LinkExpired: an authentic token past ``portal_link_days``, or one made before
            portal links expired (no time in it).
        LinkInvalid: anything else.
    """
    from connector import get_settings

    max_age = None if expired_too else get_settings().portal_link_days * 86400
    try:
        data = loads_timed(PORTAL, token, max_age)
    except LinkInvalid:
        data = loads(PORTAL, token)  # LinkInvalid again unless it is an untimed link
        if not expired_too:
            raise LinkExpired("This link has expired.") from None
    if not isinstance(data, dict) or not isinstance(data.get("o"), int):
        raise LinkInvalid("This link is not valid.")
    order_id: int = data["o"]
    return order_id


def download_url(grant_id: int) -> str:
    from connector import get_settings

    return f"{get_settings().base_url}/d/{download_token(grant_id)}"


def portal_url(order_id: int) -> str:
    from connector import get_settings

    return f"{get_settings().base_url}/my/{portal_token(order_id)}"

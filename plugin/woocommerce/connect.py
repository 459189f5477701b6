"""WooCommerce's app authorization (``/wc-auth/v1/authorize``): building the link, reading
the callback.

The owner opens the link in their shop admin and approves; WooCommerce makes a REST key and
POSTs ``{key_id, user_id, consumer_key, consumer_secret, key_permissions}`` as JSON to
``callback_url``, then sends the owner's browser to ``return_url``. ``user_id`` is echoed
back unchanged, so Keygate puts a signed state in it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from plugin.shop import PayloadError

AUTHORIZE_PATH = "/wc-auth/v1/authorize"
SCOPE = "read_write"
# The shapes of the REST keys WooCommerce makes (by wc-auth or by hand in its settings).
CONSUMER_KEY = re.compile(r"ck_[A-Za-z0-9]{20,64}")
CONSUMER_SECRET = re.compile(r"cs_[A-Za-z0-9]{20,64}")


def authorize_url(
    store_url: str, *, app_name: str, state: str, return_url: str, callback_url: str
) -> str:
    """The link that asks the shop owner to give Keygate a read/write REST key."""
    query = urlencode(
        {
            "app_name": app_name,
            "scope": SCOPE,
            "user_id": state,
            "return_url": return_url,
            "callback_url": callback_url,
        }
    )
    return f"{store_url.rstrip('/')}{AUTHORIZE_PATH}?{query}"


@dataclass(frozen=True)
class AuthCallback:
    """The keys WooCommerce made for Keygate. ``repr`` hides the secrets."""

    key_id: str
    state: str
    consumer_key: str = field(repr=False)
    consumer_secret: str = field(repr=False)
    key_permissions: str


def parse_callback(body: bytes) -> AuthCallback:
    """Read the callback's JSON body.

    Raises:
        PayloadError: not JSON, or a field missing or malformed (the message names the
            field, never its value).
    """
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, absurdly nested
        raise PayloadError("the callback body is not JSON") from None
    if not isinstance(data, dict):
        raise PayloadError("the callback body must be a JSON object")
    key_id = data.get("key_id")
    if (
        isinstance(key_id, bool)
        or not isinstance(key_id, int | str)
        or not (str(key_id).isascii() and str(key_id).isdigit() and len(str(key_id)) <= 20)
    ):
        raise PayloadError("key_id is missing or not a number")
    state = data.get("user_id")
    if not isinstance(state, str | int) or not str(state) or not str(state).isascii():
        raise PayloadError("user_id is missing or malformed")  # Keygate's own token, ASCII
    consumer_key = data.get("consumer_key")
    if not isinstance(consumer_key, str) or not CONSUMER_KEY.fullmatch(consumer_key):
        raise PayloadError("consumer_key is missing or malformed")
    consumer_secret = data.get("consumer_secret")
    if not isinstance(consumer_secret, str) or not CONSUMER_SECRET.fullmatch(consumer_secret):
        raise PayloadError("consumer_secret is missing or malformed")
    permissions = data.get("key_permissions")
    if not isinstance(permissions, str) or permissions not in {"read", "write", "read_write"}:
        raise PayloadError("key_permissions must be read, write or read_write")
    return AuthCallback(
        key_id=str(key_id),
        state=str(state),
        consumer_key=consumer_key,
        consumer_secret=consumer_secret,
        key_permissions=str(permissions),
    )

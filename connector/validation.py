"""Small, explicit checks for JSON bodies; each failure names the field (422).

Text is refused where a database could not store it the same way on both backends: a NUL
character (PostgreSQL's text types cannot hold one; SQLite would) or half of a surrogate
pair (``"\\ud800"`` in JSON; it has no UTF-8 form). :func:`refuse_nul_in_address` does the
same for the URL and the pages' forms, before any view runs.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import IO, Any, cast

from flask import Request, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_input_stream

from connector.errors import JSON_PREFIXES, InvalidInput, ValidationFailed

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class _WholeBodyOrTooLarge(LimitedStream):
    """A body the server ends itself (``wsgi.input_terminated``: gunicorn's chunked
    requests), read up to the request's limit. werkzeug's stream stops at the limit without
    a word when such a body goes on past it: a webhook's first megabyte was taken for its
    body (and refused for its signature), an API's JSON cut short refused as not JSON. One
    byte more is asked of the server's stream: a body past the limit is 413, as one whose
    Content-Length is over it."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        super().__init__(stream, limit, is_max=True)
        self._source = stream

    def read(self, size: int = -1) -> bytes:
        was_exhausted = self.is_exhausted
        data = super().read(size)
        if not was_exhausted and self.is_exhausted and self._source.read(1):
            raise RequestEntityTooLarge()
        return data


class KeygateRequest(Request):
    """Flask's request, whose body sent without a length is refused past the limit (413)
    instead of cut at it."""

    @cached_property
    def stream(self) -> IO[bytes]:
        limit = self.max_content_length
        # Raises 413 for a Content-Length over the limit, before anything is read.
        stream = get_input_stream(self.environ, max_content_length=limit)
        # Only from a server that ends the body itself: from another, a read past the body
        # would wait for the next request on the connection.
        if limit is not None and "wsgi.input_terminated" in self.environ:
            return cast(IO[bytes], _WholeBodyOrTooLarge(self.environ["wsgi.input"], limit))
        return stream


def refuse_nul_in_address() -> None:
    """``before_request``: 400 for a NUL character in the path, the query or a page's form.

    API and webhook bodies are JSON and checked field by field (their forms, like
    WooCommerce's creation ping, are left to their views: reading one here would consume
    the body the signature check needs).
    """
    # Read off the WSGI environ: this runs before every request, the license API's included.
    environ = request.environ
    path: str = environ.get("PATH_INFO", "")
    query: str = environ.get("QUERY_STRING", "")
    if "\x00" in path or "%00" in query or "\x00" in query:
        raise BadRequest("The address must not contain NUL characters.")
    if (
        environ.get("CONTENT_TYPE", "").startswith(FORM_TYPES)
        and not path.startswith(JSON_PREFIXES)
        and any("\x00" in value for value in request.form.values())
    ):
        raise BadRequest("The form must not contain NUL characters.")


def json_body() -> dict[str, Any]:
    """The request's JSON object, or 400 when the body is not one."""
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # absurdly nested arrays or objects
        data = None
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object (Content-Type: application/json).")
    return data


def customer_email(raw: str) -> str:
    """A customer's address as orders store it (trimmed, lower case), or 422."""
    email = raw.strip().lower()
    if "@" not in email or len(email) > 320:
        raise ValidationFailed("an email address is expected", field="email")
    return email


def known_fields(data: dict[str, Any], allowed: Iterable[str], where: str = "") -> None:
    """Refuse a field the API does not know: a misspelt ``activation_limt`` would otherwise be
    ignored, leaving the owner with a default (no seat limit) they never asked for."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ValidationFailed(f"unknown field {name}", field=name)


def optional_int(
    data: dict[str, Any], name: str, *, minimum: int = 0, maximum: int = 10**6
) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{name} must be a whole number or null", field=name)
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}", field=name)
    return value


def required_int(data: dict[str, Any], name: str, *, minimum: int, maximum: int) -> int:
    """A whole number the call cannot do without (``null`` is no value: it is missing)."""
    value = data.get(name)
    if value is None:
        raise ValidationFailed(f"{name} is required", field=name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(f"{name} must be a whole number", field=name)
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be between {minimum} and {maximum}", field=name)
    return value


# Row ids are INTEGER columns (32 bits on PostgreSQL): a larger id in a path, query or
# form must find nothing, not overflow the driver (a 500).
MAX_ROW_ID = 2**31 - 1


def row_id(text: str) -> int | None:
    """The row id ``text`` spells (see :func:`whole_number`), else None; so is one larger
    than any row can have."""
    number = whole_number(text, max_digits=10)
    return number if number is not None and number <= MAX_ROW_ID else None


def whole_number(text: str, *, max_digits: int = 18) -> int | None:
    """The number ``text`` spells in ASCII digits (at most ``max_digits``), else None.

    For query strings and forms. ``str.isdigit`` alone is not enough: it is true for "²"
    and other digits ``int`` cannot read, and ``int`` refuses more than 4300 digits.
    """
    if not (text.isascii() and text.isdigit() and len(text) <= max_digits):
        return None
    return int(text)


def optional_bool(data: dict[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise ValidationFailed(f"{name} must be true, false or null", field=name)


def required_str(data: dict[str, Any], name: str, *, max_length: int = 300) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValidationFailed(f"{name} is required and must be text", field=name)
    if len(value) > max_length:
        raise ValidationFailed(f"{name} is longer than {max_length} characters", field=name)
    return storable_text(value, name).strip()


def optional_str(data: dict[str, Any], name: str, *, max_length: int = 300) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} must be text", field=name)
    if len(value) > max_length:
        raise ValidationFailed(f"{name} is longer than {max_length} characters", field=name)
    return storable_text(value, name).strip()


def storable_text(value: str, name: str) -> str:
    """``value`` if both databases can store it as text, else 422 naming the field."""
    if "\x00" in value:
        raise ValidationFailed(f"{name} must not contain NUL characters", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(f"{name} must be valid Unicode text", field=name) from None
    return value


def is_shop_id(value: str) -> bool:
    """``value`` can be a shop's id (of an order, a product or a variation): ASCII letters
    and digits, 1 to 64 of them."""
    return 0 < len(value) <= 64 and value.isascii() and value.isalnum()


def is_control_character(char: str) -> bool:
    """C0 and C1 controls and DEL (CR, LF, tab, NUL, ...): never part of a name or a path."""
    return unicodedata.category(char) == "Cc"


def plain_text(value: str, name: str) -> str:
    """:func:`storable_text` without control characters (a file name, a path), else 422."""
    storable_text(value, name)
    if any(is_control_character(c) for c in value):
        raise ValidationFailed(f"{name} must not contain control characters", field=name)
    return value


def without_control_characters(value: str) -> str:
    """``value`` with each control character as ``_``: for names stored before they were
    checked, on their way into a header."""
    return "".join("_" if is_control_character(c) else c for c in value)

"""One error hierarchy; handlers in one place.

API and webhook paths answer ``application/problem+json`` (RFC 9457); pages for people render
``templates/errors/<status>.html``. The catch-all logs the exception and says "internal
error": it never echoes ``str(exc)``, which could carry a secret. A database that cannot be
reached (down, restarting, a dropped connection, SQLite still locked after its busy timeout)
is 503 with ``Retry-After``: the request can be sent again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from flask import Flask, Response, g, jsonify, render_template, request, url_for
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from connector.db import Disconnected
from connector.redact import keygate_logger

log = keygate_logger(__name__)

PROBLEM_BASE = "https://keygate.dev/problems/"
JSON_PREFIXES = ("/api/", "/webhooks/", "/healthz")
# Pages people open from a mail: always a page, whatever the client asks for.
PAGE_PREFIXES = ("/d/", "/my/")


class KeygateError(Exception):
    """An error with an HTTP status and a stable problem type."""

    status = 400
    type = "bad-request"
    title = "Bad request"
    # Headers the answer carries, JSON or page; ``retry_after`` (seconds) in ``extra`` or
    # here becomes Retry-After.
    headers: ClassVar[Mapping[str, str]] = {}
    retry_after: int | None = None

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class InvalidInput(KeygateError):
    status = 400
    type = "invalid-input"
    title = "The request body is not valid"


class ValidationFailed(KeygateError):
    status = 422
    type = "validation-failed"
    title = "A field is missing or malformed"


class Unauthorized(KeygateError):
    status = 401
    type = "unauthorized"
    title = "Missing or wrong credentials"
    headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": 'Bearer realm="keygate"'}


class SignatureInvalid(Unauthorized):
    type = "signature-invalid"
    title = "The webhook signature does not match"
    headers: ClassVar[
        Mapping[str, str]
    ] = {}  # a webhook proves itself by its signature, not a token


class Forbidden(KeygateError):
    status = 403
    type = "forbidden"
    title = "Not allowed"


class NotFound(KeygateError):
    status = 404
    type = "not-found"
    title = "Not found"


class Gone(KeygateError):
    status = 410
    type = "gone"
    title = "No longer available"


class Conflict(KeygateError):
    status = 409
    type = "conflict"
    title = "Conflict"


class PayloadTooLarge(KeygateError):
    status = 413
    type = "payload-too-large"
    title = "The request body is too large"


class TooManyRequests(KeygateError):
    status = 429
    type = "too-many-requests"
    title = "Too many requests"


class ServiceUnavailable(KeygateError):
    status = 503
    type = "unavailable"
    title = "Temporarily unavailable"
    retry_after = 30


NOTHING_HERE = (
    "There is nothing at this address: it may be incomplete, or what was here was removed."
)
NOT_UNDERSTOOD = (
    "Nothing was changed: what was sent was incomplete (a box to tick, a field left out)."
    " Go back, check the form and send it again."
)
DATABASE_RETRY_AFTER = 5
UNMATCHED_ROUTE = "<no matching route>"


def wait_in_words(seconds: int) -> str:
    """How long until ``Retry-After`` (seconds) has passed, as a person says it: "about a
    minute", "about 40 minutes", "about an hour", "about 3 hours". Rounded up, never down:
    the page must not invite a try that would be refused again."""
    minutes = max(1, math.ceil(seconds / 60))
    if minutes == 1:
        return "about a minute"
    if minutes == 60:
        return "about an hour"
    if minutes < 120:
        return f"about {minutes} minutes"
    hours = math.ceil(minutes / 60)
    if hours < 48:
        return f"about {hours} hours"
    return f"about {math.ceil(hours / 24)} days"


def _seconds(retry_after: str | None) -> int | None:
    """A ``Retry-After`` in seconds (Keygate and Flask-Limiter send seconds), or None."""
    try:
        return max(0, int(retry_after)) if retry_after is not None else None
    except ValueError:
        return None


def _limit_reset_in() -> int | None:
    """Seconds until the Flask-Limiter limit this request breached refills (the
    ``Retry-After`` it adds to the answer after the error handler), or None."""
    from connector.extensions import limiter

    try:
        current = limiter.current_limit
        return None if current is None else max(1, int(current.reset_at - time.time()))
    except Exception:  # its storage unreachable: the page says "later" instead
        log.warning("rate-limit storage unreachable on a 429 page", exc_info=True)
        return None


def route_for_log() -> str:
    """The request's route pattern (``/my/<token>``) for log lines, never its path.

    Paths carry secrets: license keys and emails on the admin API, bearer tokens on portal
    and download links. The pattern names the endpoint without them; a request that no
    route matched is logged as a fixed placeholder, since its path is whatever was sent.
    """
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED_ROUTE


def database_unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """What to answer for a database error that says "not now" rather than "never": out of
    reach, a dropped connection, a lock or deadlock (the driver's OperationalError family).
    None for any other error, a bug until shown otherwise."""
    unreachable = isinstance(exc, Disconnected) or (
        isinstance(exc, DBAPIError)
        and (exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError))
    )
    if not unreachable:
        return None
    cause = exc.orig if isinstance(exc, DBAPIError) else exc.__cause__
    log.warning(
        "database unavailable on %s %s (%s): answered 503",
        request.method,
        route_for_log(),
        type(cause).__name__,
    )
    return ServiceUnavailable(
        "The database could not answer this request just now. Try again in a moment.",
        retry_after=DATABASE_RETRY_AFTER,
    )


def wants_json() -> bool:
    """Problem JSON for the API and webhooks, and for a client asking for JSON anywhere but
    on the pages buyers open from a mail (a browser extension or a download manager may ask
    for JSON there; the buyer must still see a page)."""
    if request.path.startswith(PAGE_PREFIXES):
        return False
    return request.path.startswith(JSON_PREFIXES) or request.accept_mimetypes.best == (
        "application/json"
    )


def keygate_headers(exc: KeygateError) -> dict[str, str]:
    headers = dict(exc.headers)
    retry_after = exc.extra.get("retry_after", exc.retry_after)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return headers


def _http_headers(exc: HTTPException) -> dict[str, str]:
    """The headers werkzeug (or Flask-Limiter) gave the error: Allow on a 405, Retry-After on
    a 429. The body's own Content-Type is not one of them."""
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    if exc.response is not None and "Retry-After" in exc.response.headers:
        headers["Retry-After"] = exc.response.headers["Retry-After"]
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return headers


def http_problem(exc: HTTPException) -> tuple[int, str, str, str]:
    """Status, problem type, title and detail of an error werkzeug or a library raised. A
    body over the limit is ``payload-too-large`` whoever refused it (werkzeug before the
    view, or a view reading it), as Keygate's own refusals name it."""
    status = exc.code or 500
    if status == PayloadTooLarge.status:
        detail = "The request body is larger than this server accepts."
        return status, PayloadTooLarge.type, PayloadTooLarge.title, detail
    title = exc.name or "Error"
    return status, title.lower().replace(" ", "-"), title, exc.description or title


def problem(status: int, type_: str, title: str, detail: str, **extra: Any) -> tuple[Response, int]:
    body = {"type": PROBLEM_BASE + type_, "title": title, "status": status, "detail": detail}
    body.update(extra)
    response = jsonify(body)
    response.mimetype = "application/problem+json"
    return response, status


def _page(status: int, title: str, detail: str, **context: Any) -> tuple[str, int]:
    """An error page; ``back`` (a URL) and ``back_label`` in ``context`` add a link back."""
    try:
        page = render_template(f"errors/{status}.html", title=title, detail=detail, **context)
    except Exception:  # a missing template must not turn a 404 into a 500
        page = render_template(
            "errors/generic.html", status=status, title=title, detail=detail, **context
        )
    return page, status


def error_page(
    status: int,
    title: str,
    detail: str,
    *,
    back: str | None = None,
    back_label: str = "",
    shop: Any = None,
) -> tuple[str, int]:
    """An error page a view answers itself, with a link back when ``back`` is given and the
    shop to contact (a row with ``name`` and ``url``) when ``shop`` is."""
    return _page(status, title, detail, back=back, back_label=back_label, shop=shop)


def portal_page() -> str | None:
    """The buyer's order page a ``/my/<token>/...`` request came from, built from the token
    the route matched (never from the Referer): the page its forms live on, the expired
    page's included. None off the portal's routes."""
    token = (request.view_args or {}).get("token")
    if not request.path.startswith("/my/") or not isinstance(token, str):
        return None
    return url_for("portal.portal", token=token)


def portal_link_expired() -> bool:
    """Whether the ``/my/<token>/...`` request's link has expired: its page is the expired
    page, which shows none of the order's keys and links."""
    # connector.tokens raises this module's errors: imported here, not at the top.
    from connector.tokens import LinkExpired, LinkInvalid, order_id_from_portal_token

    try:
        order_id_from_portal_token(str((request.view_args or {}).get("token", "")))
    except LinkExpired:
        return True
    except LinkInvalid:
        return False
    return False


def _too_many_page(
    status: int, title: str, detail: str, retry_after: int | None, headers: dict[str, str]
) -> tuple[str, int, dict[str, str]]:
    """A 429 page: when to try again in words matching ``Retry-After``, and on the buyer's
    pages the way back to the order page (its keys and links still work), or to the
    expired page when the link has expired (a fresh link may be in the buyer's mail)."""
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    back = portal_page()
    expired = back is not None and portal_link_expired()
    context: dict[str, Any] = {
        "wait": None if retry_after is None else wait_in_words(retry_after),
        "back": back,
        "back_label": "Back to this link's page" if expired else "Back to your order page",
        "link_expired": expired,
    }
    return (*_page(status, title, detail, **context), headers)


def stale_form_page() -> tuple[str, int, dict[str, str]]:
    """A form refused by its CSRF check, said in words: on the buyer's pages, the way back
    to the order page; elsewhere, reload and try again. Admin pages answer their own
    (:func:`connector.admin.views.stale_form`)."""
    back = portal_page()
    if back is not None:
        page = _page(
            400,
            "Please try again",
            "This page was open too long or your browser did not keep its cookie. Go back"
            " to your order page and try again.",
            back=back,
            back_label="Back to your order page",
        )
        return (*page, {"X-Robots-Tag": "noindex"})
    page = _page(
        400,
        "Please try again",
        "This form was open too long or your browser did not keep its cookie. Reload the"
        " page and try again.",
    )
    return (*page, {})


def rollback_request() -> None:
    """Undo what a failed request flushed, so the commit at the boundary stores nothing."""
    session = g.get("_keygate_session")
    if session is not None:
        try:
            session.rollback()
        except DBAPIError:  # its connection is gone, and what it held with it
            session.invalidate()


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KeygateError)
    def handle_keygate_error(exc: KeygateError) -> Any:
        rollback_request()
        answer: tuple[Response | str, int]
        if wants_json():
            answer = problem(exc.status, exc.type, exc.title, exc.detail, **exc.extra)
        elif exc.status == 429:
            headers = keygate_headers(exc)
            wait = _seconds(headers.get("Retry-After"))
            return _too_many_page(exc.status, exc.title, exc.detail, wait, headers)
        else:
            answer = _page(exc.status, exc.title, exc.detail)
        return (*answer, keygate_headers(exc))

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException) -> Any:
        status, type_, title, detail = http_problem(exc)
        answer: tuple[Response | str, int]
        if wants_json():
            answer = problem(status, type_, title, detail)
        elif status == 404 and detail == WerkzeugNotFound.description:
            # Not werkzeug's "If you entered the URL manually…" to a person.
            answer = _page(404, "Not found", NOTHING_HERE)
        elif status == 400 and detail == BadRequest.description:
            # A form sent incomplete (a confirmation box not ticked by a browser that does
            # not ask for it): not werkzeug's "The browser (or proxy) sent a request…".
            answer = _page(400, "Not done", NOT_UNDERSTOOD)
        elif status == 429:  # not the limiter's "3 per 1 hour"
            headers = _http_headers(exc)
            wait = _seconds(headers.get("Retry-After"))
            if wait is None and isinstance(exc, RateLimitExceeded):
                wait = _limit_reset_in()
            return _too_many_page(
                429,
                "Too many tries",
                "This was asked for too often in a short while.",
                wait,
                headers,
            )
        else:
            answer = _page(status, title, detail)
        return (*answer, _http_headers(exc))

    @app.errorhandler(CSRFError)
    def handle_csrf_error(exc: CSRFError) -> Any:
        if wants_json():
            return handle_http_exception(exc)
        return stale_form_page()

    @app.errorhandler(DBAPIError)
    @app.errorhandler(Disconnected)
    def handle_database_error(exc: Exception) -> Any:
        unavailable = database_unavailable(exc)
        if unavailable is None:
            return handle_unexpected(exc)
        return handle_keygate_error(unavailable)

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, route_for_log())
        rollback_request()
        if wants_json():
            return problem(500, "internal-error", "Internal error", "internal error")
        return _page(500, "Internal error", "Something went wrong on our side.")

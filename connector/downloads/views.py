"""The buyer's stable link, ``GET /d/<token>``: a friendly page for people, never JSON.

``HEAD`` answers as ``GET`` would, without the body, and counts, logs and stamps nothing; so
does a browser's prefetch or prerender (a ``GET`` made ahead of a click), answered 503."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, redirect, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Row, select
from werkzeug.utils import send_file
from werkzeug.wrappers import Response as BaseResponse

from connector import get_settings
from connector.db import db
from connector.downloads.outage import record_storage_failure
from connector.downloads.privacy import register as register_privacy_hooks
from connector.downloads.service import (
    FileFacts,
    FileUnavailable,
    StorageFailed,
    give_back_download,
    peek_download,
    start_download,
    start_download_fast,
)
from connector.downloads.storage import Delivery
from connector.errors import error_page, keygate_headers, rollback_request
from connector.integrations.r2 import content_disposition, content_type
from connector.models import DownloadGrant, Store
from connector.tokens import grant_id_from_token
from connector.validation import without_control_characters

bp = Blueprint("downloads_views", __name__)
register_privacy_hooks()


def _shop_of(grant_id: int) -> Row[str, str] | None:
    """The name and URL of the shop a link belongs to, for its refusal pages to name (a
    deleted store's links are not valid)."""
    return db.session.execute(
        select(Store.name, Store.url)
        .join(DownloadGrant, DownloadGrant.store_id == Store.id)
        .where(DownloadGrant.id == grant_id, Store.deleted_at.is_(None))
    ).first()


def _page(status: int, title: str, detail: str, grant_id: int) -> Response:
    """A refusal page naming the shop to contact, linked to its site."""
    body, _ = error_page(status, title, detail, shop=_shop_of(grant_id))
    return Response(body, status=status, mimetype="text/html")


# What asks for an answer without the file (304 Not Modified, 412 Precondition Failed).
# The click is counted by then, and nothing of it may be kept (no-store): such an answer
# would cost the buyer a download and give them nothing. Range and If-Range stay.
VALIDATORS = (
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_MATCH",
    "HTTP_IF_UNMODIFIED_SINCE",
)


def _without_validators(environ: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in environ.items() if name not in VALIDATORS}


def _answerable_range(path: Path) -> bool:
    """Can the request's Range (if any) be answered with a 206 for the file at ``path``?
    Not one that cannot be parsed, in a unit other than bytes, in several parts (werkzeug
    answers only one) or past the file's end: werkzeug answers those 416, with no file."""
    if "HTTP_RANGE" not in request.environ:
        return True
    asked = request.range
    return asked is not None and asked.range_for_length(path.stat().st_size) is not None


def _unavailable(exc: FileUnavailable, grant_id: int) -> Response:
    """The 503 page (with Retry-After) of a file the storage cannot give: nothing counted."""
    rollback_request()
    unavailable = _page(exc.status, exc.title, exc.detail, grant_id)
    unavailable.headers.update(keygate_headers(exc))
    return unavailable


def _uncached(response: BaseResponse) -> BaseResponse:
    """Each click is counted: neither browsers nor proxies may keep or replay the answer,
    the file's host learns nothing of the page the link was on, and a search engine that
    finds a buyer's link (a forwarded mail, a public page) indexes neither the file nor
    the link's pages."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def _file_headers(file: FileFacts) -> Response:
    """What a served click's answer says of its file (HEAD), as the local file's answer
    (send_file) and the bucket's (the presigned URL's response-* parameters) say it."""
    filename = without_control_characters(file.filename)
    response = current_app.response_class(
        status=200,
        mimetype=content_type(filename) or file.media_type or "application/octet-stream",
    )
    response.headers["Content-Disposition"] = content_disposition(filename)
    response.accept_ranges = "bytes"
    if file.size is not None:
        response.content_length = file.size
    else:  # a copy still to stamp: no length, rather than werkzeug's 0 for an empty body
        response.automatically_set_content_length = False
    return response


def _head(grant_id: int) -> BaseResponse:
    """A HEAD (download managers and browsers before they download, link checkers): the
    status and headers a click would get, counting, logging and stamping nothing."""
    try:
        peek = peek_download(db.session, grant_id)
    except FileUnavailable as exc:
        return _uncached(_unavailable(exc, grant_id))
    if peek.file is None:
        return _uncached(_page(peek.status, peek.title, peek.detail, grant_id))
    return _uncached(_file_headers(peek.file))


# Request headers by which browsers say a request is made ahead of a possible click (a
# prefetch or prerender: a bookmark under the pointer, an address Chrome expects to be
# typed, Safari's previews), and the words in them that say so.
SPECULATIVE_HEADERS = ("Sec-Purpose", "Purpose", "X-Purpose", "X-Moz")
SPECULATIVE_WORDS = frozenset({"prefetch", "prerender", "preview"})


def _speculative() -> bool:
    """Is this request a browser's fetch ahead of a click, not the buyer's click?"""
    for name in SPECULATIVE_HEADERS:
        words = request.headers.get(name, "").lower().replace(",", ";").split(";")
        if SPECULATIVE_WORDS.intersection(word.strip() for word in words):
            return True
    return False


def _not_ahead_of_the_click() -> Response:
    """What a prefetch or prerender gets: no file and nothing counted. A non-2xx answer is
    how a browser is told not to use it: the buyer's own click is then served as usual."""
    body, _ = error_page(
        503,
        "Open this link to download",
        "Your browser asked for this file before the link was opened. Nothing was used up:"
        " the download starts when you open the link.",
        back=request.path,
        back_label="Download the file",
    )
    return Response(body, status=503, mimetype="text/html")


@bp.get("/d/<token>")
def download(token: str) -> ResponseReturnValue:
    grant_id = grant_id_from_token(token)  # 404 page when tampered with
    if request.method == "HEAD":
        return _head(grant_id)
    if _speculative():
        return _uncached(_not_ahead_of_the_click())
    ip, user_agent, ttl = (
        request.remote_addr,
        request.user_agent.string,
        get_settings().download_url_ttl,
    )
    # A Range that does not start at byte 0 continues a download (a dropped connection, a
    # download manager's parts): the full path decides whether it is free.
    # A suffix range (bytes=-N, the file's last N bytes) does not start at byte 0 either.
    resume = request.range is not None and any(start != 0 for start, _ in request.range.ranges)
    # The common click without a session; every other case (and its words) from the full path.
    try:
        answer = (
            None
            if resume
            else start_download_fast(db.engine, grant_id, ip=ip, user_agent=user_agent, ttl=ttl)
        ) or start_download(
            db.session, grant_id, ip=ip, user_agent=user_agent, ttl=ttl, resume=resume
        )
    except FileUnavailable as exc:  # answered here, to name the shop: nothing was counted
        if isinstance(exc, StorageFailed):
            # The owner is told, in a transaction of its own: the click's is rolled back.
            rollback_request()
            record_storage_failure(db.engine, exc.failure)
        return _uncached(_unavailable(exc, grant_id))
    delivery = answer.delivery
    response: BaseResponse
    if delivery is None:
        response = _page(answer.status, answer.title, answer.detail, grant_id)
    elif delivery.url is not None:
        response = redirect(delivery.url, code=302)
    else:
        assert delivery.path is not None  # noqa: S101 - a local delivery always has a path
        try:
            response = _send_local(delivery, served=answer.outcome == "served")
        except FileNotFoundError:
            # Deleted between the choice and the send (an erasure, a copy discarded or
            # stamped anew, a store deleted): the buyer gets the download back.
            if answer.outcome == "served":
                give_back_download(db.session, grant_id, ip=ip, user_agent=user_agent)
            return _uncached(_unavailable(FileUnavailable(CHANGED_AS_YOU_CLICKED), grant_id))
    return _uncached(response)


CHANGED_AS_YOU_CLICKED = "The file changed just as you clicked: try the link again in a moment."


def _send_local(delivery: Delivery, *, served: bool) -> BaseResponse:
    """Stream a file from embedded storage. Raises FileNotFoundError when it is gone."""
    assert delivery.path is not None  # noqa: S101 - a local delivery always has a path
    environ = _without_validators(request.environ)
    if served and not _answerable_range(delivery.path):
        # A download was spent on this click: it gets the whole file (HTTP lets a
        # server ignore a Range), never a 416 with nothing. A free resume keeps its 416
        # (a download manager's "you have it all").
        environ.pop("HTTP_RANGE", None)
        environ.pop("HTTP_IF_RANGE", None)
    # conditional=True answers Range requests (resumed downloads) with 206.
    response = send_file(
        delivery.path,
        environ,
        as_attachment=True,
        # Names stored before control characters were refused must not split a header.
        download_name=without_control_characters(delivery.filename),
        conditional=True,
        etag=True,
        max_age=0,
        use_x_sendfile=current_app.config["USE_X_SENDFILE"],
        response_class=current_app.response_class,
    )
    # The same header as R2's: werkzeug's ASCII fallback drops what is not ASCII ("山.pdf"
    # became ".pdf", a hidden file for a client that reads only filename=).
    response.headers["Content-Disposition"] = content_disposition(
        without_control_characters(delivery.filename)
    )
    return response

"""Newest-first lists paged by id, for the admin pages and the admin JSON API.

A page asks for one row more than it shows: that row says an older page exists, and the
last row shown gives its ``before`` (only rows with a smaller id). The pages pass it on in
their Older buttons and ignore a ``before`` that is no row id (a stale or typed address);
the API answers it in a ``Link: <...>; rel="next"`` header (RFC 8288) and refuses one (422).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from flask import Response, request, url_for

from connector.db import db
from connector.errors import ValidationFailed
from connector.validation import MAX_ROW_ID, row_id

T = TypeVar("T")


def one_page(rows: Sequence[T], size: int, id_of: Callable[[T], int]) -> tuple[list[T], int | None]:
    """The first ``size`` of ``rows`` (read ``size + 1`` of them) and the ``before`` of the
    next older page, None when they were all."""
    return list(rows[:size]), (id_of(rows[size - 1]) if len(rows) > size else None)


def newest_first(
    query: Any, id_column: Any, size: int, before: int | None
) -> tuple[list[Any], int | None]:
    """One page of the ``query``'s rows (objects with an ``id``), newest first, older than
    ``before`` when given; and the ``before`` of the next older page (None on the last)."""
    if before is not None:
        query = query.where(id_column < before)
    rows = db.session.scalars(query.order_by(id_column.desc()).limit(size + 1)).all()
    return one_page(rows, size, lambda row: row.id)


def asked_before() -> int | None:
    """The API's ``?before=``: None when not given, else the row id it names (422 if none)."""
    raw = request.args.get("before")
    if raw is None:
        return None
    before = row_id(raw)
    if before is None:
        raise ValidationFailed(
            f"before must be a row id (a whole number up to {MAX_ROW_ID}), as the Link header"
            " of the previous page gives it",
            field="before",
        )
    return before


def older_address(before: int, param: str = "before") -> str:
    """This page's address from ``before`` on in the list that ``param`` pages; the
    request's other arguments (filters, limit, another list's ``before``) are kept."""
    return with_arguments(
        url_for(request.endpoint or "", **(request.view_args or {})), drop=param, add=before
    )


def with_arguments(address: str, drop: str = "", add: int | None = None) -> str:
    """``address`` with the request's arguments as sent (a form posting to it, a page it
    leads back to keeps the filters and pages), less ``drop``, plus ``drop=add`` if given."""
    # The arguments as sent, not as url_for's keywords: one named like its own
    # (endpoint, _method, _anchor, _external) broke the link or the answer (a 500).
    args = [(name, value) for name, value in request.args.items(multi=True) if name != drop]
    if add is not None:
        args.append((drop, str(add)))
    return f"{address}?{urlencode(args)}" if args else address


def link_next(response: Response, before: int | None) -> Response:
    """Add ``Link: <this address, from before on>; rel="next"`` when an older page exists;
    the request's other arguments (filters, limit) are kept."""
    if before is not None and request.endpoint is not None:
        response.headers.add("Link", f'<{older_address(before)}>; rel="next"')
    return response

"""The owner's licenses as CSV: for a spreadsheet, an accountant, or another system
(before deleting a store, say).

Cells a spreadsheet would run as a formula (a buyer's name or address typed as ``=HYPERLINK(…)``)
are written as text: a leading ``'`` (OWASP's advice for CSV injection).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from flask import Response, stream_with_context
from sqlalchemy.orm import Session

from connector.licensing.admin import all_licenses, check_status_filter, license_row_json

COLUMNS = [
    "key",
    "product_id",
    "product",
    "status",
    "status_reason",
    "expired",
    "expires_at",
    "updates_until",
    "activation_limit",
    "activations_used",
    "flagged",
    "order_id",
    "email",
    "issued_at",
]
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def license_csv_lines(
    session: Session,
    store_id: int,
    *,
    email: str | None = None,
    status: str | None = None,
    product: str | None = None,
) -> Iterator[str]:
    """The header, then one line per license (newest first), each as CSV text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: list[str]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    yield line(COLUMNS)
    for row in all_licenses(session, store_id, email=email, status=status, product=product):
        data = license_row_json(row)
        yield line([_cell(data[name]) for name in COLUMNS])


def license_csv_response(
    session: Session, store_id: int, filename: str, **filters: str | None
) -> Response:
    """The licenses as a CSV attachment, streamed; never cached (keys and addresses)."""
    check_status_filter(filters.get("status"))
    response = Response(
        stream_with_context(license_csv_lines(session, store_id, **filters)),
        mimetype="text/csv",
    )
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response

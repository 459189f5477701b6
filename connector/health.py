"""``GET /healthz``: for a load balancer or a monitor, whether this server can do its work.

200 ``{"status": "ok", "database": "ok", "jobs": ...}`` when the database answers; 503
problem+json with ``Retry-After`` when it does not (a load balancer then sends requests to
another server).
``jobs`` is ``"ok"``, or ``"late"`` when a job has been due for more than
:data:`LATE_AFTER` without any worker taking it, or taken by one that stopped and not taken
over since (no ``keygate worker`` running, or too few):
mails and watermarked copies then wait, so a monitor should alert, but this server can still
answer and stays in rotation (200). No counts, names or versions: the address is public.
"""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import and_, or_, select, text

from connector.db import db, utcnow
from connector.models import Job

bp = Blueprint("health", __name__)

# Longer than a worker's idle poll and a job's ordinary wait behind others.
LATE_AFTER = dt.timedelta(minutes=10)
NO_STORE = {"Cache-Control": "no-store"}


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """A database out of reach raises, and is answered as everywhere: 503 problem+json with
    ``Retry-After`` (a dropped connection is first tried again, as any read is)."""
    db.session.execute(text("SELECT 1"))
    cutoff = utcnow() - LATE_AFTER
    late = db.session.scalar(
        select(Job.id)
        .where(
            or_(
                and_(Job.status == "pending", Job.run_after < cutoff),
                # Taken by a worker that stopped without finishing, and not taken over.
                and_(Job.status == "running", Job.locked_until < cutoff),
            )
        )
        .limit(1)
    )
    jobs = "ok" if late is None else "late"
    return jsonify({"status": "ok", "database": "ok", "jobs": jobs}), 200, NO_STORE

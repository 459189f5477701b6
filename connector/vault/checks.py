"""Do a store's saved credentials work? Tried against the real service, answered in words.

R2: a presigned GET of a key that cannot exist, then writing and deleting an empty object
(:meth:`connector.integrations.r2.R2Store.check_access`). Brevo: the account, and the list
when one is set (:func:`connector.integrations.brevo.check_access`). WooCommerce keys are
not checked here: saving one connects the store, and registering its webhooks in the shop
(right after) is the check; the store page shows when the shop refused it.

A check never raises for what the service answered, and never shows or logs a secret: its
reasons name the field to correct, and at most the status and error code the service gave.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from connector.downloads.storage import store_r2_config
from connector.errors import NotFound
from connector.integrations import brevo, r2
from connector.integrations.r2 import R2Store, StorageUnavailable
from connector.models import Store
from connector.redact import keygate_logger
from connector.vault.service import check_kind, credentials_for

log = keygate_logger(__name__)

CHECKED_KINDS = ("r2", "brevo")
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.]{1,64}")


@dataclass(frozen=True)
class CheckResult:
    """``ok``, or ``problem`` (a stable name for programs) and ``reason`` (for the owner)."""

    kind: str
    ok: bool
    problem: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problem": self.problem, "reason": self.reason}


def checkable(kind: str) -> bool:
    return kind in CHECKED_KINDS


def check_credentials(session: Session, store: Store, kind: str) -> CheckResult:
    """Try ``store``'s saved credentials of ``kind`` against the service they are for.

    Commits first (the caller's work, a save, stays saved whatever the check finds): the
    service is asked with nothing held, as it may take seconds to answer.

    Raises:
        NotFound: no such kind, a kind that is not checked, or none saved for the store.
    """
    kind = check_kind(kind)
    if not checkable(kind):
        raise NotFound(
            "WooCommerce keys are checked by connecting: the store page shows whether the"
            " shop took the key."
        )
    stored = credentials_for(session, store, kind)
    if stored is None:
        raise NotFound(f"No {kind} credentials are stored for this store.")
    session.commit()
    result = _check_r2(stored) if kind == "r2" else _check_brevo(stored)
    log.info(
        "store %s: %s credentials check: %s",
        store.public_id,
        kind,
        "ok" if result.ok else result.problem,
    )
    return result


def _code(code: str) -> str:
    return f" {code}" if _SAFE_CODE.fullmatch(code) else ""


def _answered(status: int, code: str) -> str:
    return f" (it answered {status}{_code(code)})" if status else ""


def _check_r2(stored: dict[str, Any]) -> CheckResult:
    config = store_r2_config(stored)
    try:
        problem = R2Store(config).check_access()
    except StorageUnavailable:  # an endpoint URL saved before endpoints were checked
        return CheckResult("r2", False, "bad_endpoint", "The endpoint_url is not usable.")
    if problem is None:
        return CheckResult("r2", True)
    unreachable = (
        "The storage did not answer at the endpoint_url: check it, or try again later."
        if config.endpoint_url
        else "R2 did not answer at the account_id's endpoint: check account_id, or try again later."
    )
    where = "the endpoint_url" if config.endpoint_url else "the account_id's endpoint"
    bucket = config.bucket
    answered = _answered(problem.status, problem.code)
    reasons = {
        r2.UNREACHABLE: unreachable,
        r2.REFUSED: "The storage refused the access key: check access_key_id and"
        f" secret_access_key (type them again; a token deleted in R2 is refused too)"
        f"{answered}.",
        r2.NO_BUCKET: f"There is no bucket named {bucket!r} there: check the bucket name,"
        " or create the bucket.",
        r2.NO_READ: f"The access key may not read objects in {bucket!r}: give its token"
        f" Object Read & Write on this bucket{answered}.",
        r2.NO_WRITE: f"The access key may read but not write objects in {bucket!r}: give its"
        f" token Object Read & Write on this bucket (Keygate stores buyers' stamped copies"
        f" there){answered}.",
        r2.NOT_S3: f"Something answered at {where}, but not as an S3 service does"
        f"{answered}: check the endpoint.",
        r2.SERVER_ERROR: f"The storage answered with an error{answered}: try again later.",
        r2.PRIVATE: "The endpoint_url is, or resolves to, a private or local network address,"
        " which this Keygate does not connect to: give the storage's public address, or"
        f" have the instance's operator set {r2.ALLOW_PRIVATE_SETTING}=true.",
        r2.METADATA: "The endpoint_url resolves to a link-local address, where clouds keep"
        " their metadata service, which Keygate never connects to: give the storage's own"
        " address.",
    }
    reason = reasons.get(problem.kind) or f"The storage refused the check{answered}."
    return CheckResult("r2", False, problem.kind, " ".join(reason.split()))


def _check_brevo(stored: dict[str, Any]) -> CheckResult:
    from connector import get_settings

    config = brevo.BrevoConfig.from_credentials(stored)
    problem = brevo.check_access(config, get_settings().brevo_api_host)
    if problem is None:
        return CheckResult("brevo", True)
    answered = _answered(problem.status, problem.code)
    reasons = {
        brevo.KEY_REFUSED: "Brevo refused the API key: check api_key (type it again), and"
        " that it is not deleted or limited to other IP addresses in Brevo"
        f" (SMTP & API → API keys){answered}.",
        brevo.UNREACHABLE: "Brevo could not be reached or is busy: try again later.",
        brevo.NO_LIST: f"Brevo has no contact list {config.list_id}: check list_id"
        " (Contacts → Lists in Brevo shows each list's id), or leave it empty.",
    }
    reason = reasons.get(problem.kind) or f"Brevo refused the check{answered}."
    return CheckResult("brevo", False, problem.kind, " ".join(reason.split()))

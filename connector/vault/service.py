"""The vault: a store's credentials, encrypted at rest, write-only over the API.

Each kind is one ``EncryptedJSON`` row. Secret fields are never answered back: reads show them
masked (last four characters at most). Other domains read what they need with
:func:`credentials_for`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.errors import NotFound, ValidationFailed
from connector.integrations.r2 import (
    ACCOUNT_ID,
    BUCKET,
    endpoint_problem,
    private_endpoint_problem,
)
from connector.models import CREDENTIAL_KINDS, Credential, Store
from connector.validation import known_fields, optional_int, optional_str
from connector.vault.crypto import Concealed, ConcealedDict, mask
from plugin.woocommerce.connect import CONSUMER_KEY, CONSUMER_SECRET


@dataclass(frozen=True)
class FieldSpec:
    required: bool
    secret: bool
    kind: type = str
    # Text fields with a known shape: checked when stored, not when every job fails.
    shape: re.Pattern[str] | None = None
    shape_name: str = ""


# One @, something before it, a dotted domain after it; no spaces, quotes or angle brackets.
EMAIL = re.compile(r"[^@\s<>\"]+@[^@\s<>\".]+(\.[^@\s<>\".]+)+")


# An API key or secret as providers issue them: printable ASCII, no spaces. Such values go
# into request headers, where a line break (a wrapped paste) made the HTTP library refuse
# the request with an error that quoted the whole key.
API_KEY = re.compile(r"[\x21-\x7e]{1,400}")
API_KEY_SHAPE = "a key as the provider gives it: printable ASCII, no spaces or line breaks"

# Text that goes into a mail header (a sender's name): a line break would start another
# header, and a bidirectional control would turn the name around in the buyer's inbox.
ONE_LINE = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")
ONE_LINE_SHAPE = "one line of text, without control or bidirectional formatting characters"

# An order meta key as shops write them (WooCommerce: `_billing_newsletter`, `marketing-ok`).
META_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")


# The fields of each kind of credentials. Secrets are write-only.
FIELDS: dict[str, dict[str, FieldSpec]] = {
    "r2": {
        "account_id": FieldSpec(
            required=True,
            secret=False,
            shape=ACCOUNT_ID,
            shape_name="letters, digits, - and _ only (R2: the 32-character account id)",
        ),
        "access_key_id": FieldSpec(
            required=True, secret=True, shape=API_KEY, shape_name=API_KEY_SHAPE
        ),
        "secret_access_key": FieldSpec(
            required=True, secret=True, shape=API_KEY, shape_name=API_KEY_SHAPE
        ),
        "bucket": FieldSpec(
            required=True,
            secret=False,
            shape=BUCKET,
            shape_name="a bucket name: 3-63 lower-case letters, digits, dots and hyphens",
        ),
        "endpoint_url": FieldSpec(required=False, secret=False),
    },
    "brevo": {
        "api_key": FieldSpec(required=True, secret=True, shape=API_KEY, shape_name=API_KEY_SHAPE),
        "sender_email": FieldSpec(
            required=True, secret=False, shape=EMAIL, shape_name="an email address"
        ),
        "sender_name": FieldSpec(
            required=True, secret=False, shape=ONE_LINE, shape_name=ONE_LINE_SHAPE
        ),
        "list_id": FieldSpec(required=False, secret=False, kind=int),
        "template_id": FieldSpec(required=False, secret=False, kind=int),
        # The order meta key of the buyer's consent: when set, only buyers whose order has it
        # ticked are pushed to list_id (connector.mail.contacts).
        "consent_meta_key": FieldSpec(
            required=False,
            secret=False,
            shape=META_KEY,
            shape_name="an order meta key (letters, digits, _ and -, up to 100)",
        ),
    },
    "woocommerce": {
        "consumer_key": FieldSpec(
            required=True, secret=True, shape=CONSUMER_KEY, shape_name="a WooCommerce key (ck_…)"
        ),
        "consumer_secret": FieldSpec(
            required=True,
            secret=True,
            shape=CONSUMER_SECRET,
            shape_name="a WooCommerce secret (cs_…)",
        ),
    },
}
assert set(FIELDS) == set(CREDENTIAL_KINDS)  # noqa: S101 - a module invariant


def check_kind(kind: str) -> str:
    if kind not in FIELDS:
        raise NotFound(f"Credential kinds are {', '.join(CREDENTIAL_KINDS)}.")
    return kind


def _row(session: Session, store: Store, kind: str) -> Credential | None:
    return session.execute(
        select(Credential).where(Credential.store_id == store.id, Credential.kind == kind)
    ).scalar_one_or_none()


def has_credentials(session: Session, store: Store, kind: str) -> bool:
    """Whether credentials of ``kind`` are stored for ``store`` (none are decrypted)."""
    return _row(session, store, check_kind(kind)) is not None


def credentials_for(session: Session, store: Store, kind: str) -> ConcealedDict | None:
    """The decrypted credentials of ``kind`` for ``store``, or None when none are stored.

    Returns a copy: changing it changes nothing stored. It is a :class:`ConcealedDict` and
    its secret fields are :class:`Concealed`, so neither the set nor a secret taken out of it
    shows in a ``repr`` (logs, tracebacks); both are plain ``dict``/``str`` to their users.
    """
    kind = check_kind(kind)
    row = _row(session, store, kind)
    if row is None:
        return None
    spec = FIELDS[kind]
    return ConcealedDict(
        {
            name: Concealed(value)
            if isinstance(value, str) and name in spec and spec[name].secret
            else value
            for name, value in row.data.items()
        }
    )


def parse_credentials(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """Check a kind's fields as sent (unknown names refused; empty text counts as left out)."""
    spec = FIELDS[kind]
    known_fields(data, spec)
    values: dict[str, Any] = {}
    for name, field_spec in spec.items():
        if field_spec.kind is int:
            values[name] = optional_int(data, name, minimum=1, maximum=10**12)
        else:
            value = optional_str(data, name, max_length=500)
            values[name] = value or None  # an empty field counts as left out
            if value and field_spec.shape is not None and not field_spec.shape.fullmatch(value):
                # The message names the shape, never the value (it may be a secret).
                raise ValidationFailed(f"{name} must be {field_spec.shape_name}", field=name)
    endpoint = values.get("endpoint_url")
    problem = endpoint_problem(endpoint) if endpoint is not None else None
    if problem is None and endpoint is not None:
        problem = private_endpoint_problem(endpoint, private_ok=_private_endpoints_allowed())
    if problem is not None:
        raise ValidationFailed(f"endpoint_url {problem}", field="endpoint_url")
    return values


def _private_endpoints_allowed() -> bool:
    from connector import get_settings

    return get_settings().allow_private_endpoints


def put_credentials(
    session: Session, store: Store, kind: str, values: dict[str, Any], *, actor: str
) -> dict[str, Any]:
    """Store a kind's credentials, replacing what was there.

    A secret field left out keeps its stored value (so the owner can change a bucket name
    without typing the secret again); any other field left out is removed.

    Args:
        values: parsed fields of ``kind`` (unknown names are refused by the caller).

    Returns:
        The stored set, decrypted.

    Raises:
        ValidationFailed: a required field is missing and none is stored.
    """
    from connector.stores import hold_live_store

    spec = FIELDS[check_kind(kind)]
    hold_live_store(session, store)
    row = _row(session, store, kind)
    previous = dict(row.data) if row is not None else {}
    merged: dict[str, Any] = {}
    for name, field_spec in spec.items():
        value = values.get(name)
        if value is None and field_spec.secret:
            value = previous.get(name)
        if value is None:
            if field_spec.required:
                raise ValidationFailed(f"{name} is required", field=name)
            continue
        merged[name] = value
    if row is None:
        row = Credential(store_id=store.id, kind=kind, data=merged)
        session.add(row)
    else:
        row.data = merged
    session.flush()
    changed = sorted(n for n in spec if merged.get(n) != previous.get(n))
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="credentials.updated",
        subject=f"credentials:{kind}",
        detail={"fields_changed": changed},  # names only, never values
    )
    return merged


def delete_credentials(session: Session, store: Store, kind: str, *, actor: str) -> bool:
    """Forget a kind's credentials. Returns False when none were stored."""
    row = _row(session, store, check_kind(kind))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="credentials.deleted",
        subject=f"credentials:{kind}",
    )
    return True


def masked(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """What may be shown of a set: secrets masked to their last four characters."""
    spec = FIELDS[check_kind(kind)]
    shown: dict[str, Any] = {}
    for name, field_spec in spec.items():
        value = values.get(name)
        shown[name] = mask(str(value)) if field_spec.secret and value is not None else value
    return shown

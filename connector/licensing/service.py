"""The license API's verbs: validate, activate, deactivate, check for updates, check out.

Every verb answers an :class:`Answer` (the views sign and serialize it); a failed check is an
answer with ``valid=False`` and a code, never an exception. Bad input (a site that is not a
host, a missing identity) raises ``ValidationFailed`` (422).

Seats are atomic: activating locks the license row (``FOR UPDATE`` on PostgreSQL; SQLite
writers are serialized by ``BEGIN IMMEDIATE``), as every binding change does, reads the
license again, counts the seats taken, and inserts under the unique key (license, site,
fingerprint), so the limit holds across processes and hosts and activating one identity
twice returns the same activation.

Codes:
    VALID: the license (and identity, when one is given) is good.
    NOT_FOUND: no such key, or a malformed one (a typo caught by the check character).
    PRODUCT_MISMATCH: the key belongs to another product.
    REVOKED / SUSPENDED: the owner (or the order's state) took the license away / paused it.
    EXPIRED: past ``expires_at`` (unless perpetual fallback covers the version asked about).
    NO_ACTIVATION: this identity is not activated (deactivate: nothing to deactivate).
    SITE_MISMATCH: the license is activated, but not on this site.
    FINGERPRINT_MISMATCH: the site is activated, but with another fingerprint.
    TOO_MANY_ACTIVATIONS: every seat is taken.
    UPDATES_EXPIRED: newer releases exist, but all were published after updates_until.
    DEACTIVATED: (deactivate) the identity was released; its seat is free again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Select, and_, bindparam, delete, func, select, update
from sqlalchemy.orm import Session, defer

from connector.audit import record_audit
from connector.db import insert_ignoring_conflicts, iso, read_one, shown_utc, utcnow
from connector.errors import ValidationFailed
from connector.licensing.keys import normalize_key
from connector.licensing.links import set_downloads_blocked
from connector.licensing.policy import Policy
from connector.licensing.sites import is_staging_site, normalize_site
from connector.licensing.versions import Version
from connector.models import (
    Activation,
    BindingChange,
    License,
    LicenseFlag,
    LineItem,
    Product,
    Release,
    Store,
)
from connector.orders.service import hash_license_key
from connector.stores import StoreDeleted, hold_live_store

ABUSE_WINDOW = dt.timedelta(days=30)
SEEN_RESOLUTION = dt.timedelta(hours=1)
MAX_FINGERPRINT = 200
# Looked up when the key is malformed, so a typo costs the same as an unknown key.
_DUMMY_KEY = "KG-22222-22222-22222-22222"


@dataclass
class Identity:
    """Where a license is used: a canonical site and/or a machine fingerprint ("" = none)."""

    site: str = ""
    fingerprint: str = ""

    @property
    def given(self) -> bool:
        return bool(self.site or self.fingerprint)


@dataclass
class Answer:
    valid: bool
    code: str
    detail: str
    license: License | None = None
    product: Product | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Seats taken, when the lookup already counted them (validate's one-query path).
    seats: int | None = None
    # The answer's ``license`` block, when made without loading ORM objects (validate_fast).
    license_view: dict[str, Any] | None = None


def make_identity(site: str | None, fingerprint: str | None) -> Identity:
    """Canonical identity from raw input; a site that is not a host is 422. An empty or
    blank site is no site, in every call: products built with earlier clients send a site
    setting never filled in that way (today's client refuses it before sending)."""
    canonical_site = normalize_site(site) if site and site.strip() else ""
    fp = (fingerprint or "").strip()
    if len(fp) > MAX_FINGERPRINT or any(ord(c) < 32 for c in fp):
        raise ValidationFailed(
            f"fingerprint must be at most {MAX_FINGERPRINT} printable characters",
            field="fingerprint",
        )
    return Identity(canonical_site, fp)


def find_license(session: Session, raw_key: str) -> tuple[License | None, Product | None, bool]:
    """The license and its product for a key as typed; the flag says "malformed key".

    A malformed key still costs one keyed hash and one lookup, like an unknown one.
    """
    canonical = normalize_key(raw_key)
    key_hash = hash_license_key(canonical or _DUMMY_KEY)
    row = session.execute(
        select(License, Product)
        .join(Product, License.product_id == Product.id)
        .where(License.key_hash == key_hash)
    ).first()
    if canonical is None or row is None:
        return None, None, canonical is None
    return row[0], row[1], False


def activations_used(session: Session, license_id: int) -> int:
    """Seats taken: activations that are not free staging sites."""
    count: int = session.execute(
        select(func.count())
        .select_from(Activation)
        .where(Activation.license_id == license_id, Activation.staging.is_(False))
    ).scalar_one()
    return count


def seats_taken_by(activations: Iterable[Activation]) -> int:
    """Seats ``activations`` (already loaded) take, counted as :func:`activations_used`
    counts them: a site free under the policy's ``staging_free`` when it was activated
    (``Activation.staging``) takes none."""
    return sum(1 for activation in activations if not activation.staging)


def _not_found(malformed: bool) -> Answer:
    if malformed:
        return Answer(False, "NOT_FOUND", "This is not a valid key: check it for a typo.")
    return Answer(False, "NOT_FOUND", "No license has this key.")


def _is_expired(lic: License, now: dt.datetime) -> bool:
    return lic.expires_at is not None and lic.expires_at <= now


def _released_before_expiry(
    session: Session, lic: License, product: Product, version: str | None, product_id: str | None
) -> bool:
    """Perpetual fallback: ``version`` is a release published before the license expired
    (equal as update-check compares versions: 1.9.0 and v1.9 are 1.9), on the product whose
    releases update-check offers the caller (``product_id``: a variation's parent, say)."""
    if version is None or lic.expires_at is None or not Policy.of(product).perpetual_fallback:
        return False
    wanted = Version.parse(version)
    releases_of = (
        product.id if product_id is None else _release_product_id(session, lic, product, product_id)
    )
    released = session.scalars(
        select(Release.version).where(
            Release.product_id == releases_of, Release.published_at <= lic.expires_at
        )
    )
    return any(Version.parse(v) == wanted for v in released)


def _product_ids(session: Session, lic: License, product: Product) -> set[str]:
    """Shop ids a product may name its key by: the configured id that matched, and the
    parent product and variation of the line item it was sold on."""
    ids = {product.shop_product_id}
    if lic.line_item_id is not None:
        line = session.get(LineItem, lic.line_item_id)
        if line is not None:
            ids.update(i for i in (line.shop_product_id, line.shop_variation_id) if i)
    return ids


def _release_product_id(session: Session, lic: License, product: Product, product_id: str) -> int:
    """Releases are published on a configured product: the one the caller names when the
    store configured it (a variation's parent, say), else the license's own."""
    if product_id == product.shop_product_id:
        return product.id
    named = session.execute(
        select(Product.id).where(
            Product.store_id == lic.store_id, Product.shop_product_id == product_id
        )
    ).scalar_one_or_none()
    return named if named is not None else product.id


def _license_state(
    session: Session,
    lic: License,
    product: Product,
    *,
    product_id: str | None = None,
    version: str | None = None,
    store: str | None = None,
) -> Answer | None:
    """The answer when the license itself is not good, else None.

    ``store``: the store id (``Store.public_id``) the caller's product is sold in. Shop
    product ids are only unique within a shop: on an instance several stores share, a key
    of another shop's product 501 is not a key of this one's.
    """
    if store is not None and store != store_public_id(session, lic):
        return Answer(
            False, "PRODUCT_MISMATCH", "This key is for another store's product.", lic, product
        )
    if (
        product_id is not None
        and product_id != product.shop_product_id
        and product_id not in _product_ids(session, lic, product)
    ):
        return Answer(False, "PRODUCT_MISMATCH", "This key is for another product.", lic, product)
    if lic.status == "revoked":
        return Answer(False, "REVOKED", "This license was revoked.", lic, product)
    if lic.status == "suspended":
        return Answer(False, "SUSPENDED", "This license is suspended.", lic, product)
    if _is_expired(lic, utcnow()) and not _released_before_expiry(
        session, lic, product, version, product_id
    ):
        assert lic.expires_at is not None  # noqa: S101 - _is_expired checked it
        return Answer(
            False, "EXPIRED", f"This license expired on {lic.expires_at:%Y-%m-%d}.", lic, product
        )
    return None


def store_public_id(session: Session, lic: License) -> str:
    """The store id of the license's store (its public id)."""
    store = session.get(Store, lic.store_id)
    assert store is not None  # noqa: S101 - a license always has a store
    return store.public_id


def _find_activation(session: Session, lic: License, identity: Identity) -> Activation | None:
    return session.execute(
        select(Activation).where(
            Activation.license_id == lic.id,
            Activation.site == identity.site,
            Activation.fingerprint == identity.fingerprint,
        )
    ).scalar_one_or_none()


def _is_free_staging(product: Product, identity: Identity) -> bool:
    return (
        bool(identity.site) and Policy.of(product).staging_free and is_staging_site(identity.site)
    )


def _touch(session: Session, activation: Activation, *, always: bool = False) -> bool:
    """Record that the activation was seen, at most once per SEEN_RESOLUTION (no write
    per validate) unless ``always``. False when its row is gone: the seat was freed (the
    portal, the owner, the product's deactivate) after it was read, which an ORM change
    would only find at the commit, as a 500."""
    now = utcnow()
    if not always and now - activation.last_seen_at <= SEEN_RESOLUTION:
        return True
    stamped = session.execute(
        update(Activation)
        .where(Activation.id == activation.id)
        .values(last_seen_at=now)
        .execution_options(synchronize_session=False)
    )
    return getattr(stamped, "rowcount", 1) != 0


def _identity_answer(
    session: Session, lic: License, product: Product, identity: Identity
) -> Answer:
    """VALID when ``identity`` is activated (or a free staging site), else why not."""
    activation = _find_activation(session, lic, identity)
    if activation is not None and _touch(session, activation):
        return Answer(True, "VALID", "The license is valid here.", lic, product)
    if _is_free_staging(product, identity):
        return Answer(True, "VALID", "Staging site: free, no activation needed.", lic, product)
    others = list(session.scalars(select(Activation).where(Activation.license_id == lic.id)))
    if identity.site and any(a.site == identity.site for a in others):
        return Answer(
            False,
            "FINGERPRINT_MISMATCH",
            "This site is activated with another fingerprint.",
            lic,
            product,
        )
    if identity.fingerprint and any(a.fingerprint == identity.fingerprint for a in others):
        return Answer(
            False, "SITE_MISMATCH", "This machine is activated for another site.", lic, product
        )
    if others:
        code = "SITE_MISMATCH" if identity.site else "FINGERPRINT_MISMATCH"
        return Answer(False, code, "The license is activated elsewhere, not here.", lic, product)
    return Answer(False, "NO_ACTIVATION", "The license is not activated here.", lic, product)


def _seats_taken() -> Any:
    """Seats a license uses: its activations on production sites (staging ones are free)."""
    return (
        select(func.count())
        .select_from(Activation)
        .where(Activation.license_id == License.id, Activation.staging.is_(False))
        .correlate(License)
        .scalar_subquery()
    )


def _by_key_with_identity(statement: Select[Any]) -> Select[Any]:
    """The license of ``:key_hash`` with its product and the ``:site``/``:fingerprint``
    activation (if any)."""
    return (
        statement.join(Product, License.product_id == Product.id)
        .outerjoin(
            Activation,
            and_(
                Activation.license_id == License.id,
                Activation.site == bindparam("site"),
                Activation.fingerprint == bindparam("fingerprint"),
            ),
        )
        .where(License.key_hash == bindparam("key_hash"))
    )


# Built once: license, product, the identity's activation and seats taken.
_VALIDATE = _by_key_with_identity(select(License, Product, Activation, _seats_taken())).options(
    # The encrypted copy of the key is for people; a check never needs to decrypt it.
    defer(License.key_encrypted)
)


def _lookup_for_validate(
    session: Session, raw_key: str, identity: Identity
) -> tuple[License | None, Product | None, Activation | None, int, bool]:
    """One query for the common case (see ``_VALIDATE``)."""
    canonical = normalize_key(raw_key)
    row = session.execute(
        _VALIDATE,
        {
            "key_hash": hash_license_key(canonical or _DUMMY_KEY),
            "site": identity.site,
            "fingerprint": identity.fingerprint,
        },
    ).first()
    if canonical is None or row is None:
        return None, None, None, 0, canonical is None
    return row[0], row[1], row[2] if identity.given else None, int(row[3]), False


# Built once: the columns of a common VALID answer, as plain values (no ORM objects).
_VALIDATE_FAST = _by_key_with_identity(
    select(
        License.status,
        License.expires_at,
        License.updates_until,
        License.activation_limit,
        Product.shop_product_id,
        Activation.id,
        Activation.last_seen_at,
        _seats_taken(),
        Store.public_id,
    )
    .select_from(License)
    .join(Store, License.store_id == Store.id)
)


def validate_fast(
    engine: Engine,
    key_hash: str,
    *,
    product_id: str | None = None,
    site: str | None = None,
    fingerprint: str | None = None,
    store: str | None = None,
) -> Answer | None:
    """The common answers of :func:`validate` (VALID, NOT_FOUND: nothing to write) for a
    well-formed key (its :func:`lookup_hash`), from one Core statement outside any
    transaction (``read_one``).

    None whenever anything else could be the answer (another product id, a license that is
    not good, an identity that is not activated here, a last-seen stamp to write): the
    caller then asks :func:`validate`, which decides every case. Same answer, without a
    session or the ORM's per-row cost on the hot path.
    """
    identity = make_identity(site, fingerprint)
    row = read_one(
        engine,
        _VALIDATE_FAST,
        {"key_hash": key_hash, "site": identity.site, "fingerprint": identity.fingerprint},
    )
    if row is None:
        return _not_found(malformed=False)
    (
        status,
        expires_at,
        updates_until,
        limit,
        shop_product_id,
        activation_id,
        seen,
        seats,
        store_public_id_,
    ) = row
    now = utcnow()
    if (product_id is not None and product_id != shop_product_id) or (
        store is not None and store != store_public_id_
    ):
        return None
    if status in ("revoked", "suspended") or (expires_at is not None and expires_at <= now):
        return None
    if identity.given:
        if activation_id is None or now - seen > SEEN_RESOLUTION:
            return None
        detail = "The license is valid here."
    else:
        detail = "The license is valid."
    view = _license_block(
        status, shop_product_id, expires_at, updates_until, limit, int(seats), now
    )
    return Answer(True, "VALID", detail, seats=int(seats), license_view=view)


def validate(
    session: Session,
    raw_key: str,
    *,
    product_id: str | None = None,
    site: str | None = None,
    fingerprint: str | None = None,
    version: str | None = None,
    store: str | None = None,
) -> Answer:
    """Is this key good (for this store's product, on this site/machine, for this version)?

    Without a site or fingerprint only the license itself is checked. The common answer
    (VALID) costs one query.
    """
    identity = make_identity(site, fingerprint)
    lic, product, activation, seats, malformed = _lookup_for_validate(session, raw_key, identity)
    if lic is None or product is None:
        return _not_found(malformed)
    state = _license_state(
        session, lic, product, product_id=product_id, version=version, store=store
    )
    if state is not None:
        state.seats = seats
        return state
    if not identity.given:
        return Answer(True, "VALID", "The license is valid.", lic, product, seats=seats)
    if activation is not None and _touch(session, activation):
        return Answer(True, "VALID", "The license is valid here.", lic, product, seats=seats)
    answer = _identity_answer(session, lic, product, identity)
    answer.seats = seats
    return answer


def activation_json(activation: Activation) -> dict[str, Any]:
    return {
        "id": activation.id,
        "site": activation.site or None,
        "fingerprint": activation.fingerprint or None,
        "label": activation.label,
        "staging": activation.staging,
        "created_at": iso(activation.created_at),
    }


def _take_seat_lock(session: Session, lic: License) -> None:
    """The seat lock: every binding change of this license (activate, deactivate, the
    portal's button) queues here, on any host, and ``lic`` is read again under it: a
    revocation, a pause or another change's abuse suspension may have been committed while
    this one waited (PostgreSQL reads each statement afresh; SQLite's BEGIN IMMEDIATE
    already read it under the lock). The store is held first, as a deletion takes them (a
    flag's audit entry names the store); held, the store (and so this license) cannot be
    deleted before the transaction ends.

    Raises:
        StoreDeleted: the store was deleted meanwhile.
    """
    hold_live_store(session, lic.store_id)
    session.execute(
        select(License)
        .where(License.id == lic.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()


def activate(
    session: Session,
    raw_key: str,
    *,
    site: str | None = None,
    fingerprint: str | None = None,
    label: str | None = None,
    store: str | None = None,
    product_id: str | None = None,
) -> Answer:
    """Bind the license to (site, fingerprint), taking a seat unless it is a free staging site.

    Activating an identity that is already activated returns the same activation. A key of
    another product than ``product_id`` (the shop id the caller is sold as) takes no seat:
    validate would refuse it there anyway.
    """
    identity = make_identity(site, fingerprint)
    if not identity.given:
        raise ValidationFailed("activate needs a site or a fingerprint", field="site")
    lic, product, malformed = find_license(session, raw_key)
    if lic is None or product is None:
        return _not_found(malformed)
    state = _license_state(session, lic, product, product_id=product_id, store=store)
    if state is not None:
        return state
    try:
        _take_seat_lock(session, lic)
    except StoreDeleted:
        return _not_found(malformed)
    state = _license_state(session, lic, product, product_id=product_id, store=store)
    if state is not None:
        return state
    existing = _find_activation(session, lic, identity)
    # Freed after it was read (the owner's removal takes no seat lock): activated anew below.
    if existing is not None and _touch(session, existing, always=True):
        return Answer(
            True,
            "VALID",
            "Already activated here.",
            lic,
            product,
            {"activation": activation_json(existing)},
        )
    staging = _is_free_staging(product, identity)
    if not staging and lic.activation_limit is not None:
        used = activations_used(session, lic.id)
        if used >= lic.activation_limit:
            return Answer(
                False,
                "TOO_MANY_ACTIVATIONS",
                f"All {lic.activation_limit} activations are in use; deactivate one first.",
                lic,
                product,
            )
    now = utcnow()
    inserted = insert_ignoring_conflicts(
        session,
        Activation.__table__,
        {
            "license_id": lic.id,
            "site": identity.site,
            "fingerprint": identity.fingerprint,
            "label": (label or "").strip()[:200] or None,
            "staging": staging,
            "created_at": now,
            "last_seen_at": now,
        },
        ["license_id", "site", "fingerprint"],
    )
    activation = _find_activation(session, lic, identity)
    assert activation is not None  # noqa: S101 - inserted or already there
    extra = {"activation": activation_json(activation)}
    if inserted is not None:
        _record_binding_change(session, lic, product, "activate")
        if lic.status == "suspended":  # this change was one too many: the abuse signal
            return Answer(False, "SUSPENDED", "This license is suspended.", lic, product, extra)
    return Answer(True, "VALID", "Activated.", lic, product, extra)


def deactivate(
    session: Session, raw_key: str, *, site: str | None = None, fingerprint: str | None = None
) -> Answer:
    """Release the seat of (site, fingerprint). Works whatever the license's status."""
    identity = make_identity(site, fingerprint)
    if not identity.given:
        raise ValidationFailed("deactivate needs a site or a fingerprint", field="site")
    lic, product, malformed = find_license(session, raw_key)
    if lic is None or product is None:
        return _not_found(malformed)
    try:
        _take_seat_lock(session, lic)
    except StoreDeleted:
        return _not_found(malformed)
    removed = session.execute(
        delete(Activation).where(
            Activation.license_id == lic.id,
            Activation.site == identity.site,
            Activation.fingerprint == identity.fingerprint,
        )
    )
    if getattr(removed, "rowcount", 0) == 0:
        return Answer(False, "NO_ACTIVATION", "Nothing is activated here.", lic, product)
    _record_binding_change(session, lic, product, "deactivate")
    return Answer(True, "DEACTIVATED", "Deactivated; the seat is free again.", lic, product)


def remove_activation(session: Session, lic: License, activation_id: int) -> bool:
    """Deactivate by id (buyer portal, owner). Returns whether there was such an activation."""
    product = session.get(Product, lic.product_id)
    _take_seat_lock(session, lic)
    removed = session.execute(
        delete(Activation).where(Activation.license_id == lic.id, Activation.id == activation_id)
    )
    if getattr(removed, "rowcount", 0) == 0 or product is None:
        return False
    _record_binding_change(session, lic, product, "deactivate")
    return True


def _record_binding_change(session: Session, lic: License, product: Product, kind: str) -> None:
    """Count the change; past the policy's threshold in 30 days, flag (and maybe suspend)."""
    now = utcnow()
    session.add(BindingChange(license_id=lic.id, kind=kind, created_at=now))
    session.flush()
    policy = Policy.of(product)
    if policy.abuse_threshold is None:
        return
    changes: int = session.execute(
        select(func.count())
        .select_from(BindingChange)
        .where(BindingChange.license_id == lic.id, BindingChange.created_at > now - ABUSE_WINDOW)
    ).scalar_one()
    if changes <= policy.abuse_threshold:
        return
    flagged = insert_ignoring_conflicts(
        session,
        LicenseFlag.__table__,
        {
            "license_id": lic.id,
            "reason": "binding_changes",
            "binding_changes": changes,
            "created_at": now,
        },
        ["license_id"],
    )
    if flagged is None:
        return
    record_audit(
        session,
        store_id=lic.store_id,
        actor="system",
        action="license.flagged",
        subject=f"license:{lic.id}",
        detail={"binding_changes_30d": changes, "threshold": policy.abuse_threshold},
    )
    if policy.abuse_suspend and lic.status == "active":
        lic.status = "suspended"
        lic.status_reason = "abuse"
        # Paused means paused: its download links shut too, as an owner's pause shuts them,
        # until the owner reinstates the key.
        set_downloads_blocked(session, lic, blocked=True, reason="abuse")
        record_audit(
            session,
            store_id=lic.store_id,
            actor="system",
            action="license.suspended",
            subject=f"license:{lic.id}",
            detail={"reason": "abuse"},
        )


# --- releases and update-check ----------------------------------------------------------


def _is_update(candidate: Version, current: Version) -> bool:
    """Newer, and a stable release unless the caller runs a pre-release (it opted in)."""
    return candidate > current and (candidate.stable or not current.stable)


def check_update(
    session: Session,
    raw_key: str,
    *,
    product_id: str,
    version: str,
    site: str | None = None,
    fingerprint: str | None = None,
    store: str | None = None,
) -> Answer:
    """The newest release after ``version`` that the license's update window covers.

    A release is offered only when it was published before ``updates_until`` (no limit when
    that is None) and, for a license past its expiry (only the perpetual fallback answers
    one), before that expiry: a release published later would not validate. A pre-release is
    offered only to a caller running one: stable versions get stable releases. A release
    dated after now is not out yet: it is not considered at all.
    The answer's ``release`` (in ``extra``) is the one offered, if any; the caller adds the
    download URL.
    """
    identity = make_identity(site, fingerprint)
    lic, product, malformed = find_license(session, raw_key)
    if lic is None or product is None:
        return _not_found(malformed)
    state = _license_state(
        session, lic, product, product_id=product_id, version=version, store=store
    )
    if state is not None:
        return state
    if identity.given:
        answer = _identity_answer(session, lic, product, identity)
        if not answer.valid:
            return answer
    current = Version.parse(version)
    release_product = _release_product_id(session, lic, product, product_id)
    published = select(Release).where(
        Release.product_id == release_product, Release.published_at <= utcnow()
    )
    newer = [r for r in session.scalars(published) if _is_update(Version.parse(r.version), current)]
    if not newer:
        return Answer(True, "VALID", "Up to date.", lic, product)
    until = lic.updates_until
    if lic.expires_at is not None and _is_expired(lic, utcnow()):
        # Here by the perpetual fallback: a release published after the expiry would not
        # validate, so installing it would stop the product (even with updates paid longer).
        until = lic.expires_at if until is None else min(until, lic.expires_at)
    covered = [r for r in newer if until is None or r.published_at <= until]
    if not covered:
        assert until is not None  # noqa: S101 - else every release is covered
        return Answer(
            False,
            "UPDATES_EXPIRED",
            f"Updates ended on {shown_utc(until)}; renew to get newer versions.",
            lic,
            product,
        )
    # Equal versions (1.10, 1.10+build.7): the one published last.
    best = max(covered, key=lambda r: (Version.parse(r.version), r.published_at))
    return Answer(True, "VALID", "An update is available.", lic, product, {"release": best})


def license_json(
    session: Session, lic: License, product: Product, seats: int | None = None
) -> dict[str, Any]:
    """The ``license`` block of an answer (``seats``: already counted, else counted here)."""
    return _license_block(
        lic.status,
        product.shop_product_id,
        lic.expires_at,
        lic.updates_until,
        lic.activation_limit,
        seats if seats is not None else activations_used(session, lic.id),
        utcnow(),
    )


def _license_block(
    status: str,
    shop_product_id: str,
    expires_at: dt.datetime | None,
    updates_until: dt.datetime | None,
    activation_limit: int | None,
    seats: int,
    now: dt.datetime,
) -> dict[str, Any]:
    if status == "active" and expires_at is not None and expires_at <= now:
        status = "expired"
    return {
        "status": status,
        "product": shop_product_id,
        "expires_at": iso(expires_at),
        "updates_until": iso(updates_until),
        "activation_limit": activation_limit,
        "activations_used": seats,
    }


def lookup_hash(raw_key: object) -> str | None:
    """The keyed lookup hash of a key as typed; None for a malformed key."""
    canonical = normalize_key(raw_key)
    return None if canonical is None else hash_license_key(canonical)


def key_fingerprint(key_hash: str) -> str:
    """A stable, non-secret tag of a key for rate-limit buckets (never the key itself, nor
    its lookup hash)."""
    return hashlib.sha256(key_hash.encode()).hexdigest()[:32]

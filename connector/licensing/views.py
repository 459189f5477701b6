"""The license API for products: thin views over connector.licensing.service.

Every answer on these paths, errors and 429s included, is signed (connector.signing): the
headers ``Date``, ``Digest`` and ``Keygate-Signature`` cover the request target, the Host
header as received, the date and the body's digest. Bodies carry the caller's ``nonce`` and
a ``ts``. Rate limits apply per IP and per key (``connector.ratelimit.Budgets``, in the
storage Flask-Limiter uses; an IPv6 caller's IP budget is its /64's, an IPv4-mapped address
counts as its IPv4 one: ``client_network_key``); a breach is answered 429 with
``Retry-After`` and kept as a security record with the IP hashed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request, send_file
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from connector import get_settings
from connector.audit import record_security_event
from connector.db import Disconnected, db, read_mostly, survives_a_dropped_connection, utcnow
from connector.errors import (
    PROBLEM_BASE,
    InvalidInput,
    KeygateError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    ValidationFailed,
    database_unavailable,
    http_problem,
    rollback_request,
    route_for_log,
)
from connector.extensions import client_network_key
from connector.licensing import service
from connector.licensing.files import (
    DEFAULT_TTL,
    MAX_TTL,
    MIN_TTL,
    build_license_file,
    file_expiry,
    granted_ttl,
    key_digest,
)
from connector.licensing.policy import Policy
from connector.licensing.privacy import register as register_privacy_hooks
from connector.licensing.releases import release_download_url
from connector.licensing.versions import comparable_version
from connector.models import Product, Release, Store
from connector.ratelimit import Breach, Budgets
from connector.redact import keygate_logger
from connector.signing import (
    current_signer,
    digest_header,
    http_date,
    published_keys,
    request_target,
    signature_header,
    signing_string,
)
from connector.tokens import release_id_from_token
from connector.validation import optional_bool, optional_int, optional_str, required_str

bp = Blueprint("licensing_views", __name__, url_prefix="/api/v1")
log = keygate_logger(__name__)
register_privacy_hooks()

MAX_LICENSE_BODY = 16 * 1024
# Every answer at these paths, or below them, is signed (``/api/v1/licenses`` itself too: a
# product's client posting to it by mistake must not read an unsigned answer as tampered).
SIGNED_PATHS = ("/api/v1/licenses", "/api/v1/signing-keys")


# --- input ---------------------------------------------------------------------------------


def _read_payload() -> dict[str, Any]:
    """The JSON object of the body, read once per request (400 not JSON, 413 too large)."""
    if "_license_payload" not in g:
        try:
            g._license_payload = _parse_body()
        except KeygateError as exc:
            g._license_payload = exc
    payload: dict[str, Any] | KeygateError = g._license_payload
    if isinstance(payload, KeygateError):
        raise payload
    return payload


def _body_limit() -> int:
    """The largest body a license call takes: 16 KiB, or ``KEYGATE_MAX_BODY_BYTES`` if
    that is lower (werkzeug refuses a larger body before the view reads it)."""
    configured = request.max_content_length
    return MAX_LICENSE_BODY if configured is None else min(MAX_LICENSE_BODY, configured)


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"The body must be at most {_body_limit()} bytes.")


def _parse_body() -> dict[str, Any]:
    limit = _body_limit()
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large()
    try:
        raw = request.stream.read(limit + 1)
    except RequestEntityTooLarge:  # a body with no length, past KEYGATE_MAX_BODY_BYTES
        raise _too_large() from None
    if len(raw) > limit:
        raise _too_large()
    g._license_request_digest = digest_header(raw)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
        raise InvalidInput("The body must be a JSON object.") from None
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.")
    if not isinstance(data.get("nonce"), str | None):
        # Echoed as it came, a number would be 12345 in one JSON library and 12345.0 in
        # another; echoed as null it fails the product's own check with no word of why.
        raise ValidationFailed(
            "nonce must be text (a JSON string), as the answer echoes it", field="nonce"
        )
    return data


def _payload_quietly() -> dict[str, Any]:
    try:
        return _read_payload()
    except KeygateError:
        return {}


def _nonce() -> str | None:
    value = _payload_quietly().get("nonce")
    return value[:200] if isinstance(value, str) else None


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """What binds an answer to its request, set in every body: the caller's ``nonce``, the
    ``request_digest`` of the body it answers (``sha-256=<base64>``, as ``Digest``; None
    for a body never read: too large), and ``ts``. The digest names the whole question
    (key, site, fingerprint, product, version), so an answer to one request, signed and
    genuine, cannot be passed off as the answer to another (the client library checks it,
    also for answers it keeps for offline use)."""
    body["nonce"] = _nonce()
    body["request_digest"] = g.get("_license_request_digest")
    body["ts"] = service.iso(utcnow())
    g._license_echoed = True
    return body


def _shop_id_field(data: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = data.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
        data = {**data, name: value}
    if required:
        return required_str(data, name, max_length=64)
    return optional_str(data, name, max_length=64)


def _fingerprint_field(data: dict[str, Any]) -> str | None:
    """The machine's fingerprint (optional), at most ``MAX_FINGERPRINT`` characters."""
    return optional_str(data, "fingerprint", max_length=service.MAX_FINGERPRINT)


def _store_field(data: dict[str, Any]) -> str | None:
    """The store id the caller's product is sold in (optional; see service._license_state)."""
    return optional_str(data, "store", max_length=64)


# --- rate limits ---------------------------------------------------------------------------


def _key_hash() -> str | None:
    """The lookup hash of the request's key (None: no key, or a malformed one), made once."""
    if "_key_hash" not in g:
        g._key_hash = service.lookup_hash(_payload_quietly().get("key"))
    key_hash: str | None = g._key_hash
    return key_hash


def rate_limited(view: Callable[[], ResponseReturnValue]) -> Callable[[], ResponseReturnValue]:
    """Spend the caller's per-IP budget, then the key's (a request without a key spends the
    IP budget only); a spent budget is answered 429 with Retry-After."""

    @wraps(view)
    def limited() -> ResponseReturnValue:
        budgets: Budgets = current_app.extensions["keygate.license_budgets"]
        breach = budgets.spend("license-ip", client_network_key())
        key_hash = _key_hash()
        if breach is None and key_hash is not None:
            breach = budgets.spend("license-key", service.key_fingerprint(key_hash))
        if breach is not None:
            g.keygate_breach = breach
            raise TooManyRequests(
                f"Too many license calls from this {breach.scope.removeprefix('license-')}; "
                f"try again in {breach.retry_after} s."
            )
        return view()

    return limited


def _record_breach(breach: Breach) -> None:
    license_id = None
    key = _payload_quietly().get("key")
    if isinstance(key, str):
        lic, _product, _malformed = service.find_license(db.session, key)
        license_id = lic.id if lic is not None else None
    record_security_event(
        db.session,
        kind="rate_limited",
        scope=breach.scope.removeprefix("license-"),
        license_id=license_id,
    )


# --- signing -------------------------------------------------------------------------------


def _is_signed_path() -> bool:
    path = request.path
    return any(path == base or path.startswith(base + "/") for base in SIGNED_PATHS)


@bp.before_app_request
def _load_signer() -> None:
    # Loaded before the request's own session starts, so signing never waits on it.
    if _is_signed_path():
        with contextlib.suppress(DBAPIError):  # no key yet and no database: see _sign_answer
            g.keygate_signer = current_signer()


@bp.after_app_request
def _sign_answer(response: Response) -> Response:
    if not _is_signed_path() or response.direct_passthrough:
        return response
    signer = g.get("keygate_signer")
    if signer is None:
        try:
            signer = current_signer()
        except DBAPIError:
            # The database is out of reach and this process has no key loaded yet: its
            # 503 cannot be signed (clients treat any 5xx as "unavailable"); nothing else
            # ever leaves unsigned.
            if response.status_code < 500:
                raise
            return response
    if response.status_code >= 400 and not g.get("_license_echoed"):
        # An error made outside this blueprint's views (a path or method no route has):
        # it echoes the request too, as every signed error does.
        made = response.get_json(silent=True)
        if isinstance(made, dict):
            response.set_data(json.dumps(_echo(made)))
    body = response.get_data()
    date = http_date()
    digest = digest_header(body)
    target = request_target(request.method, request.path, request.query_string.decode("latin-1"))
    host = request.headers.get("Host", "")
    response.headers["Date"] = date
    response.headers["Digest"] = digest
    response.headers["Keygate-Signature"] = signature_header(
        signer.kid, signer.sign(signing_string(target, host, date, digest))
    )
    response.headers["Cache-Control"] = "no-store"
    return response


# --- errors --------------------------------------------------------------------------------


def _problem(status: int, type_: str, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": PROBLEM_BASE + type_, "title": title, "status": status, "detail": detail}
    body.update(extra)
    response = jsonify(_echo(body))
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


@bp.errorhandler(KeygateError)
def _keygate_error(exc: KeygateError) -> Response:
    rollback_request()
    response = _problem(exc.status, exc.type, exc.title, exc.detail, **exc.extra)
    breach: Breach | None = g.get("keygate_breach")
    if isinstance(exc, TooManyRequests) and breach is not None:
        _record_breach(breach)
        response.headers["Retry-After"] = str(breach.retry_after)
    elif "retry_after" in exc.extra:
        response.headers["Retry-After"] = str(exc.extra["retry_after"])
    return response


@bp.errorhandler(DBAPIError)
@bp.errorhandler(Disconnected)
def _database_error(exc: Exception) -> Response:
    unavailable = database_unavailable(exc)
    if unavailable is None:
        log.exception("unhandled error on %s %s", request.method, route_for_log())
        return _http_error(InternalServerError())
    return _keygate_error(unavailable)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    rollback_request()
    status, type_, title, detail = http_problem(exc)
    if status == 413:
        detail = _too_large().detail
    return _problem(status, type_, title, detail)


# --- answers -------------------------------------------------------------------------------


def _answer(result: service.Answer, **extra: Any) -> ResponseReturnValue:
    body: dict[str, Any] = {
        "valid": result.valid,
        "code": result.code,
        "detail": result.detail,
        "license": (
            result.license_view
            if result.license_view is not None
            else service.license_json(db.session, result.license, result.product, result.seats)
            if result.license is not None and result.product is not None
            else None
        ),
    }
    body.update({k: v for k, v in result.extra.items() if k != "release"})
    body.update(extra)
    return jsonify(_echo(body))


@bp.post("/licenses/validate")
@rate_limited
@survives_a_dropped_connection
def validate() -> ResponseReturnValue:
    data = _read_payload()
    key = required_str(data, "key")
    product_id = _shop_id_field(data, "product")
    site = optional_str(data, "site", max_length=2048)
    fingerprint = _fingerprint_field(data)
    version = optional_str(data, "version", max_length=64)
    store = _store_field(data)
    # Almost always one read outside any transaction; the rest (an activation's hourly
    # last-seen stamp, every answer but VALID and NOT_FOUND) in a read-mostly unit.
    key_hash = _key_hash()
    result = (
        service.validate_fast(
            db.engine,
            key_hash,
            product_id=product_id,
            site=site,
            fingerprint=fingerprint,
            store=store,
        )
        if key_hash is not None
        else None
    )
    if result is None:
        session = db.session
        result = read_mostly(
            session,
            lambda: service.validate(
                session,
                key,
                product_id=product_id,
                site=site,
                fingerprint=fingerprint,
                version=version,
                store=store,
            ),
        )
    return _answer(result)


@bp.post("/licenses/activate")
@rate_limited
@survives_a_dropped_connection
def activate() -> ResponseReturnValue:
    data = _read_payload()
    result = service.activate(
        db.session,
        required_str(data, "key"),
        site=optional_str(data, "site", max_length=2048),
        fingerprint=_fingerprint_field(data),
        label=optional_str(data, "label", max_length=200),
        store=_store_field(data),
        product_id=_shop_id_field(data, "product"),
    )
    # Every activate answer names its activation, null when none was made (as checkout's
    # license_file): a product reads one shape whatever the code.
    return _answer(result, activation=result.extra.get("activation"))


@bp.post("/licenses/deactivate")
@rate_limited
@survives_a_dropped_connection
def deactivate() -> ResponseReturnValue:
    data = _read_payload()
    result = service.deactivate(
        db.session,
        required_str(data, "key"),
        site=optional_str(data, "site", max_length=2048),
        fingerprint=_fingerprint_field(data),
    )
    return _answer(result)


@bp.post("/licenses/update-check")
@rate_limited
@survives_a_dropped_connection
def update_check() -> ResponseReturnValue:
    data = _read_payload()
    result = service.check_update(
        db.session,
        required_str(data, "key"),
        product_id=_shop_id_field(data, "product", required=True) or "",
        version=comparable_version(required_str(data, "version", max_length=64)),
        site=optional_str(data, "site", max_length=2048),
        fingerprint=_fingerprint_field(data),
        store=_store_field(data),
    )
    release: Release | None = result.extra.get("release")
    if release is None:  # every answer carries update, failed ones too
        return _answer(result, update=None)
    store = db.session.get(Store, result.license.store_id) if result.license else None
    assert store is not None  # noqa: S101 - a license always has a store
    # Ended before the bucket is asked whether the file is there (up to its timeout when it
    # stalls), which is asked in a read-only unit: on SQLite every ordinary transaction
    # holds the one write lock, which would stall every webhook, click and activation
    # meanwhile (this call may have written an activation's last-seen stamp).
    db.session.commit()
    ttl = get_settings().download_url_ttl
    download_url = read_mostly(db.session, lambda: release_download_url(store, release, ttl))
    update = {
        "version": release.version,
        "sha256": release.sha256,
        "size": release.size,
        "changelog": release.changelog,
        "published_at": service.iso(release.published_at),
        "download_url": download_url,
        "download_expires_in": ttl,
    }
    return _answer(result, update=update)


@bp.post("/licenses/checkout")
@rate_limited
@survives_a_dropped_connection
def checkout() -> ResponseReturnValue:
    """A signed offline license file for the license (and identity, when given)."""
    data = _read_payload()
    key = required_str(data, "key")
    ttl = optional_int(data, "ttl", minimum=MIN_TTL, maximum=MAX_TTL) or DEFAULT_TTL
    encrypt = optional_bool(data, "encrypt")
    product_id = _shop_id_field(data, "product")
    result = service.validate(
        db.session,
        key,
        product_id=product_id,
        site=optional_str(data, "site", max_length=2048),
        fingerprint=_fingerprint_field(data),
        store=_store_field(data),
    )
    if not result.valid or result.license is None or result.product is None:
        return _answer(result, license_file=None, license_file_expiry=None)
    identity = service.make_identity(data.get("site"), data.get("fingerprint"))
    # The owner bounds how long a file verifies offline after a refund or a seat moved
    # elsewhere: a longer request is shortened to the product's offline_days, not refused.
    ttl = granted_ttl(ttl, Policy.of(result.product).offline_days)
    issued = utcnow()
    expiry = file_expiry(issued, ttl, result.license.expires_at)
    content = {
        "license": service.license_json(db.session, result.license, result.product),
        # The product asked for (a variation's parent, say), checked by validate above: a
        # product verifying the file offline names the same id it asked with.
        "product": product_id,
        "store": service.store_public_id(db.session, result.license),
        "key_sha256": key_digest(key),
        "site": identity.site or None,
        "fingerprint": identity.fingerprint or None,
        "issued": service.iso(issued),
        "expiry": service.iso(expiry),
        "ttl": int((expiry - issued).total_seconds()),  # what it lasts (a license may end it)
    }
    signer = g.get("keygate_signer") or current_signer()
    license_file = build_license_file(content, signer, encrypt_with=key if encrypt else None)
    return _answer(result, license_file=license_file, license_file_expiry=content["expiry"])


@bp.get("/signing-keys")
def signing_keys() -> ResponseReturnValue:
    keys = [
        {
            "kid": row.kid,
            "alg": row.algorithm,
            "public_key": row.public_key,
            "status": row.status,
            "created_at": service.iso(row.created_at),
            "retired_at": service.iso(row.retired_at),
        }
        for row in published_keys(db.session)
    ]
    return jsonify({"keys": keys, "ts": service.iso(utcnow())})


@bp.get("/releases/download/<token>")
def download_release(token: str) -> ResponseReturnValue:
    """The embedded-storage file behind an update-check download URL (short-lived token)."""
    from connector.downloads.storage import Delivery, StorageUnavailable, store_for

    ttl = get_settings().download_url_ttl
    release_id = release_id_from_token(token, max_age=ttl)

    def delivered() -> tuple[Release, Delivery]:
        release = db.session.get(Release, release_id) if release_id is not None else None
        product = db.session.get(Product, release.product_id) if release is not None else None
        store = db.session.get(Store, product.store_id) if product is not None else None
        if release is None or store is None:
            raise NotFound("No such release.")
        filename = release.object_key.rsplit("/", 1)[-1]
        try:
            return release, store_for(store).delivery(release.object_key, filename, ttl)
        except (FileNotFoundError, ValueError):  # ValueError: a key outside the storage folder
            raise NotFound("The release file is not in storage.") from None
        except StorageUnavailable:
            raise ServiceUnavailable(
                "The file store is not answering; try again shortly."
            ) from None

    # Read-only: a bucket asked whether the file is there (a store moved to R2, a link
    # handed out while it was down) may stall for seconds, with no write lock held.
    release, delivery = read_mostly(db.session, delivered)
    current_app.logger.debug("release %s downloaded", release.id)
    if delivery.path is None:  # the store has moved to R2 since the link was made
        return redirect(delivery.url or "/", code=302)
    path = delivery.path
    return send_file(path, as_attachment=True, download_name=path.name)

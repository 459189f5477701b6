"""The store's connection to its shop: wc-auth handshake, webhooks Keygate registers itself.

Flow: the owner opens :func:`connect_url` in the shop admin and approves; WooCommerce POSTs
the new REST key to the callback (:func:`accept_callback`), which stores it in the vault and
enqueues ``vault.register_webhooks``. That job (:func:`register_webhooks`) replaces every
webhook pointing at this store's delivery URL with one webhook per topic signed with a
fresh secret, and remembers their ids. The shop is never waited on inside a transaction.
:func:`check_webhooks` (run by reconciliation) re-activates one WooCommerce disabled after
failed deliveries; :func:`disconnect` deletes them and forgets the key.
:func:`connection_report` is how things stand, as the admin API and the store page show it.
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from connector.audit import record_audit
from connector.db import insert_ignoring_conflicts, iso, lock_row, utcnow
from connector.errors import Forbidden, KeygateError, ServiceUnavailable
from connector.jobs import enqueue, trouble_json
from connector.models import Job, ShopConnection, Store, WebhookRegistration
from connector.redact import keygate_logger
from connector.stores import hold_live_store, random_alphanumeric
from connector.tokens import CONNECT_STATE, dumps_timed, loads_timed_with_time
from connector.vault.service import credentials_for, delete_credentials, put_credentials
from plugin.woocommerce.connect import AuthCallback, authorize_url
from plugin.woocommerce.rest import ShopError, ShopRejected, WooCommerceClient

log = keygate_logger(__name__)

# order.restored: an order taken out of the trash (applied like order.updated); without it
# a restore is only seen at the order's next update or reconciliation.
TOPICS = ("order.created", "order.updated", "order.deleted", "order.restored")
APP_NAME = "Keygate"
STATE_MAX_AGE = 24 * 3600  # the owner may approve the next day, not next month
REGISTER_JOB = "vault.register_webhooks"
# How long a secret replaced by a re-registration is still taken at most: the shop's webhooks
# signed with it are deleted seconds later, unless the shop stops answering meanwhile.
PREVIOUS_SECRET_GRACE = dt.timedelta(minutes=15)
DISCONNECT_ROUNDS = 3
KEY_REFUSED = (401, 403)  # WooCommerce's answer to a key revoked or without the right
TRY_AGAIN_OR_FORGET = (
    "Try again once the shop answers; if it is gone for good, forget its key anyway (the"
    " store page offers it; the API: DELETE /api/v1/admin/connection?shop_gone=true)."
)


def webhook_url(store: Store) -> str:
    from connector import get_settings

    return f"{get_settings().base_url}/webhooks/woocommerce/{store.public_id}"


def same_address(one: str, other: str) -> bool:
    """Two URLs that name one address (scheme and host in any case, a trailing slash)."""
    a, b = urlsplit(one.strip()), urlsplit(other.strip())
    try:
        return (a.scheme.lower(), a.hostname, a.port, a.path.rstrip("/")) == (
            b.scheme.lower(),
            b.hostname,
            b.port,
            b.path.rstrip("/"),
        )
    except ValueError:  # a port that is no number
        return False


def webhooks_elsewhere(session: Session, store: Store) -> str | None:
    """Where the shop delivers Keygate's registered webhooks, when that is not the store's
    webhook URL (registered while KEYGATE_BASE_URL named another address): None when all
    deliver here, or none was seen yet.

    Keygate does not point them here itself: a copy of its database restored on another
    server (a test, a migration) would take the production shop's webhooks. The owner is
    told, and reconnects (which registers them at the current address)."""
    here = webhook_url(store)
    seen = session.scalars(
        select(WebhookRegistration.delivery_url)
        .where(
            WebhookRegistration.store_id == store.id,
            WebhookRegistration.delivery_url.is_not(None),
        )
        .order_by(WebhookRegistration.topic)
    )
    return next((url for url in seen if url and not same_address(url, here)), None)


def callback_url(store: Store) -> str:
    return f"{webhook_url(store)}/auth-callback"


def return_url(store: Store) -> str:
    from connector import get_settings

    return f"{get_settings().base_url}/connect/woocommerce/{store.public_id}/done"


def connect_warning() -> str | None:
    """Why the wc-auth link cannot work from here, if it cannot (WooCommerce only posts the
    key to a public https callback_url)."""
    from connector import get_settings

    if get_settings().base_url.startswith("https://"):
        return None
    return (
        "WooCommerce posts the key only to a public https address: set KEYGATE_BASE_URL to "
        "it, or give the key by hand (the store's credentials page in /admin, or "
        "PUT /api/v1/admin/credentials/woocommerce)."
    )


def connect_url(store: Store) -> str:
    """The wc-auth link for this store; its state is signed, names the store and says when
    it was made (it is good for one change of the connection)."""
    # "t": when it was made, finer than the signature's second (accept_callback).
    state = dumps_timed(CONNECT_STATE, {"s": store.public_id, "t": utcnow().timestamp()})
    return authorize_url(
        store.url,
        app_name=APP_NAME,
        state=state,
        return_url=return_url(store),
        callback_url=callback_url(store),
    )


def lock_store(session: Session, store: Store) -> None:
    """Serialize connection changes of one store (PostgreSQL row lock; SQLite writers queue).

    Raises:
        StoreDeleted: the store was deleted meanwhile.
    """
    hold_live_store(session, store, exclusive=True)


def connection_of(session: Session, store: Store) -> ShopConnection:
    """The store's connection row, made on first use (two first uses at once make one)."""
    query = select(ShopConnection).where(ShopConnection.store_id == store.id)
    connection = session.execute(query).scalar_one_or_none()
    if connection is None:
        insert_ignoring_conflicts(
            session,
            ShopConnection.__table__,
            {"store_id": store.id, "status": "disconnected"},
            ["store_id"],
        )
        connection = session.execute(query).scalar_one()
    return connection


def connection_report(session: Session, store: Store) -> dict[str, Any]:
    """How the store's connection to its shop stands (GET /api/v1/admin/connection and the
    admin store page): status, the wc-auth link, registered webhooks, sync progress."""
    connection = connection_of(session, store)
    registrations = session.scalars(
        select(WebhookRegistration)
        .where(WebhookRegistration.store_id == store.id)
        .order_by(WebhookRegistration.topic)
    )
    return {
        "status": connection.status,
        "connect_url": connect_url(store),
        "connect_warning": connect_warning(),
        "webhook_url": webhook_url(store),
        "connected_at": iso(connection.connected_at),
        "disconnected_at": iso(connection.disconnected_at),
        "reconciled_until": iso(connection.reconciled_until),
        "products_synced_at": iso(connection.products_synced_at),
        # Products whose _keygate_* meta the last sync could not apply, and why.
        "products_invalid": [
            {"product_id": shop_id, "problem": problem}
            for shop_id, problem in sorted((connection.products_invalid or {}).items())
        ],
        "webhooks": [
            {
                "topic": r.topic,
                "id": r.shop_webhook_id,
                "status": r.status,
                "delivery_url": r.delivery_url,
            }
            for r in registrations
        ],
        # The address the shop's webhooks deliver to, when it is not webhook_url.
        "webhooks_elsewhere": webhooks_elsewhere(session, store),
        "webhook_registration": registration_trouble(session, store),
    }


def _latest_registration(session: Session, store: Store) -> Job | None:
    """The store's newest registration of its webhooks: it says how things stand."""
    return session.scalars(
        select(Job)
        .where(Job.kind == REGISTER_JOB, Job.payload["store_id"].as_integer() == store.id)
        .order_by(Job.id.desc())
        .limit(1)
    ).first()


def registration_trouble(session: Session, store: Store) -> dict[str, Any] | None:
    """Registering the shop's webhooks, when it has failed at least once and not succeeded
    since: the shop may be down, or the key wrong. None when nothing is wrong."""
    job = _latest_registration(session, store)
    # The newest registration says how things stand: one that succeeded after an older one
    # died means nothing is wrong.
    if job is None or job.status == "done" or job.attempts == 0:
        return None
    return trouble_json(job)


def retry_registration_now(session: Session, store: Store) -> bool:
    """After the shop's address was corrected: a registration of the webhooks that failed
    (a redirect, a shop not found at the old address) is queued again, to run at once
    rather than at its next backoff, or at all when it gave up. True when one was."""
    if credentials_for(session, store, "woocommerce") is None:
        return False
    job = _latest_registration(session, store)
    if job is None or job.attempts == 0 or job.status not in ("pending", "dead"):
        return False
    # A second registration beside one still retrying is safe: they leave one webhook per
    # topic (see register_webhooks), and the newest says how things stand.
    enqueue(session, REGISTER_JOB, {"store_id": store.id})
    return True


def shop_client_for(session: Session, store: Store) -> WooCommerceClient | None:
    """A REST client with the store's WooCommerce key, or None when it has none."""
    credentials = credentials_for(session, store, "woocommerce")
    if credentials is None:
        return None
    return WooCommerceClient(store.url, credentials["consumer_key"], credentials["consumer_secret"])


def accept_callback(session: Session, store: Store, callback: AuthCallback) -> bool:
    """Store the key WooCommerce made for Keygate and start registering webhooks.

    Idempotent: the same key delivered again changes nothing.

    Returns:
        True when something changed (first connection or a new key).

    Raises:
        Forbidden: the state is not one Keygate signed for this store (or is too old).
    """
    try:
        data, signed = loads_timed_with_time(CONNECT_STATE, callback.state, max_age=STATE_MAX_AGE)
    except KeygateError:  # tampered or expired: the same answer, nothing stored
        data, signed = None, None
    if not isinstance(data, dict) or data.get("s") != store.public_id or signed is None:
        raise Forbidden("This authorization was not started for this store.")
    if callback.key_permissions != "read_write":
        raise Forbidden("Keygate needs read_write access to register webhooks.")
    lock_store(session, store)
    connection = connection_of(session, store)
    current = credentials_for(session, store, "woocommerce")
    if (
        connection.status == "connected"
        and current is not None
        and hmac.compare_digest(str(current.get("consumer_key")), callback.consumer_key)
        and hmac.compare_digest(str(current.get("consumer_secret")), callback.consumer_secret)
    ):
        return False
    # A state is good for one change: one signed before the connection last changed (its own
    # use, a key given by hand, a disconnect) is refused. It stands in the return URL, the
    # shop's logs and the browser's history, and a replay could replace the store's key or
    # reconnect a store its owner disconnected.
    made = data.get("t")
    # A state made before states said when: the second its signature was made.
    made_at = made if isinstance(made, float) else signed.timestamp()
    changes = [t for t in (connection.connected_at, connection.disconnected_at) if t is not None]
    if changes and made_at <= max(changes).timestamp():
        raise Forbidden(
            "This authorization link was used already, or the connection changed since it was"
            " made: connect again from the store's page."
        )
    put_credentials(
        session,
        store,
        "woocommerce",
        {"consumer_key": callback.consumer_key, "consumer_secret": callback.consumer_secret},
        actor="shop",
    )
    connection.key_permissions = callback.key_permissions
    _mark_connected(session, store, connection, key_id=callback.key_id, actor="shop")
    retry_refused_shop_jobs(session, store)
    return True


def retry_refused_shop_jobs(session: Session, store: Store) -> list[int]:
    """The store's shop key was just given (reconnected, saved by hand): its write-backs to
    the shop (the buyers' order notes) that the shop refused for the key before (401, 403:
    revoked in WooCommerce, read-only) run now, not at their next backoff, and those that
    gave up (dead after their last attempt) are taken up again, as Brevo credentials do for
    the mails held for them (:func:`connector.mail.service.send_held_mail`). The shop's
    reads (reconciliation, product sync, webhooks) are started anew by the connection
    itself, and the orders whose refunds Keygate could not read (no key, or the key refused)
    are read again (:func:`connector.orders.reconcile.reread_unapplied_refunds`):
    reconciliation reads only the orders changed lately. Returns the jobs' ids."""
    from connector.jobs import run_held_now, store_jobs
    from connector.orders.reconcile import reread_unapplied_refunds
    from connector.orders.writeback import NOTE_JOB

    reread_unapplied_refunds(session, store)

    # As ShopRejected says it: "<method> <endpoint>: HTTP <status> <code>".
    refused = [
        Job.last_error.like(f"{ShopRejected.__name__}: %: HTTP {status}%") for status in KEY_REFUSED
    ]
    held = store_jobs(store.id).where(Job.kind.in_((NOTE_JOB,)), Job.attempts > 0, or_(*refused))
    return run_held_now(session, held, "shop key saved")


def save_credentials(
    session: Session, store: Store, kind: str, values: dict[str, Any], *, actor: str
) -> dict[str, Any]:
    """Store a kind's credentials (PUT /api/v1/admin/credentials/<kind> and the admin
    credentials page); a WooCommerce key given by hand also connects the store.

    Args:
        values: as :func:`connector.vault.service.parse_credentials` returns them.

    Returns:
        The stored set, decrypted (show it :func:`~connector.vault.service.masked`).
    """
    # One change of a store's credentials at a time: two first saves at once would both
    # insert (the second a unique violation), and a key given by hand changes the connection.
    lock_store(session, store)
    previous = credentials_for(session, store, kind)
    stored = put_credentials(session, store, kind, values, actor=actor)
    if kind == "woocommerce":
        # Keys given by hand count as a connection: register the webhooks with them.
        accept_manual_key(session, store, changed=stored != previous, actor=actor)
        # The same key saved again too: the owner may have given it the rights it lacked.
        retry_refused_shop_jobs(session, store)
    elif kind == "brevo":
        from connector.mail.service import send_held_mail

        send_held_mail(session, store)
    return stored


def accept_manual_key(session: Session, store: Store, *, changed: bool, actor: str) -> None:
    """A WooCommerce key given by hand (:func:`save_credentials`) connects the store; the
    same key again changes nothing."""
    connection = connection_of(session, store)
    if connection.status == "connected" and not changed:
        return
    # The shop's key id is not known for a key made by hand.
    _mark_connected(session, store, connection, key_id=None, actor=actor)


def _mark_connected(
    session: Session, store: Store, connection: ShopConnection, *, key_id: str | None, actor: str
) -> None:
    """A new key (from the handshake or by hand): connected, the connection's jobs
    started, audited as a connection or a reconnection."""
    reconnect = connection.status == "connected"
    connection.status = "connected"
    connection.shop_key_id = key_id
    connection.connected_at = utcnow()
    connection.disconnected_at = None
    start_connection_jobs(session, store)
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="shop.reconnected" if reconnect else "shop.connected",
        subject=f"store:{store.public_id}",
        detail={"key_id": key_id},
    )


def start_connection_jobs(session: Session, store: Store) -> None:
    """After a (re)connection: forget the webhooks registered so far, enqueue registering
    new ones, a product sync and a first reconciliation (orders the shop changed in the
    last days get fulfilled); the last two then repeat periodically."""
    session.execute(delete(WebhookRegistration).where(WebhookRegistration.store_id == store.id))
    enqueue(session, REGISTER_JOB, {"store_id": store.id})
    # Products first, so orders of products configured by meta are fulfilled by the first
    # reconciliation (which looks back 7 days).
    enqueue(session, "shop.sync_products", {"store_id": store.id, "periodic": True})
    enqueue(session, "shop.reconcile", {"store_id": store.id, "periodic": True})


def refuse_current_secret(store: Store) -> str:
    """Lost or leaked: the store's secret is refused at once, and so is a secret a
    re-registration still takes. Returns the new one. Connected, the registration then makes
    yet another one before the shop's new webhooks (what it keeps taking meanwhile is this
    new secret, which nobody was ever given). The caller holds :func:`lock_store`."""
    new_secret = store.webhook_secret = random_alphanumeric(40)
    store.previous_webhook_secret = store.previous_secret_until = None
    return new_secret


def replace_webhook_secret(session: Session, store: Store, *, actor: str) -> str | None:
    """A new webhook secret for the store (a lost or leaked one), audited.

    Deliveries signed with the old one are refused from now on. Connected (Keygate holds
    the shop's REST key), Keygate registers its webhooks again (the registration job makes
    the secret the shop gets, new webhooks, and deletes the old ones); returns None. Wired
    by hand, the new secret is returned to be pasted into the shop's webhooks.
    """
    client = shop_client_for(session, store)
    connected = client is not None
    if client is not None:
        # Asked first, with nothing held: registering anew makes the new secret before it
        # asks the shop for webhooks, so a shop that refuses Keygate's key (revoked in
        # WooCommerce, a security plugin) would leave its working webhooks with a secret
        # Keygate no longer takes, and nobody a secret to paste.
        session.commit()
        try:
            client.list_webhooks()
        except ShopError as exc:
            raise ServiceUnavailable(
                f"The shop did not let Keygate in to register its webhooks again ({exc}):"
                " nothing was changed. Connect WooCommerce again, or disconnect and add the"
                " webhooks by hand."
            ) from None
    lock_store(session, store)
    secret: str | None = refuse_current_secret(store)
    if connected:
        session.execute(delete(WebhookRegistration).where(WebhookRegistration.store_id == store.id))
        enqueue(session, REGISTER_JOB, {"store_id": store.id})
        secret = None  # the shop gets the registration's own: none to paste
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="store.webhook_secret_replaced",
        subject=store.public_id,
        detail={"webhooks_registered_again": connected},
    )
    return secret


@dataclass(frozen=True)
class RegistrationResult:
    created: list[str]
    deleted: list[str]


def register_webhooks(
    session: Session, store: Store, client: WooCommerceClient
) -> RegistrationResult:
    """Make the shop's webhooks for this store exactly Keygate's registrations.

    Safe to run twice: webhooks pointing at this store's URL that Keygate does not remember
    (older connections, manual setups, a crashed earlier run) are deleted; each missing
    topic is created. When no registration is left, a fresh secret is made first; the one
    it replaces is still taken (:data:`PREVIOUS_SECRET_GRACE` at most) until the webhooks
    signed with it are deleted, so the shop's deliveries meanwhile are not refused.

    Commits (the caller's work first): the shop is asked outside any transaction, so a slow
    shop holds up none of the store's webhook deliveries, license calls or clicks (a
    PostgreSQL row lock on the store, or SQLite's write lock, would). What it created is
    recorded as it answers; a webhook made with a secret another run replaced meanwhile is
    deleted again (:func:`_create_missing_webhooks`).

    Raises:
        ShopError: the shop refused or could not be reached (what it made before is kept).
    """
    # The key first, with nothing held: a shop that refuses it (a key mistyped by hand,
    # revoked in WooCommerce) must leave the secret its working webhooks sign with alone.
    session.commit()
    client.list_webhooks()
    lock_store(session, store)
    registered = session.scalar(
        select(WebhookRegistration.id).where(WebhookRegistration.store_id == store.id).limit(1)
    )
    now = utcnow()
    in_grace = (
        store.previous_webhook_secret is not None
        and store.previous_secret_until is not None
        and store.previous_secret_until > now
    )
    # Not again while an earlier run's grace lasts: the secret it made is the one nobody
    # was given yet, and the one before it is what the shop's webhooks still sign with.
    if registered is None and not in_grace:
        store.previous_webhook_secret = store.webhook_secret
        store.previous_secret_until = now + PREVIOUS_SECRET_GRACE
        store.webhook_secret = random_alphanumeric(40)
    created = _create_missing_webhooks(session, store, client)
    deleted = _delete_stray_webhooks(session, store, client)
    # Every webhook to this store's URL is one Keygate registered, with the current secret.
    lock_store(session, store)
    store.previous_webhook_secret = store.previous_secret_until = None
    session.commit()
    return RegistrationResult(created=created, deleted=deleted)


def _delete_stray_webhooks(session: Session, store: Store, client: WooCommerceClient) -> list[str]:
    """Delete the shop's webhooks to this store's URL that Keygate has not registered
    (commits; the shop is asked outside any transaction). One made by a run still waiting
    on the shop may go too: the periodic check re-creates a registered webhook that is gone."""
    url = webhook_url(store)
    keep = set(_registered(session, store, WebhookRegistration.shop_webhook_id))
    session.commit()
    deleted: list[str] = []
    for webhook_id in _webhook_ids_to(client, url):
        if webhook_id not in keep:
            client.delete_webhook(webhook_id)
            deleted.append(webhook_id)
    if deleted:
        _audit_registered(session, store, [], deleted)
        session.commit()
    return deleted


def _registered(session: Session, store: Store, column: InstrumentedAttribute[str]) -> list[str]:
    """One column (topic, shop webhook id) of the store's webhook registrations."""
    return list(session.scalars(select(column).where(WebhookRegistration.store_id == store.id)))


def _webhook_ids_to(client: WooCommerceClient, url: str) -> list[str]:
    """The ids of the shop's webhooks that deliver to ``url``."""
    wanted = url.rstrip("/")
    return [
        str(webhook.get("id"))
        for webhook in client.list_webhooks()
        if str(webhook.get("delivery_url") or "").rstrip("/") == wanted
    ]


def check_webhooks(session: Session, store: Store, client: WooCommerceClient) -> list[str]:
    """Re-activate Keygate's webhooks that WooCommerce disabled; re-create missing ones
    (all of them when none is registered, and topics added to :data:`TOPICS` since).

    A webhook the owner *paused* is left paused (that is the owner's choice); one the shop
    *disabled* after failed deliveries is set active again, with an audit entry.

    Commits (the caller's work first): the shop is asked outside any transaction (on SQLite
    one holds the database's write lock: every webhook and license call would wait on the
    shop), and what it answered is recorded after.

    Returns:
        Shop ids of the webhooks re-activated or re-created.
    """
    session.commit()
    # What Keygate had registered before the shop's listing: the listing speaks for these
    # only (another run may register a webhook after it).
    listed = {
        r.id: (r.topic, r.shop_webhook_id)
        for r in session.scalars(
            select(WebhookRegistration).where(WebhookRegistration.store_id == store.id)
        )
    }
    session.commit()
    remote = {str(w.get("id")): w for w in client.list_webhooks()}
    if not listed:
        # Connected but nothing registered (the registration job gave up): register now.
        return register_webhooks(session, store, client).created
    # A topic Keygate registers since this store connected counts as missing too.
    missing = bool(set(TOPICS) - {topic for topic, _ in listed.values()}) or any(
        webhook_id not in remote for _, webhook_id in listed.values()
    )
    disabled = [
        webhook_id
        for _, webhook_id in listed.values()
        if webhook_id in remote and remote[webhook_id].get("status") == "disabled"
    ]
    for webhook_id in disabled:
        client.update_webhook(webhook_id, status="active")
        remote[webhook_id] = {**remote[webhook_id], "status": "active"}
    repaired: list[str] = []
    for registration in session.scalars(
        select(WebhookRegistration).where(WebhookRegistration.store_id == store.id)
    ):
        if listed.get(registration.id, (None, None))[1] != registration.shop_webhook_id:
            # Registered by another run since (made after the listing; on SQLite it may
            # even have the id of a row deleted meanwhile).
            continue
        webhook = remote.get(registration.shop_webhook_id)
        registration.checked_at = utcnow()
        if webhook is None:
            session.delete(registration)  # re-created below
            continue
        registration.status = str(webhook.get("status") or "") or registration.status
        delivery_url = webhook.get("delivery_url")
        if isinstance(delivery_url, str) and delivery_url:
            if not same_address(delivery_url, webhook_url(store)) and (
                registration.delivery_url is None
                or not same_address(delivery_url, registration.delivery_url)
            ):
                log.warning(
                    "store %s: webhook %s (%s) delivers to %s, not to %s (KEYGATE_BASE_URL):"
                    " connect the shop again to register it at this address",
                    store.public_id,
                    registration.shop_webhook_id,
                    registration.topic,
                    delivery_url,
                    webhook_url(store),
                )
            registration.delivery_url = delivery_url[:2000]
        if registration.shop_webhook_id in disabled:
            repaired.append(registration.shop_webhook_id)
            record_audit(
                session,
                store_id=store.id,
                actor="system",
                action="shop.webhook_reactivated",
                subject=f"webhook:{registration.shop_webhook_id}",
                detail={"topic": registration.topic},
            )
            log.warning(
                "store %s: webhook %s (%s) was disabled by the shop; re-activated",
                store.public_id,
                registration.shop_webhook_id,
                registration.topic,
            )
    session.flush()
    if missing:
        repaired.extend(_create_missing_webhooks(session, store, client))
    session.flush()
    return repaired


def _create_missing_webhooks(
    session: Session, store: Store, client: WooCommerceClient
) -> list[str]:
    """Create the webhook of each topic with no registration (commits): the shop is asked
    outside any transaction, what it created is recorded after, even when it fails
    half-way (then the error is raised). A topic another run registered meanwhile keeps its
    webhook, and a secret another run replaced meanwhile (a reconnection), or a disconnect
    meanwhile, makes every webhook made here stale: those are deleted again, never
    registered."""
    registered = set(_registered(session, store, WebhookRegistration.topic))
    url, secret = webhook_url(store), store.webhook_secret
    disconnected_at = connection_of(session, store).disconnected_at
    session.commit()
    made: dict[str, str] = {}
    failure: ShopError | None = None
    for topic in TOPICS:
        if topic in registered:
            continue
        try:
            webhook = client.create_webhook(
                name=f"Keygate {topic}", topic=topic, delivery_url=url, secret=secret
            )
        except ShopError as exc:
            failure = exc
            break
        made[topic] = str(webhook["id"])
    lock_row(session, Store, store.id)  # and the secret read again
    registered = set(_registered(session, store, WebhookRegistration.topic))
    disconnected = connection_of(session, store).disconnected_at != disconnected_at
    if store.webhook_secret != secret or disconnected:
        # Signed with a secret no delivery is checked against now, or the owner disconnected
        # meanwhile (the disconnect saw no registration of these): none is kept.
        registered = set(made)
    created = [webhook_id for topic, webhook_id in made.items() if topic not in registered]
    for topic, webhook_id in made.items():
        if topic not in registered:
            session.add(
                WebhookRegistration(
                    store_id=store.id,
                    topic=topic,
                    shop_webhook_id=webhook_id,
                    status="active",
                    checked_at=utcnow(),
                    delivery_url=url,
                )
            )
    if created:
        _audit_registered(session, store, created, [])
    session.commit()
    for webhook_id in set(made.values()) - set(created):
        client.delete_webhook(webhook_id)
    if failure is not None:
        raise failure
    return created


@dataclass(frozen=True)
class Disconnection:
    deleted: list[str]  # shop ids of the webhooks deleted in the shop
    left: list[str]  # ... and of those left there: the shop no longer takes Keygate's key


def disconnect(
    session: Session, store: Store, *, actor: str, shop_gone: bool = False
) -> Disconnection:
    """Delete Keygate's webhooks in the shop and forget the shop's key.

    Commits (the caller's work first): the shop is asked outside any transaction. A shop
    that refuses the key (401/403: the owner revoked it in WooCommerce) cannot be asked to
    delete anything: the key is forgotten all the same, and the webhooks left in the shop
    are named for the owner to delete there. ``shop_gone`` (the owner says the shop is
    gone for good: a closed site, a lapsed domain): a shop that cannot be reached, or
    refuses, is treated the same way.

    Raises:
        ServiceUnavailable: the shop could not be reached (and not ``shop_gone``); nothing
            changed here.
    """
    client = shop_client_for(session, store)
    deleted: list[str] = []
    left: list[str] = []
    asked: set[str] = set()
    # Keygate's webhooks the shop has that no registration remembers (a reconnection forgets
    # them until its registration, still waiting, deletes them): deleted in the first round.
    try:
        unregistered = _shop_webhooks_to(session, store, client) if client is not None else []
    except ServiceUnavailable:
        if not shop_gone:
            raise
        unregistered, left = [], [*_registered(session, store, WebhookRegistration.shop_webhook_id)]
        asked.update(left)
    for _ in range(DISCONNECT_ROUNDS):
        # A webhook check running meanwhile (the key is still here) may register a webhook
        # again: each round deletes what was registered since the last one.
        lock_store(session, store)
        registered = _registered(session, store, WebhookRegistration.shop_webhook_id)
        webhook_ids = list(dict.fromkeys(w for w in registered + unregistered if w not in asked))
        if not webhook_ids or client is None:
            break
        session.commit()  # nothing held while the shop answers
        asked.update(webhook_ids)
        if left:
            left.extend(webhook_ids)  # the shop refuses the key: nothing can be deleted
            continue
        try:
            for webhook_id in webhook_ids:
                client.delete_webhook(webhook_id)
                deleted.append(webhook_id)
        except ShopRejected as exc:
            if exc.status not in KEY_REFUSED and not shop_gone:
                raise ServiceUnavailable(
                    f"The shop refused to delete Keygate's webhooks ({exc}): nothing changed."
                    f" {TRY_AGAIN_OR_FORGET}"
                ) from None
            left.extend(w for w in webhook_ids if w not in deleted)
        except ShopError as exc:
            if not shop_gone:
                raise ServiceUnavailable(
                    f"The shop could not be reached to delete its webhooks ({exc}): nothing"
                    f" changed. {TRY_AGAIN_OR_FORGET}"
                ) from None
            left.extend(w for w in webhook_ids if w not in deleted)
    lock_store(session, store)  # held from here to the caller's commit
    left.extend(
        webhook_id
        for webhook_id in _registered(session, store, WebhookRegistration.shop_webhook_id)
        if webhook_id not in asked and client is not None
    )
    session.execute(delete(WebhookRegistration).where(WebhookRegistration.store_id == store.id))
    store.previous_webhook_secret = store.previous_secret_until = None
    delete_credentials(session, store, "woocommerce", actor=actor)
    connection = connection_of(session, store)
    connection.status = "disconnected"
    connection.disconnected_at = utcnow()
    connection.shop_key_id = None
    session.flush()
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="shop.disconnected",
        subject=f"store:{store.public_id}",
        detail={"webhooks_deleted": deleted, "webhooks_left": left, "shop_gone": shop_gone},
    )
    return Disconnection(deleted=deleted, left=left)


def _shop_webhooks_to(session: Session, store: Store, client: WooCommerceClient) -> list[str]:
    """The ids of the shop's webhooks to this store's URL (commits: the shop is asked outside
    any transaction); none when the shop refuses the key (nothing can be deleted then).

    Raises:
        ServiceUnavailable: the shop could not be reached, or refused otherwise.
    """
    url = webhook_url(store)
    session.commit()
    try:
        return _webhook_ids_to(client, url)
    except ShopRejected as exc:
        if exc.status in KEY_REFUSED:
            return []
        raise ServiceUnavailable(
            f"The shop refused to list Keygate's webhooks ({exc}): nothing changed."
            f" {TRY_AGAIN_OR_FORGET}"
        ) from None
    except ShopError as exc:
        raise ServiceUnavailable(
            f"The shop could not be reached to delete its webhooks ({exc}): nothing changed."
            f" {TRY_AGAIN_OR_FORGET}"
        ) from None


def _audit_registered(
    session: Session, store: Store, created: list[str], deleted: list[str]
) -> None:
    record_audit(
        session,
        store_id=store.id,
        actor="system",
        action="shop.webhooks_registered",
        subject=f"store:{store.public_id}",
        detail={"created": created, "deleted": deleted},
    )

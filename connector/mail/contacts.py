"""Brevo contacts: buyers pushed into the store's list, and taken out of it again.

**Consent.** With ``consent_meta_key`` in the store's Brevo credentials, a buyer is pushed
only when their order's meta has that key ticked (``yes``, ``1``, ``true``, ``on``). The
webhook path reads it when it issues (:func:`consent_to_push`) and the job chain carries only
that boolean: no consent record, no meta, is stored. Without the key every buyer is pushed
(the list must then be one the owner may use without consent, e.g. for service messages).

**Passing it on.** Keygate records on the order which list it pushes the buyer into, and
which address (encrypted), before it asks Brevo: a push whose answer was lost counts as done.
When the customer is erased, or a later delivery of the order no longer has the consent
ticked, that address is taken out of that list: a :class:`~connector.models.BrevoRemoval` row
holds it encrypted, and job ``brevo.remove_contact`` (its id only) removes it and deletes the
row. A Brevo outage only delays it, like mail. A later delivery with the consent ticked
again, or ticked for the first time after the order was issued, pushes the buyer.

**Corrected addresses.** The list follows the order: when the shop corrects the address of an
order whose buyer was pushed, the address pushed is taken out (it may be a typo, someone
else's, and keeping it would keep an address the order no longer names) and, while the order
stands with the consent, the corrected one is pushed (:func:`pass_correction_on`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import db, lock_row
from connector.integrations.brevo import BrevoConfig, push_contact, remove_from_list
from connector.jobs import RetryLater, enqueue, handles
from connector.models import BrevoRemoval, DownloadGrant, Job, License, Order, Store
from connector.orders.jobs import ISSUED_JOB  # its follow-ups include the push
from connector.stores import hold_live_store
from plugin.shop import ShopOrder

PUSH_JOB = "brevo.push_contact"
REMOVE_JOB = "brevo.remove_contact"
# Why a job of a store's Brevo mail or list waits (the text of its RetryLater): saving the
# credentials sends what waits (connector.mail.service.send_held_mail).
NO_CREDENTIALS = "no Brevo credentials for this store"
# Order.brevo_list_id of buyers pushed before the list was recorded: the store's list.
LIST_NOT_RECORDED = 0
# The audit action of a removal, by its reason.
REMOVAL_ACTIONS = {
    "erasure": "customer.erased_in_brevo",
    "withdrawal": "customer.consent_withdrawn_in_brevo",
    "correction": "customer.address_corrected_in_brevo",
    "list_changed": "customer.moved_to_another_brevo_list",
}


def brevo_config_for(session: Session, store: Store) -> BrevoConfig | None:
    """The store's Brevo settings from the vault, or None when it has none."""
    from connector.vault.service import credentials_for

    values = credentials_for(session, store, "brevo")
    return BrevoConfig.from_credentials(values) if values else None


def consent_to_push(session: Session, store: Store, shop_order: ShopOrder) -> bool:
    """Whether the order, as the shop reports it now, carries the buyer's consent to the
    store's Brevo list: its consent meta key ticked. False when the store names no such key
    (the push job then does not ask) or has no Brevo credentials."""
    config = brevo_config_for(session, store)
    if config is None or config.consent_meta_key is None:
        return False
    return shop_order.meta_flag(config.consent_meta_key)


def _list_to_leave(config: BrevoConfig | None, recorded: int) -> int | None:
    if recorded != LIST_NOT_RECORDED:
        return recorded
    return config.list_id if config is not None else None


def _pushed_address(order: Order) -> str | None:
    """The address Keygate pushed the order's buyer with: the one recorded, or the order's
    own for an order pushed before addresses were recorded (migration 0020)."""
    return order.brevo_email if order.brevo_email is not None else order.email


def _leave_list(session: Session, store: Store, order: Order, *, reason: str) -> None:
    """Queue taking the address the order pushed out of the list it recorded (the store's,
    for migration 0011's mark), and forget the push."""
    pushed = _pushed_address(order)
    if order.brevo_list_id is not None and pushed is not None:
        leave = _list_to_leave(brevo_config_for(session, store), order.brevo_list_id)
        if leave is not None:  # else no list is known to take it out of: the owner's, in Brevo
            subject = f"order:{order.shop_order_id}"
            queue_removal(session, store.id, leave, pushed, reason=reason, subject=subject)
    _forget_push(order)


def _forget_push(order: Order) -> None:
    order.brevo_list_id = None
    order.brevo_email = None


def remember_pushed_address(order: Order) -> None:
    """Before a delivery may change the order's address: an order pushed before addresses
    were recorded (migration 0020) takes the address it has as the one pushed, so that the
    erasure, withdrawal or correction after it reaches that address, not the new one."""
    if order.brevo_list_id is not None and order.brevo_email is None and not order.is_erased:
        order.brevo_email = order.email


def queue_removal(
    session: Session, store_id: int, list_id: int, email: str, *, reason: str, subject: str | None
) -> None:
    """Queue taking ``email`` out of Brevo list ``list_id`` (the address kept encrypted
    until it is done)."""
    removal = BrevoRemoval(
        store_id=store_id, list_id=list_id, email=email, reason=reason, subject=subject
    )
    session.add(removal)
    session.flush()
    enqueue(session, REMOVE_JOB, {"removal_id": removal.id, "store_id": store_id})


def pass_consent_on(
    session: Session,
    store: Store,
    order: Order,
    shop_order: ShopOrder,
    *,
    issuing: bool,
    came_back: bool = False,
) -> None:
    """A delivery of an order, as its consent and standing go. Consent withdrawn (a store
    that asks for it): a push still waiting must not happen (the order remembers the
    withdrawal), and a buyer Keygate pushed is taken out of the list again. The buyer is
    pushed when the order has them in no list and the consent was given on an order issued
    without it (the owner ticked it on the buyer's word, or the buyer gave it again), or the
    order came back: paid again after a refund or cancellation (the issuance's push skipped
    it meanwhile, or its consent came while it was refunded), or with an address again after
    the shop had left it none (which took the buyer out).

    ``issuing``: this delivery issues keys or links, whose follow-ups push the buyer as it
    says. ``came_back``: this delivery paid the order again or gave it an address again. A
    deletion is no withdrawal (its payload carries no meta at all). An order migration 0011
    marked (its buyer perhaps pushed before lists were recorded, never known to have
    consented on it) takes nobody out: they may be in the list by another order's consent;
    only an erasure takes such a buyer out.
    """
    if shop_order.deleted or order.mail_address is None:
        return
    config = brevo_config_for(session, store)
    if config is None:
        return
    consent_key = config.consent_meta_key
    asks_consent = consent_key is not None
    was_withdrawn = order.brevo_consent_withdrawn
    if consent_key is not None:
        order.brevo_consent_withdrawn = not shop_order.meta_flag(consent_key)
    if not order.brevo_consent_withdrawn:
        if (
            ((asks_consent and was_withdrawn) or came_back)
            and not issuing
            and order.brevo_list_id is None
            and not order.is_revoking
            and _was_issued(session, order)
            and not _push_waiting(session, order, consented=asks_consent)
        ):
            enqueue(session, PUSH_JOB, {"order_id": order.id, "brevo_consent": asks_consent})
        return
    if order.brevo_list_id not in (None, LIST_NOT_RECORDED):
        _leave_list(session, store, order, reason="withdrawal")


def pass_correction_on(
    session: Session, store: Store, order: Order, shop_order: ShopOrder, *, issuing: bool
) -> None:
    """A delivery that changed the address of an order whose buyer Keygate pushed (after
    :func:`pass_consent_on`, which takes a withdrawing buyer out). The list follows the
    order: the address pushed is taken out (audited ``customer.address_corrected_in_brevo``
    under the order) and, while the order stands and its consent does, the corrected one is
    pushed, once: not when this delivery's issuance pushes it, nor when a push waits (it
    reads the address when it runs).

    An order migration 0011 marked (pushed into the store's list before lists were
    recorded) has its old address taken out of the store's list too: kept, it would sit on
    an order that no longer names it, out of reach of its owner's export and erasure. Should
    another order still have that address in the list, the removal leaves it there
    (:func:`_holding_order`).
    """
    if order.brevo_list_id is None or order.brevo_email in (None, order.mail_address):
        return
    _leave_list(session, store, order, reason="correction")
    if (
        order.mail_address is None
        or order.brevo_consent_withdrawn
        or order.is_revoking
        or issuing
        or _push_waiting(session, order, running_push_counts=False)
    ):
        return
    consent = consent_to_push(session, store, shop_order)
    enqueue(session, PUSH_JOB, {"order_id": order.id, "brevo_consent": consent})


def _was_issued(session: Session, order: Order) -> bool:
    """Keygate issued the order a license or a download link (its buyer is a customer)."""
    for model in (License, DownloadGrant):
        if session.scalars(select(model.id).where(model.order_id == order.id).limit(1)).first():
            return True
    return False


def _push_waiting(
    session: Session, order: Order, *, running_push_counts: bool = True, consented: bool = False
) -> bool:
    """A push of the order's buyer is on its way: its job, or an issuance with the consent
    whose follow-ups start one, waits or runs (the push reads the consent when it runs).

    ``running_push_counts``: False when a push already running has read the address it
    sends (a correction needs another push, unless one waits). ``consented``: only a push
    carrying the consent counts (a store that asks for it: one made without it pushes
    nobody)."""
    push_statuses = ("pending", "running") if running_push_counts else ("pending",)
    push = and_(Job.kind == PUSH_JOB, Job.status.in_(push_statuses))
    if consented:
        push = and_(push, Job.payload["brevo_consent"].as_boolean())
    waiting = select(Job.id).where(
        Job.payload["order_id"].as_integer() == order.id,
        or_(
            push,
            and_(
                Job.kind == ISSUED_JOB,
                Job.status.in_(("pending", "running")),
                Job.payload["brevo_consent"].as_boolean(),
            ),
        ),
    )
    return session.scalars(waiting.limit(1)).first() is not None


def pass_erasure_on(
    session: Session, store: Store, orders: list[Order], subject: str
) -> str | None:
    """Queue taking an erased customer out of the Brevo lists Keygate pushed them into.

    Call before the orders' addresses are pseudonymised. Takes the orders' row locks, as a
    push recording itself does: a push finishing now is either seen here or sees the erasure
    (and queues the removal itself). ``FOR NO KEY UPDATE``, as the erasure's other locks of
    the orders (see :func:`connector.downloads.privacy.erase_downloads`).

    Returns:
        ``queued``; ``no_brevo_credentials`` when Keygate pushed the customer but the store
        has no Brevo credentials any more, ``list_unknown`` when it pushed them before it
        recorded lists and the store has no list now (either way the owner must remove them
        by hand); None when Keygate never pushed them.
    """
    if not orders:
        return None
    pushed = list(
        session.scalars(
            select(Order)
            .where(Order.id.in_([o.id for o in orders]))
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
    )
    pushed = [o for o in pushed if o.brevo_list_id is not None and _pushed_address(o) is not None]
    if not pushed:
        return None
    config = brevo_config_for(session, store)
    # The address each order pushed (the shop may have corrected the order's since): one
    # removal per list and address, however many orders pushed it.
    to_remove: set[tuple[int, str]] = set()
    for order in pushed:
        list_id = _list_to_leave(config, order.brevo_list_id or LIST_NOT_RECORDED)
        address = _pushed_address(order)
        if list_id is not None and address is not None:
            to_remove.add((list_id, address))
        _forget_push(order)  # the removal (or the owner, told so) takes over
    if config is None:
        return "no_brevo_credentials"
    if not to_remove:
        return "list_unknown"  # pushed before lists were recorded, and the store has none now
    for list_id, email in sorted(to_remove):
        queue_removal(session, store.id, list_id, email, reason="erasure", subject=subject)
    return "queued"


def _host() -> str:
    from connector import get_settings

    return get_settings().brevo_api_host


@handles(PUSH_JOB)
def push_buyer_to_brevo(payload: dict[str, Any]) -> None:
    """Create or update the buyer as a Brevo contact in the store's list, when it has one
    and, if it asks for consent, the order carried it (``brevo_consent`` in the payload).

    The list and the address sent are recorded on the order before Brevo is asked, and
    committed: an erasure, a withdrawal or a correction of the address from then on takes
    that address out again, even when Brevo took the contact but its answer was lost (one
    that finds the buyer not in the list is done all the same).
    No transaction is open while Brevo answers (on SQLite it would hold the write lock).
    """
    session = db.session
    order = session.get(Order, payload["order_id"])
    if order is None or order.mail_address is None:
        return
    store = session.get(Store, order.store_id)
    config = brevo_config_for(session, store) if store is not None else None
    if store is None or config is None or config.list_id is None:
        return  # pushing contacts is optional: only for stores that chose a list
    if config.consent_meta_key is not None and payload.get("brevo_consent") is not True:
        return  # no consent on the order when it was issued
    hold_live_store(session, store)  # before the order's lock, as a deletion takes them
    order = lock_row(session, Order, order.id)
    if order.is_erased or order.mail_address is None or order.brevo_consent_withdrawn:
        return  # erased, or consent withdrawn, since
    if order.is_revoking:
        return  # refunded, cancelled or deleted before the push ran: no customer of the store
    order_id, list_id, email = order.id, config.list_id, order.mail_address
    first, _, last = (order.name or "").partition(" ")
    if order.brevo_list_id not in (None, LIST_NOT_RECORDED, list_id):
        # The owner chose another list since: the order keeps one, so that its erasure or
        # withdrawal reaches every list Keygate put the buyer in.
        _leave_list(session, store, order, reason="list_changed")
    order.brevo_list_id, order.brevo_email = list_id, email
    host = _host()
    session.commit()
    push_contact(config, host, email, first or None, last or None)
    _record_push(session, store.id, order_id, list_id, email)


def _record_push(session: Session, store_id: int, order_id: int, list_id: int, email: str) -> None:
    """After the push, under the order's row lock (which an erasure takes too). An erasure,
    withdrawal or correction of the address that landed while Brevo answered queued a
    removal of the address sent; should it have run before the contact was added (another
    worker), another is queued here. A correction's push of the new address records itself."""
    hold_live_store(session, store_id)  # before the order's lock, as a deletion takes them
    order = lock_row(session, Order, order_id)
    if order.is_erased:
        reason, subject = "erasure", (order.email or "").partition("@")[0] or None
    elif order.brevo_consent_withdrawn:
        reason, subject = "withdrawal", f"order:{order.shop_order_id}"
    elif order.email != email:
        reason, subject = "correction", f"order:{order.shop_order_id}"
    else:
        order.brevo_list_id, order.brevo_email = list_id, email
        return
    # Waiting: its job not started yet (one running may have asked Brevo before the contact
    # was added).
    waiting = (
        select(BrevoRemoval.id)
        .join(Job, Job.payload["removal_id"].as_integer() == BrevoRemoval.id)
        .where(
            BrevoRemoval.store_id == store_id,
            BrevoRemoval.list_id == list_id,
            BrevoRemoval.subject == subject,
            Job.kind == REMOVE_JOB,
            Job.status == "pending",
        )
    )
    if session.scalars(waiting.limit(1)).first() is None:
        queue_removal(session, store_id, list_id, email, reason=reason, subject=subject)


def _holding_order(session: Session, removal: BrevoRemoval, store_list: int | None) -> Order | None:
    """An order of the store, not erased, that has the removal's address in its list now:
    the buyer gave the consent again since the withdrawal (or the shop put the address back)
    and was pushed while the removal waited, or another order of theirs with the consent
    pushed them. Taking the address out then would undo a push the buyer asked for."""
    lists = [removal.list_id]
    if store_list == removal.list_id:
        lists.append(LIST_NOT_RECORDED)  # migration 0011's mark: the store's list
    orders = session.scalars(
        select(Order).where(
            Order.store_id == removal.store_id,
            Order.email == removal.email,
            Order.brevo_list_id.in_(lists),
            Order.erased_at.is_(None),
        )
    )
    return next((order for order in orders if _pushed_address(order) == removal.email), None)


@handles(REMOVE_JOB)
def remove_contact_from_brevo_list(payload: dict[str, Any]) -> None:
    """Take an address out of a store's Brevo list, audit it, forget the address. An address
    an order has put in the list again since is left there (outcome ``kept``).

    Raises:
        RetryLater: Brevo is down, or the store has no Brevo credentials now (the removal
            waits for them; after the last attempt the owner sees ``job.dead``).
    """
    session = db.session
    removal = session.get(BrevoRemoval, payload["removal_id"])
    if removal is None:
        return  # done by an earlier run
    store = session.get(Store, removal.store_id)
    config = brevo_config_for(session, store) if store is not None else None
    if config is None:
        raise RetryLater(NO_CREDENTIALS)
    host = _host()
    kept = _holding_order(session, removal, config.list_id) is not None
    session.commit()  # no transaction open while Brevo answers (the row stays loaded)
    outcome = "kept" if kept else remove_from_list(config, host, removal.list_id, removal.email)
    hold_live_store(session, removal.store_id)
    holder = None if kept else _holding_order(session, removal, config.list_id)
    if holder is not None:
        # Pushed while Brevo took the address out (the consent given again just then): that
        # push was undone, so it is made again.
        enqueue(session, PUSH_JOB, {"order_id": holder.id, "brevo_consent": True})
    record_audit(
        session,
        store_id=removal.store_id,
        actor="keygate",
        action=REMOVAL_ACTIONS.get(removal.reason, "customer.removed_in_brevo"),
        subject=removal.subject,
        detail={"list_id": removal.list_id, "outcome": outcome},
    )
    session.execute(delete(BrevoRemoval).where(BrevoRemoval.id == removal.id))

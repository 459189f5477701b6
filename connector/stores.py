"""Stores: creating one, finding one by its public id or by its admin API token.

`keygate store add` and the admin page "Add a store" both create through :func:`create_store`
and show :func:`setup_details` once.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.errors import Conflict, NotFound, ValidationFailed
from connector.licensing.keys import KeyFormat
from connector.models import Store
from connector.validation import is_control_character
from connector.vault.crypto import keyed_hash

API_TOKEN_HASH = "store-api-token"  # noqa: S105 - a hash purpose label
_ALPHANUMERIC = string.ascii_letters + string.digits
MAX_URL_LENGTH = 500  # the columns' lengths
MAX_NAME_LENGTH = 200
MAX_PREFIX_LENGTH = 16


@dataclass(frozen=True)
class NewStore:
    """What `keygate store add` prints once: the token and secret are not shown again."""

    store: Store
    api_token: str = field(repr=False)
    webhook_secret: str = field(repr=False)


def random_alphanumeric(length: int) -> str:
    # WooCommerce HTML-entity-decodes webhook secrets before hashing: keep them alphanumeric.
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def normalize_store_url(url: str) -> str:
    url = url.strip()
    problem = "the store URL must be an http(s) URL such as https://shop.example"
    # No spaces or control characters inside: the wc-auth link and webhook checks are
    # built from it. Too long would not fit the column (a 500 on PostgreSQL).
    if len(url) > MAX_URL_LENGTH:
        raise ValidationFailed(
            f"the store URL is longer than {MAX_URL_LENGTH} characters", field="url"
        )
    if any(c.isspace() or is_control_character(c) for c in url):
        raise ValidationFailed(problem, field="url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is no number or past 65535
    except ValueError:  # an unbalanced [ of an IPv6 host, a port out of range
        raise ValidationFailed(problem, field="url") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValidationFailed(problem, field="url")
    if parts.username is not None or parts.password is not None:
        # Kept and shown in clear on the admin pages, and sent along in every link.
        raise ValidationFailed("the store URL must not carry a user name or password", field="url")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        # The wc-auth and REST paths are appended to it: a query would swallow them.
        raise ValidationFailed(
            "the store URL must be the shop's address without ? or #", field="url"
        )
    # A scheme typed "Https" (a phone's keyboard) is https: kept lower-case, as the REST
    # client and every comparison of addresses take it.
    return parts.scheme + url[len(parts.scheme) :].rstrip("/")


def key_format(prefix: str = "", groups: int = 4, group_length: int = 5) -> KeyFormat:
    """The license key format of a new store, as the owner typed it (prefix upper-cased).

    Raises:
        ValidationFailed: out of range (see :class:`KeyFormat`), or a prefix too long to
            store (checked here, not in KeyFormat: stores made before keep theirs).
    """
    prefix = prefix.strip().upper()
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValidationFailed(
            f"a key prefix is at most {MAX_PREFIX_LENGTH} characters", field="key_prefix"
        )
    try:
        return KeyFormat(prefix, groups, group_length)
    except ValueError as exc:  # KeyFormat's messages name the rule, never a secret
        # The prefix's own rule names its field; the groups and their length go together.
        field = "key_prefix" if "prefix" in str(exc) else "key_groups"
        raise ValidationFailed(str(exc), field=field) from None


def _store_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValidationFailed("a store needs a name", field="name")
    # Buyers read it in mails: never cut short unsaid, nor broken over lines.
    if len(name) > MAX_NAME_LENGTH or any(is_control_character(c) for c in name):
        raise ValidationFailed(
            f"a store name is at most {MAX_NAME_LENGTH} characters, on one line (no tabs or"
            " control characters)",
            field="name",
        )
    return name


def _store_at(session: Session, url: str, *, besides: int | None = None) -> str | None:
    """The store_id of the live store for the shop at ``url`` (other than ``besides``)."""
    query = select(Store.public_id).where(
        func.lower(Store.url) == url.lower(), Store.deleted_at.is_(None)
    )
    if besides is not None:
        query = query.where(Store.id != besides)
    return session.scalars(query).first()


def _api_token() -> str:
    return "kg_" + secrets.token_urlsafe(32)


def create_store(
    session: Session,
    name: str,
    url: str,
    key_format: KeyFormat | None = None,
    *,
    actor: str = "cli",
) -> NewStore:
    """Register a shop (audited as ``actor``); returns its one-time api token and webhook
    secret.

    Raises:
        ValidationFailed: an empty name, one too long or not on one line, or a URL that is
            not http(s).
        Conflict: a store for this shop's URL exists (a form sent again by a reload would
            otherwise add the shop twice, with two webhook secrets).
    """
    key_format = key_format or KeyFormat()
    name = _store_name(name)
    url = normalize_store_url(url)
    existing = _store_at(session, url)
    if existing is not None:
        raise Conflict(
            f"the shop at {url.lower()} is a store already (store_id {existing}); a second store"
            " for it would have its own webhook secret and keys: delete that one first",
            field="url",
        )
    api_token = _api_token()
    webhook_secret = random_alphanumeric(40)
    store = Store(
        public_id=secrets.token_hex(8),
        name=name,
        url=url,
        webhook_secret=webhook_secret,
        api_token_hash=keyed_hash(API_TOKEN_HASH, api_token),
        key_prefix=key_format.prefix,
        key_groups=key_format.groups,
        key_group_length=key_format.group_length,
    )
    session.add(store)
    session.flush()
    record_audit(
        session, store_id=store.id, actor=actor, action="store.created", subject=store.public_id
    )
    return NewStore(store=store, api_token=api_token, webhook_secret=webhook_secret)


def change_store(session: Session, store: Store, name: str, url: str, *, actor: str) -> bool:
    """Correct the store's name (buyers read it in mails) or the shop's address (a typo, a
    ``www.`` or https the shop redirects to, a move to another domain), audited.

    Returns whether the address changed. Keys, tokens, secrets and the store id stay.

    Raises:
        ValidationFailed: as :func:`create_store` would refuse the name or the URL.
        Conflict: another store is for the shop at this URL.
    """
    name = _store_name(name)
    url = normalize_store_url(url)
    hold_live_store(session, store)
    existing = _store_at(session, url, besides=store.id)
    if existing is not None:
        raise Conflict(
            f"the shop at {url.lower()} is another store already (store_id {existing}):"
            " delete that one first, or keep this store's URL",
            field="url",
        )
    if url != store.url and not _same_shop(store.url, url) and _connected(session, store):
        raise Conflict(
            f"the shop is connected: Keygate sends its key only to the address it was given"
            f" at ({store.url}), with or without www. To move the store to another address,"
            " disconnect the shop, change the URL, then connect again",
            field="url",
        )
    changed = {
        field: [before, after]
        for field, before, after in (("name", store.name, name), ("url", store.url, url))
        if before != after
    }
    if changed:
        store.name, store.url = name, url
        record_audit(
            session,
            store_id=store.id,
            actor=actor,
            action="store.changed",
            subject=store.public_id,
            detail=changed,
        )
    return "url" in changed


def _same_shop(before: str, after: str) -> bool:
    """Whether two URLs reach the same shop's server as far as its key is concerned: the
    host with or without ``www.``, the same port, never https given up for http."""

    def where(url: str) -> tuple[str, int | None, str]:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().removeprefix("www.")
        return host, parts.port or (443 if parts.scheme == "https" else 80), parts.scheme

    old_host, old_port, old_scheme = where(before)
    new_host, new_port, new_scheme = where(after)
    if (old_scheme, new_scheme) == ("http", "https"):  # the shop moved to https
        return old_host == new_host and {old_port, new_port} <= {80, 443}
    return (old_host, old_port, old_scheme) == (new_host, new_port, new_scheme)


def _connected(session: Session, store: Store) -> bool:
    """Whether Keygate holds the shop's WooCommerce key (sent with every request to it)."""
    from connector.vault.service import credentials_for

    return credentials_for(session, store, "woocommerce") is not None


def setup_details(created: NewStore) -> dict[str, str]:
    """What the owner copies once after creating a store (the CLI prints it, the admin page
    shows it): the secret and token are not kept in the clear anywhere after this."""
    from connector.downloads.storage import own_area
    from connector.vault.connection import webhook_url

    return {
        "store_id": created.store.public_id,
        "webhook_url": webhook_url(created.store),
        "webhook_secret": created.webhook_secret,
        "api_token": created.api_token,
        "storage_area": own_area(created.store.id),
    }


def find_store(session: Session, public_id: str) -> Store | None:
    if len(public_id) > 32:
        return None
    return session.execute(
        select(Store).where(Store.public_id == public_id, Store.deleted_at.is_(None))
    ).scalar_one_or_none()


def store_for_api_token(session: Session, token: str) -> Store | None:
    if not token or len(token) > 200:
        return None
    return session.execute(
        select(Store).where(
            Store.api_token_hash == keyed_hash(API_TOKEN_HASH, token), Store.deleted_at.is_(None)
        )
    ).scalar_one_or_none()


class StoreDeleted(NotFound):
    """The store was deleted while this request or job was working for it."""


def hold_live_store(session: Session, store: Store | int, *, exclusive: bool = False) -> None:
    """Hold ``store`` against a deletion until the transaction ends; every writer of rows
    under a store calls this first, so none outlives a deletion.

    PostgreSQL: ``FOR KEY SHARE``, which a deletion's ``FOR UPDATE`` waits for, and which
    waits for a deletion under way and then finds the store gone (the lock re-reads the
    row). ``exclusive``: ``FOR UPDATE`` instead, which also serialises the store's
    connection changes; a transaction that takes both takes this one first (upgrading a
    shared lock deadlocks with another doing the same). SQLite's writers take turns anyway.
    Taken before any lock on one of the store's orders, licenses or grants (a deletion
    takes the store first, then those).

    Raises:
        StoreDeleted: it was deleted meanwhile.
    """
    store_id = store if isinstance(store, int) else store.id
    query = select(Store.id).where(Store.id == store_id, Store.deleted_at.is_(None))
    if (
        session.execute(query.with_for_update(read=not exclusive, key_share=not exclusive)).scalar()
        is None
    ):
        raise StoreDeleted("No store has this id.")


def replace_api_token(session: Session, store: Store, *, actor: str) -> str:
    """Give the store a new admin API token (a lost or leaked one stops working at once).

    Returns the token; like the first one, only its keyed hash is kept.
    """
    api_token = _api_token()
    store.api_token_hash = keyed_hash(API_TOKEN_HASH, api_token)
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="store.api_token_replaced",
        subject=store.public_id,
    )
    return api_token

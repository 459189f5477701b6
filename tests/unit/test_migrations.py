"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask import Flask
from sqlalchemy import inspect, text

from connector.db import Base, db, make_engine
from connector.migrate import downgrade, upgrade
from tests.factories import WebhookSender, line_item, wc_order

# Store 1, as the migrations' data tests insert it.
STORE_ONE = (
    "INSERT INTO stores (id, public_id, name, url, platform, webhook_secret, api_token_hash,"
    " key_prefix, key_groups, key_group_length, created_at) VALUES (1, 's1', 'Shop',"
    " 'https://shop.example', 'woocommerce', 'x', 'h', '', 4, 5, :now)"
)


def test_migrations_match_the_models(app: Flask) -> None:
    with app.app_context(), db.get_engine().connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_0011_marks_orders_whose_buyer_was_pushed_before_lists_were_recorded(
    tmp_path: Path,
) -> None:
    """Upgrading: orders of a store with Brevo credentials (their push jobs may be purged
    already) and orders with a finished contact push are marked as pushed into the store's
    list (0), so an erasure takes the buyer out of it; others are not."""
    engine = make_engine(f"sqlite:///{tmp_path / 'keygate.db'}")
    upgrade(engine, "0010")
    now = "2026-11-20 12:00:00.000000"
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO stores (id, public_id, name, url, platform, webhook_secret,"
                " api_token_hash, key_prefix, key_groups, key_group_length, created_at)"
                " VALUES (1, 's1', 'Shop', 'https://shop.example', 'woocommerce', 'x', 'h',"
                " '', 4, 5, :now)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO stores (id, public_id, name, url, platform, webhook_secret,"
                " api_token_hash, key_prefix, key_groups, key_group_length, created_at)"
                " VALUES (2, 's2', 'Brevo shop', 'https://b.example', 'woocommerce', 'x', 'h2',"
                " '', 4, 5, :now)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO credentials (store_id, kind, data, created_at, updated_at)"
                " VALUES (2, 'brevo', 'token', :now, :now)"
            ),
            {"now": now},
        )
        for order_id, store_id in ((1, 1), (2, 1), (3, 1), (4, 2)):
            connection.execute(
                text(
                    "INSERT INTO orders (id, store_id, shop_order_id, status, deleted,"
                    " created_at, updated_at) VALUES (:id, :store, :id, 'completed', 0, :now, :now)"
                ),
                {"id": order_id, "store": store_id, "now": now},
            )
        jobs = [
            ("brevo.push_contact", "done", {"order_id": 1, "license_ids": [1]}),
            ("brevo.push_contact", "pending", {"order_id": 2}),
            ("mail.order_issued", "done", {"order_id": 3}),
        ]
        for kind, status, payload in jobs:
            connection.execute(
                text(
                    "INSERT INTO jobs (kind, payload, status, attempts, run_after, created_at)"
                    " VALUES (:kind, :payload, :status, 1, :now, :now)"
                ),
                {"kind": kind, "payload": json.dumps(payload), "status": status, "now": now},
            )
    upgrade(engine)
    with engine.connect() as connection:
        marked = dict(connection.execute(text("SELECT id, brevo_list_id FROM orders")).all())
    engine.dispose()
    assert marked == {1: 0, 2: None, 3: None, 4: 0}  # 4: its push job purged long ago


def test_0013_keeps_the_replay_order_and_expiries_of_existing_renewals(tmp_path: Path) -> None:
    """Upgrading with renewals applied: a refund still replays them in the order it did
    (their id) from the expiries they hold, for the license's and its links' timelines."""
    engine = make_engine(f"sqlite:///{tmp_path / 'keygate.db'}")
    upgrade(engine, "0012")
    now = "2026-11-20 12:00:00.000000"
    before, after = "2026-12-20 12:00:00.000000", "2027-01-19 12:00:00.000000"
    rows = [
        "INSERT INTO stores (id, public_id, name, url, platform, webhook_secret, api_token_hash,"
        " key_prefix, key_groups, key_group_length, created_at) VALUES (1, 's1', 'Shop',"
        " 'https://shop.example', 'woocommerce', 'x', 'h', '', 4, 5, :now)",
        "INSERT INTO products (id, store_id, shop_product_id, name, watermark_fallback, source,"
        " created_at, updated_at) VALUES (1, 1, '501', 'App', 'plain', 'meta', :now, :now)",
        "INSERT INTO product_files (id, product_id, object_key, filename, watermark, position,"
        " active) VALUES (1, 1, 'files/app.zip', 'app.zip', 'none', 0, 1)",
        "INSERT INTO orders (id, store_id, shop_order_id, status, deleted, created_at,"
        " updated_at) VALUES (1, 1, '9201', 'completed', 0, :now, :now)",
        "INSERT INTO orders (id, store_id, shop_order_id, status, deleted, created_at,"
        " updated_at) VALUES (2, 1, '9202', 'completed', 0, :now, :now)",
        "INSERT INTO line_items (id, order_id, shop_line_item_id, quantity, refunded_quantity)"
        " VALUES (1, 1, '1', 1, 0)",
        "INSERT INTO line_items (id, order_id, shop_line_item_id, quantity, refunded_quantity)"
        " VALUES (2, 2, '2', 2, 0)",
        "INSERT INTO licenses (id, store_id, product_id, order_id, line_item_id, unit, key_hash,"
        " key_encrypted, status, expires_at, updates_until, issued_at, updated_at) VALUES (1, 1,"
        " 1, 1, 1, 1, 'h', 'k', 'active', :after, :after, :now, :now)",
        "INSERT INTO download_grants (id, store_id, order_id, line_item_id, unit,"
        " product_file_id, license_id, expires_at, download_count, created_at) VALUES (1, 1, 1,"
        " 1, 1, 1, 1, :after, 0, :now)",
        "INSERT INTO license_renewals (id, license_id, order_id, line_item_id, unit,"
        " previous_expires_at, previous_updates_until, expires_at, updates_until, created_at)"
        " VALUES (7, 1, 2, 2, 1, :before, :before, :after, :after, :now)",
        "INSERT INTO license_renewals (id, license_id, order_id, line_item_id, unit,"
        " previous_expires_at, previous_updates_until, expires_at, updates_until, created_at)"
        " VALUES (3, 1, 2, 2, 2, NULL, NULL, NULL, NULL, :now)",
        "INSERT INTO grant_extensions (id, renewal_id, grant_id, previous_expires_at,"
        " expires_at) VALUES (1, 7, 1, :before, :after)",
    ]
    with engine.begin() as connection:
        for row in rows:
            connection.execute(text(row), {"now": now, "before": before, "after": after})
    upgrade(engine)
    with engine.connect() as connection:
        renewals = connection.execute(
            text(
                "SELECT id, applied_seq, first_previous_expires_at, first_previous_updates_until"
                " FROM license_renewals ORDER BY id"
            )
        ).all()
        extensions = connection.execute(
            text("SELECT renewal_id, first_previous_expires_at FROM grant_extensions")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in renewals] == [(3, 3, None, None), (7, 7, before, before)]
    assert [tuple(e) for e in extensions] == [(7, before)]


def test_0012_goes_down_and_up_again_with_data(shop: WebhookSender, database_url: str) -> None:
    """0012's downgrade works with products that licenses and files refer to (SQLite's
    batch rebuild of products was refused by foreign keys), and upgrading again keeps every
    row."""
    shop.configure(501)
    shop.deliver(wc_order(9001, "processing", [line_item(501)]), "order.created")
    engine = make_engine(database_url)
    tables = ("products", "product_files", "licenses", "line_items", "shop_connections")

    def counts() -> dict[str, int]:
        with engine.connect() as connection:
            return {
                t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()  # noqa: S608
                for t in tables
            }

    with engine.begin() as connection:
        connection.execute(text("UPDATE products SET retired_at = CURRENT_TIMESTAMP"))
    before = counts()
    assert before["licenses"] == 1
    try:
        downgrade(engine, "0011")
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("products")}
        assert "retired_at" not in columns
        upgrade(engine)
        assert counts() == before
    finally:
        engine.dispose()


def test_every_migration_goes_down_and_up_again_with_data(
    shop: WebhookSender, database_url: str
) -> None:
    """Each downgrade works on a database in use (SQLite's batch mode rebuilds a table with
    DROP TABLE, which foreign keys refuse once a row refers to it), one revision at a time
    back to the first, and upgrading again keeps every row."""
    from tests.functional.test_renewals_and_payments import renewal_line

    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9001, "processing", [line_item(501)]), "order.created")
    key = shop.order(9001)["licenses"][0]["key"]
    shop.deliver(wc_order(9002, "processing", [renewal_line(501, key, 77)]), "order.created")
    engine = make_engine(database_url)
    tables = ("orders", "line_items", "licenses", "license_renewals", "download_grants")

    def counts() -> dict[str, int]:
        with engine.connect() as connection:
            return {
                t: connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()  # noqa: S608
                for t in tables
            }

    before = counts()
    assert before["license_renewals"] == 1
    try:
        for target in ("0018", "0012", "0011", "0010", "0009", "0008", "0007", "0006", "0005"):
            downgrade(engine, target)
        upgrade(engine)
        assert counts() == before
    finally:
        engine.dispose()


def test_a_migration_leaving_a_dangling_reference_on_sqlite_changes_nothing(
    tmp_path: Path,
) -> None:
    """Foreign keys are off while SQLite migrates (table rebuilds), so every reference is
    checked before the commit: a dangling one rolls the whole migration back."""
    from connector.migrate import _migrating

    engine = make_engine(f"sqlite:///{tmp_path / 'keygate.db'}")
    try:
        upgrade(engine)
        with pytest.raises(RuntimeError, match="1 rows referring"), _migrating(engine) as conn:
            conn.execute(
                text(
                    "INSERT INTO admin_users (username, password_hash, store_id, created_at, "
                    "session_generation) VALUES ('ana', 'x', 999, '2026-12-01 00:00:00', 0)"
                )
            )
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM admin_users")).scalar() == 0
            # and foreign keys are on again for the next user of the pooled connection
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_0016_marks_orders_that_took_their_keys_back(tmp_path: Path) -> None:
    """Upgrading: refunded, cancelled, failed and deleted orders count as having taken their
    keys back (a pending one after that is not reinstated by hand); paid ones do not."""
    engine = make_engine(f"sqlite:///{tmp_path / 'keygate.db'}")
    upgrade(engine, "0015")
    now = "2026-11-20 12:00:00.000000"
    order = (
        "INSERT INTO orders (store_id, shop_order_id, status, deleted, created_at, updated_at)"
        " VALUES (1, :id, :status, :deleted, :now, :now)"
    )
    statuses = [
        ("1", "completed", 0),
        ("2", "cancelled", 0),
        ("3", "processing", 1),
        ("4", "pending", 0),  # cancelled before, its key revoked: pending again
        ("5", "pending", 0),
    ]
    product = (
        "INSERT INTO products (id, store_id, shop_product_id, name, watermark_fallback, source,"
        " created_at, updated_at) VALUES (1, 1, '501', 'App', 'plain', 'meta', :now, :now)"
    )
    line = (
        "INSERT INTO line_items (id, order_id, shop_line_item_id, quantity, refunded_quantity)"
        " SELECT 1, id, '1', 1, 0 FROM orders WHERE shop_order_id = '4'"
    )
    revoked = (
        "INSERT INTO licenses (store_id, product_id, order_id, line_item_id, unit, key_hash,"
        " key_encrypted, status, status_reason, issued_at, updated_at) SELECT 1, 1, id, 1, 1,"
        " 'h', 'k', 'revoked', 'order:cancelled', :now, :now FROM orders"
        " WHERE shop_order_id = '4'"
    )
    with engine.begin() as connection:
        connection.execute(text(STORE_ONE), {"now": now})
        for shop_id, status, deleted in statuses:
            values = {"id": shop_id, "status": status, "deleted": deleted, "now": now}
            connection.execute(text(order), values)
        for statement in (product, line, revoked):
            connection.execute(text(statement), {"now": now})
    upgrade(engine)
    with engine.connect() as connection:
        marked = dict(
            connection.execute(
                text("SELECT shop_order_id, revoked_at IS NOT NULL FROM orders")
            ).all()
        )
    engine.dispose()
    assert marked == {"1": 0, "2": 1, "3": 1, "4": 1, "5": 0}


def test_0018_keeps_sqlite_ids_and_never_gives_one_twice_after(tmp_path: Path) -> None:
    """Upgrading rebuilds the tables whose ids links and cookies name with AUTOINCREMENT:
    the rows keep their ids, and an id deleted afterwards is never given again."""
    engine = make_engine(f"sqlite:///{tmp_path / 'keygate.db'}")
    upgrade(engine, "0017")
    now = "2026-11-20 12:00:00.000000"
    order = (
        "INSERT INTO orders (store_id, shop_order_id, status, deleted, created_at, updated_at)"
        " VALUES (1, :id, 'completed', 0, :now, :now)"
    )
    admin = (
        "INSERT INTO admin_users (username, password_hash, created_at) VALUES (:name, 'h', :now)"
    )
    with engine.begin() as connection:
        connection.execute(text(STORE_ONE), {"now": now})
        for shop_id in ("100", "101"):
            connection.execute(text(order), {"id": shop_id, "now": now})
        connection.execute(text(admin), {"name": "owner", "now": now})
    upgrade(engine)
    with engine.begin() as connection:
        kept = connection.execute(text("SELECT id, shop_order_id FROM orders ORDER BY id")).all()
        assert [tuple(row) for row in kept] == [(1, "100"), (2, "101")]
        connection.execute(text("DELETE FROM orders WHERE id = 2"))
        connection.execute(text("DELETE FROM admin_users"))
        connection.execute(text(order), {"id": "102", "now": now})
        connection.execute(text(admin), {"name": "ana", "now": now})
        new_order = connection.execute(text("SELECT max(id) FROM orders")).scalar_one()
        new_admin = connection.execute(text("SELECT id FROM admin_users")).scalar_one()
    engine.dispose()
    assert (new_order, new_admin) == (3, 2)


def test_0019_goes_down_and_up_again_with_watermarked_copies(
    app: Flask, shop: WebhookSender, database_url: str
) -> None:
    """0019 records whom a watermarked copy names (buyer_hash); copies made before have
    none (stamped anew once). Its downgrade drops the column and keeps every copy."""
    from connector.jobs import run_pending
    from tests.functional.test_downloads import _pdf_files, make_pdf, paid_order

    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    paid_order(shop, 9101, _pdf_files())
    run_pending(app)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT buyer_hash FROM watermark_copies")).scalar()
        downgrade(engine, "0018")
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("watermark_copies")}
            copies = connection.execute(text("SELECT count(*) FROM watermark_copies")).scalar()
        assert "buyer_hash" not in columns and copies == 1
        upgrade(engine)
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT status, buyer_hash FROM watermark_copies"))
            assert [tuple(row) for row in kept] == [("ready", None)]
    finally:
        engine.dispose()


def test_0020_goes_down_and_up_again_with_pushed_orders(
    app: Flask, shop: WebhookSender, database_url: str
) -> None:
    """0020 records the address a buyer was pushed into Brevo with (brevo_email, encrypted);
    orders pushed before have none (their address stands for it). Its downgrade drops the
    column and keeps every order and its list."""
    engine = make_engine(database_url)
    shop.deliver(wc_order(9102, "processing", [line_item(501)]), "order.created")
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE orders SET brevo_list_id = 7, brevo_email = 'gAAAA-x'"))
        downgrade(engine, "0019")
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("orders")}
            lists = connection.execute(text("SELECT brevo_list_id FROM orders")).scalars().all()
        assert "brevo_email" not in columns and lists == [7]
        upgrade(engine)
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT brevo_list_id, brevo_email FROM orders"))
            assert [tuple(row) for row in kept] == [(7, None)]
    finally:
        engine.dispose()


def test_0021_masks_card_numbers_kept_before(tmp_path: Path) -> None:
    """Orders stored before card numbers were masked on arrival: a card number in the
    payment note or the reference is masked but its last four digits; other references and
    notes (a charge id, a date, an order number) stay as they were."""
    engine = make_engine(f"sqlite:///{tmp_path / 'keygate.db'}")
    upgrade(engine, "0020")
    now = "2026-11-20 12:00:00.000000"
    order = (
        "INSERT INTO orders (store_id, shop_order_id, status, deleted, transaction_id,"
        " payment_note, created_at, updated_at)"
        " VALUES (1, :id, 'completed', 0, :reference, :note, :now, :now)"
    )
    kept = [
        ("1", "4111111111111111", "Phone order 2026-01-01, card 5555 5555 5555 4444 exp 12/29"),
        ("2", "ch_3PrivCharge", "Paid by bank transfer, order 12345"),
        ("3", None, None),
    ]
    with engine.begin() as connection:
        connection.execute(text(STORE_ONE), {"now": now})
        for shop_id, reference, note in kept:
            values = {"id": shop_id, "reference": reference, "note": note, "now": now}
            connection.execute(text(order), values)
    upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT shop_order_id, transaction_id, payment_note FROM orders ORDER BY id")
        ).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [
        ("1", "************1111", "Phone order 2026-01-01, card **** **** **** 4444 exp 12/29"),
        ("2", "ch_3PrivCharge", "Paid by bank transfer, order 12345"),
        ("3", None, None),
    ]


def test_0022_keeps_sqlite_ids_and_never_gives_an_activation_id_twice_after(
    tmp_path: Path,
) -> None:
    """Upgrading rebuilds activations (and licenses, mails, jobs) with AUTOINCREMENT: rows
    keep their ids, and the id of a seat freed afterwards is never given to the next one."""
    engine = make_engine(f"sqlite:///{tmp_path / 'keygate.db'}")
    upgrade(engine, "0021")
    now = "2026-11-20 12:00:00.000000"
    rows = (
        "INSERT INTO orders (id, store_id, shop_order_id, status, deleted, created_at,"
        " updated_at) VALUES (1, 1, '100', 'completed', 0, :now, :now)",
        "INSERT INTO products (id, store_id, shop_product_id, name, watermark_fallback, source,"
        " created_at, updated_at) VALUES (1, 1, '501', 'App', 'plain', 'meta', :now, :now)",
        "INSERT INTO line_items (id, order_id, shop_line_item_id, quantity, refunded_quantity)"
        " VALUES (1, 1, '1', 1, 0)",
        "INSERT INTO licenses (id, store_id, product_id, order_id, line_item_id, unit, key_hash,"
        " key_encrypted, status, issued_at, updated_at)"
        " VALUES (1, 1, 1, 1, 1, 1, 'h', 'k', 'active', :now, :now)",
    )
    activation = (
        "INSERT INTO activations (license_id, site, fingerprint, staging, created_at, last_seen_at)"
        " VALUES (1, :site, '', 0, :now, :now)"
    )
    with engine.begin() as connection:
        connection.execute(text(STORE_ONE), {"now": now})
        for statement in rows:
            connection.execute(text(statement), {"now": now})
        connection.execute(text(activation), {"site": "site-a.com", "now": now})
    upgrade(engine)
    with engine.begin() as connection:
        kept = connection.execute(text("SELECT id, site FROM activations")).all()
        assert [tuple(row) for row in kept] == [(1, "site-a.com")]
        connection.execute(text("DELETE FROM activations"))
        connection.execute(text(activation), {"site": "site-b.com", "now": now})
        new_id = connection.execute(text("SELECT id FROM activations")).scalar_one()
    engine.dispose()
    assert new_id == 2


def test_0024_gives_ready_copies_their_retries_back(
    app: Flask, shop: WebhookSender, database_url: str
) -> None:
    """A ready copy stamped several times before counted each stamp; after 0024 it has failed
    none since it was made. A failed copy keeps its count."""
    from connector.jobs import run_pending
    from tests.functional.test_downloads import _pdf_files, make_pdf, paid_order

    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    paid_order(shop, 9103, _pdf_files())
    paid_order(shop, 9104, _pdf_files())
    run_pending(app)
    engine = make_engine(database_url)
    try:
        downgrade(engine, "0023")
        with engine.begin() as connection:
            connection.execute(text("UPDATE watermark_copies SET attempts = 3"))
            connection.execute(
                text(
                    "UPDATE watermark_copies SET status = 'failed' WHERE id ="
                    " (SELECT max(id) FROM watermark_copies)"
                )
            )
        upgrade(engine)
        with engine.connect() as connection:
            counts = connection.execute(
                text("SELECT status, attempts FROM watermark_copies ORDER BY id")
            ).all()
        assert [tuple(row) for row in counts] == [("ready", 0), ("failed", 3)]
    finally:
        engine.dispose()


def test_0025_goes_down_and_up_again_with_products_and_their_licenses(
    shop: WebhookSender, database_url: str
) -> None:
    """0025 adds a product's offline_days; products configured before have none (files as
    long as checkout asks, as before). Its downgrade drops the column and keeps every
    product, with the licenses and files that refer to it."""
    shop.configure(501, activation_limit=1, offline_days=3)
    shop.deliver(wc_order(9105, "processing", [line_item(501)]), "order.created")
    engine = make_engine(database_url)
    try:
        downgrade(engine, "0024")
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("products")}
        assert "offline_days" not in columns
        upgrade(engine)
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT activation_limit, offline_days FROM products"))
            assert [tuple(row) for row in kept] == [(1, None)]
            licenses = connection.execute(text("SELECT count(*) FROM licenses")).scalar()
            files = connection.execute(text("SELECT count(*) FROM product_files")).scalar()
        assert (licenses, files) == (1, 1)
    finally:
        engine.dispose()


def test_0026_keeps_admin_names_in_nfc_unless_the_name_is_taken(database_url: str) -> None:
    """A name kept as "e" and a combining accent is made one "é", as the sign-in page now
    reads it; one whose NFC form another admin has is left alone; NFC names are untouched."""
    engine = make_engine(database_url)
    admin = (
        "INSERT INTO admin_users (username, password_hash, session_generation, created_at)"
        " VALUES (:name, 'h', 0, CURRENT_TIMESTAMP)"
    )
    names = ["Rene\u0301", "Zoe\u0308", "Zo\u00eb", "ana"]
    try:
        downgrade(engine, "0025")
        with engine.begin() as connection:
            for name in names:
                connection.execute(text(admin), {"name": name})
        upgrade(engine)
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT username FROM admin_users ORDER BY id"))
            assert [row[0] for row in kept] == ["Ren\u00e9", "Zoe\u0308", "Zo\u00eb", "ana"]
    finally:
        engine.dispose()


def test_0027_forgets_the_plain_digests_of_orders(shop: WebhookSender, database_url: str) -> None:
    """Digests made before they were keyed (a plain hash holding the buyer's address) are
    forgotten; the orders keep everything else."""
    shop.configure(501)
    shop.deliver(wc_order(9003, "processing", [line_item(501)]))
    engine = make_engine(database_url)
    plain = "a" * 64
    try:
        downgrade(engine, "0026")
        with engine.begin() as connection:
            connection.execute(text("UPDATE orders SET shop_digest = :plain"), {"plain": plain})
        upgrade(engine)
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT shop_order_id, shop_digest FROM orders")).all()
        assert [tuple(row) for row in kept] == [("9003", None)]
    finally:
        engine.dispose()

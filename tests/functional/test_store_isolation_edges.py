"""Edges of tenant isolation the broad sweep of ``test_store_isolation`` does not reach:
found by a mutation audit of the admin pages and the admin API (each test fails when the
one check it names is left out).
"""

from __future__ import annotations

from flask import Flask

from connector.db import db
from connector.models import Activation
from tests.factories import WebhookSender
from tests.functional.test_admin_licenses_pages import _watermarked_copy, order_pk, post, upload
from tests.functional.test_admin_pages import csrf_token, signed_in_owner, store_admin
from tests.functional.test_store_isolation import Two, _ids, two

__all__ = ["two"]  # the fixture, used by name


def test_only_a_bearer_token_opens_the_admin_api(app: Flask, two: Two) -> None:
    """The token under another scheme (Basic, Token) is no credential: a proxy or tool that
    sends it so must be told, not let through."""
    token = two.mine.store.api_token
    for header in (f"Basic {token}", f"Token {token}", token):
        answer = two.mine.client.get("/api/v1/admin/products", headers={"Authorization": header})
        assert answer.status_code == 401, header
    answer = two.mine.client.get(
        "/api/v1/admin/products", headers={"Authorization": f"bearer {token}"}
    )
    assert answer.status_code == 200


def test_a_store_token_lists_its_own_products_only(app: Flask, two: Two) -> None:
    """``GET /products`` of one store names no product only another store configured."""
    two.theirs.configure(503)
    theirs = two.theirs.admin("GET", "/products").get_json()["products"]
    assert "503" in {str(p["product_id"]) for p in theirs}
    mine = two.mine.admin("GET", "/products").get_json()["products"]
    assert {str(p["product_id"]) for p in mine} == {"501"}


def test_a_store_admin_sees_no_count_of_the_shared_job_queue(app: Flask, two: Two) -> None:
    """The dashboard's job counts are of every store's jobs: an admin of every store sees
    them, an admin of one store does not (its own jobs are on its outbox page)."""
    heading = "<h2>Outbox</h2>"
    assert heading in signed_in_owner(app).get("/admin/").get_data(as_text=True)
    page = store_admin(app, two.mine.store.store.id).get("/admin/")
    assert page.status_code == 200
    assert heading not in page.get_data(as_text=True)


def test_a_store_admin_frees_no_seat_of_another_store_through_its_own_key(
    app: Flask, two: Two
) -> None:
    """An activation is removed only from the license named: one's own key (or license
    page) with the id of another store's activation is 404, and the seat stays taken."""
    answer = two.mine.admin("DELETE", f"/licenses/{two.my_key}/activations/{two.their_activation}")
    assert answer.status_code == 404
    my_license = _ids(app, 7100)[1]
    client = store_admin(app, two.mine.store.store.id)
    token = csrf_token(client, f"/admin/licenses/{my_license}")
    path = f"/admin/licenses/{my_license}/activations/{two.their_activation}/deactivate"
    assert post(client, path, token).status_code == 404
    with app.app_context():
        assert db.session.get(Activation, two.their_activation) is not None


def test_a_store_admin_cannot_open_another_stores_jobs_by_filter(app: Flask, two: Two) -> None:
    """``/admin/outbox?store=<id>`` picks a store for an admin of every store; an admin of
    one store keeps seeing its own jobs whatever id it names."""
    theirs = two.theirs.store.store.id
    retry = f"/admin/outbox/jobs/{two.their_job}/retry"
    assert retry in signed_in_owner(app).get(f"/admin/outbox?store={theirs}").get_data(as_text=True)
    page = store_admin(app, two.mine.store.store.id).get(f"/admin/outbox?store={theirs}")
    assert page.status_code == 200
    assert retry not in page.get_data(as_text=True)


def test_a_store_admins_audit_filter_offers_only_its_own_stores_actions(
    app: Flask, two: Two
) -> None:
    """The audit page's list of actions to filter by is of the entries the admin may see:
    not another store's (a release it published) nor every store's sign-ins."""
    owner = signed_in_owner(app).get("/admin/audit").get_data(as_text=True)
    for action in ("release.published", "admin.login"):
        assert f'<option value="{action}"' in owner
    page = store_admin(app, two.mine.store.store.id).get("/admin/audit")
    assert page.status_code == 200
    for action in ("release.published", "admin.login"):
        assert f'<option value="{action}"' not in page.get_data(as_text=True), action


def test_a_store_admin_identifies_a_copy_of_its_own_store(app: Flask, shop: WebhookSender) -> None:
    """The leak lookup of an admin of one store looks in that store (another store's copy
    is 404: ``test_a_store_admin_learns_nothing_from_another_stores_copy``), and finds it."""
    copy = _watermarked_copy(app, shop, 9640)
    client = store_admin(app, shop.store.store.id)
    found = upload(client, csrf_token(client, "/admin/leaks"), copy)
    assert found.status_code == 200, found.get_data(as_text=True)
    assert f'href="/admin/orders/{order_pk(app, 9640)}"' in found.get_data(as_text=True)

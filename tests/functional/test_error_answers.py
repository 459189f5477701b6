"""Error answers carry what the client needs: a page where a buyer looks, the headers the
status calls for (Retry-After, Allow, WWW-Authenticate) on pages and problem JSON alike."""

from __future__ import annotations

from flask import Flask

from tests.factories import WebhookSender
from tests.functional.test_downloads import get, link_path, paid_order, put_file

JSON = {"Accept": "application/json"}


def test_a_buyer_link_answers_a_page_even_to_a_client_asking_for_json(
    app: Flask, shop: WebhookSender
) -> None:
    put_file(app, "files/a.pdf", b"x")
    [download] = paid_order(shop, 7301, [{"object_key": "files/a.pdf", "filename": "a.pdf"}])
    path = link_path(download)
    for tampered in (path[:-1] + ("A" if path[-1] != "A" else "B"), "/my/not-a-token"):
        response = get(shop.client, tampered, headers=JSON)
        assert (response.status_code, response.mimetype) == (404, "text/html"), tampered
    assert shop.client.get("/api/v1/admin/nothing", headers=JSON).mimetype == (
        "application/problem+json"
    )


def test_a_file_not_available_says_when_to_try_again(app: Flask, shop: WebhookSender) -> None:
    [download] = paid_order(shop, 7302, [{"object_key": "files/gone.pdf", "filename": "g.pdf"}])
    response = get(shop.client, link_path(download))
    assert (response.status_code, response.mimetype) == (503, "text/html")
    assert int(response.headers["Retry-After"]) > 0


def test_a_missing_token_is_challenged_and_a_wrong_method_names_the_allowed_ones(
    shop: WebhookSender,
) -> None:
    unauthenticated = shop.client.get("/api/v1/admin/audit")
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer")
    wrong_method = shop.admin("POST", "/audit")
    assert (wrong_method.status_code, wrong_method.mimetype) == (405, "application/problem+json")
    assert "GET" in wrong_method.headers["Allow"]
    page = shop.client.get("/admin/logout")
    assert (page.status_code, page.mimetype) == (405, "text/html")
    assert "POST" in page.headers["Allow"]

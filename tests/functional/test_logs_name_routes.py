"""Log lines about a request name its route pattern, never its path: admin API paths carry
license keys and emails, portal and download paths carry the buyer's bearer tokens."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import orm
from sqlalchemy.exc import IntegrityError

from connector.errors import UNMATCHED_ROUTE, route_for_log
from tests.factories import WebhookSender, line_item, wc_order
from tests.peers import unreachable_database

BASE = "http://keygate.test"


@dataclass(frozen=True)
class Sold:
    """What one sold order puts into URLs: its key, its buyer's email, its two tokens (and
    the CSRF token of its portal page's forms, in the shop client's session)."""

    key: str
    email: str
    portal_path: str
    download_path: str
    csrf_token: str

    @property
    def secrets(self) -> tuple[str, ...]:
        portal_token = self.portal_path.rsplit("/", 1)[1]
        download_token = self.download_path.rsplit("/", 1)[1]
        return (self.key, self.email, portal_token, download_token)


def _sell(shop: WebhookSender, order_id: int) -> Sold:
    shop.configure(601)
    delivered = shop.deliver(
        wc_order(order_id, "processing", [line_item(601)], email="leak.check@example.org")
    )
    assert delivered.status_code == 200
    body = shop.order(order_id)
    portal_path = body["portal_url"].removeprefix(BASE)
    csrf = re.search(
        r'name="csrf_token" type="hidden" value="([^"]+)"',
        shop.client.get(portal_path).get_data(as_text=True),
    )
    assert csrf
    return Sold(
        key=body["licenses"][0]["key"],
        email=body["order"]["email"],
        portal_path=portal_path,
        download_path=body["downloads"][0]["link"].removeprefix(BASE),
        csrf_token=csrf.group(1),
    )


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the records say: messages, their arguments and tracebacks."""
    return "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)


def _assert_names_route_only(caplog: pytest.LogCaptureFixture, sold: Sold, rule: str) -> None:
    logged = _logged(caplog)
    for secret in sold.secrets:
        assert secret not in logged, f"{secret!r} was logged: {logged}"
    assert rule in logged, logged


def _secret_carrying_calls(sold: Sold) -> list[tuple[str, str, str, dict[str, str] | None]]:
    """(method, path, route, form) of requests whose path carries a key, an email or a token."""
    return [
        (
            "POST",
            f"/api/v1/admin/licenses/{sold.key}/revoke",
            "/api/v1/admin/licenses/<key>/<action>",
            None,
        ),
        (
            "GET",
            f"/api/v1/admin/customers/{sold.email}/export",
            "/api/v1/admin/customers/<path:email>/export",
            None,
        ),
        ("GET", sold.portal_path, "/my/<token>", None),
        (
            "POST",
            f"{sold.portal_path}/activations/1/deactivate",
            "/my/<token>/activations/<activation>/deactivate",
            {"csrf_token": sold.csrf_token},
        ),
        ("GET", sold.download_path, "/d/<token>", None),
    ]


def test_an_unreachable_database_is_logged_with_the_route_not_the_path(
    app: Flask,
    shop: WebhookSender,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The "database unavailable" warning names the route of a key, email or token path."""
    sold = _sell(shop, 9600)
    calls = _secret_carrying_calls(sold)
    with unreachable_database(app, database_url, tmp_path):
        for method, path, rule, form in calls:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="connector"):
                answer = shop.client.open(
                    path,
                    method=method,
                    data=form,
                    headers={"Authorization": f"Bearer {shop.store.api_token}"},
                )
            assert answer.status_code == 503, (path, answer.get_data(as_text=True))
            assert "database unavailable on " + method in caplog.text
            _assert_names_route_only(caplog, sold, rule)


def test_an_unhandled_error_is_logged_with_the_route_not_the_path(
    app: Flask,
    shop: WebhookSender,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The catch-all's "unhandled error" line names the route of a key, email or token path."""
    sold = _sell(shop, 9601)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("connector.licensing.admin_api.change_license", broken)
    monkeypatch.setattr("connector.privacy.views.export_customer", broken)
    monkeypatch.setattr("connector.portal.views.order_entitlements", broken)
    monkeypatch.setattr("connector.licensing.portal.order_for", broken)
    monkeypatch.setattr("connector.downloads.views.start_download_fast", broken)
    calls = _secret_carrying_calls(sold)
    for method, path, rule, form in calls:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="connector"):
            answer = shop.client.open(
                path,
                method=method,
                data=form,
                headers={"Authorization": f"Bearer {shop.store.api_token}"},
            )
        assert answer.status_code == 500, (path, answer.get_data(as_text=True))
        assert "unhandled error on " + method in caplog.text
        _assert_names_route_only(caplog, sold, rule)


def test_a_database_error_on_the_license_blueprint_is_logged_with_the_route(
    app: Flask,
    shop: WebhookSender,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The license API's own "unhandled error" line names the route of a release token path."""
    sold = _sell(shop, 9602)
    token = "release-token-" + "r" * 40

    def broken(*_args: object, **_kwargs: object) -> None:
        raise IntegrityError("SELECT 1", {}, Exception("a bug"))

    monkeypatch.setattr("connector.licensing.views.release_id_from_token", broken)
    with caplog.at_level(logging.ERROR, logger="connector"):
        answer = shop.client.get(f"/api/v1/releases/download/{token}")
    assert answer.status_code == 500
    assert "unhandled error on GET" in caplog.text
    _assert_names_route_only(caplog, sold, "/api/v1/releases/download/<token>")
    assert token not in _logged(caplog)


def test_an_exception_past_every_handler_is_logged_with_the_route(
    app: Flask,
    shop: WebhookSender,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flask's own last-resort line (a commit failing at the request boundary) names the
    route, not the path."""
    sold = _sell(shop, 9603)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: log and answer 500

    def failing_commit(self: orm.Session) -> None:
        raise RuntimeError("commit failed")

    monkeypatch.setattr(orm.Session, "commit", failing_commit)
    with caplog.at_level(logging.ERROR, logger="connector"):
        answer = shop.admin("POST", f"/licenses/{sold.key}/revoke")
    assert answer.status_code == 500
    assert "Exception on " in caplog.text
    _assert_names_route_only(caplog, sold, "/api/v1/admin/licenses/<key>/<action>")


def test_a_request_no_route_matched_is_named_by_a_placeholder(app: Flask) -> None:
    """Without a matching route the log names a fixed placeholder, never the path sent."""
    with app.test_request_context("/my/secret-portal-token/nothing-here"):
        assert route_for_log() == UNMATCHED_ROUTE
        assert "secret-portal-token" not in route_for_log()
    with app.test_request_context("/my/secret-portal-token"):
        assert route_for_log() == "/my/<token>"

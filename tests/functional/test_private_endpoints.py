"""A store's R2 endpoint_url on a private network is refused unless the instance allows it
(KEYGATE_ALLOW_PRIVATE_ENDPOINTS): when it is saved, and at every connection Keygate makes to
it, so an owner or a store's API token cannot use the credentials check or downloads to
probe the instance's own network. Names are resolved by a fake resolver where a test needs a
public answer or an answer that changes (DNS rebinding)."""

from __future__ import annotations

import itertools
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from connector.db import db
from connector.downloads.storage import R2ObjectStore
from connector.integrations.r2 import R2Config, StorageUnavailable
from connector.models import AdminUser, Store
from connector.vault.service import put_credentials
from tests.factories import WebhookSender
from tests.functional.test_admin_pages import PASSWORD, csrf_token, sign_in
from tests.functional.test_downloads_r2 import own_bucket, paid_link, s3_client
from tests.localstack import ACCESS_KEY_ID, SECRET_ACCESS_KEY

SETTING = "KEYGATE_ALLOW_PRIVATE_ENDPOINTS"
ALLOWED = {"allow_private_endpoints": True}
R2 = {
    "account_id": "0123456789abcdef",
    "access_key_id": "AKIAEXAMPLEKEY123456",
    "secret_access_key": "r2-secret-Zq8mW3vN5bT7yU1pK9dF2gH4jL6",
    "bucket": "files",
}
PRIVATE_ENDPOINTS = [
    "http://127.0.0.1:9000",
    "http://localhost:9000",
    "http://[::1]:9000",
    "http://10.1.2.3",
    "http://172.16.0.9:9000",
    "https://192.168.1.20",
    "http://100.64.0.7",
    "http://0.0.0.0:9000",
    "http://224.0.0.1",
    "http://[fd00::5]:9000",
    "http://[fec0::5]:9000",  # site-local: Python calls it global
    "http://[::ffff:10.0.0.1]",
    "http://2130706433:9000",  # 127.0.0.1 as a resolver reads a number
]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, Iterator[str]]:
    """Names this resolver answers: each lookup of a name takes its next address."""
    answers: dict[str, Iterator[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            host = next(answers[host])
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize("endpoint", PRIVATE_ENDPOINTS)
def test_a_private_endpoint_is_refused_when_saved(shop: WebhookSender, endpoint: str) -> None:
    """A 422 naming the field and the setting; nothing is saved, nothing is contacted."""
    answer = shop.admin("PUT", "/credentials/r2", {**R2, "endpoint_url": endpoint})
    assert answer.status_code == 422, answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    body = answer.get_json()
    assert body["field"] == "endpoint_url"
    assert body["detail"].startswith("endpoint_url is, or resolves to, a private")
    assert f"{SETTING}=true" in body["detail"]
    assert shop.admin("GET", "/credentials/r2").status_code == 404


def test_a_public_name_that_resolves_to_a_private_address_is_refused_when_saved(
    shop: WebhookSender, dns: dict[str, Iterator[str]]
) -> None:
    """The name is what the owner types; the address it resolves to is what is checked."""
    dns["files.example.net"] = itertools.repeat("10.20.30.40")
    dns["s3.example.net"] = itertools.repeat("1.1.1.1")
    refused = shop.admin(
        "PUT", "/credentials/r2", {**R2, "endpoint_url": "https://files.example.net"}
    )
    assert refused.status_code == 422
    assert SETTING in refused.get_json()["detail"]
    saved = shop.admin("PUT", "/credentials/r2", {**R2, "endpoint_url": "https://s3.example.net"})
    assert saved.status_code == 200, saved.get_data(as_text=True)
    assert saved.get_json()["check"]["problem"] == "unreachable"  # tests reach 127.0.0.1 only


@pytest.mark.parametrize("app_settings", [ALLOWED])
def test_an_instance_that_allows_private_endpoints_saves_one(shop: WebhookSender) -> None:
    answer = shop.admin("PUT", "/credentials/r2", {**R2, "endpoint_url": "http://localhost:9"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["check"]["problem"] == "unreachable"  # a closed port, not refused


def test_the_credentials_page_says_why_a_private_endpoint_is_not_saved(
    app: Flask, shop: WebhookSender
) -> None:
    with app.app_context():
        db.session.add(AdminUser(username="owner", password_hash=generate_password_hash(PASSWORD)))
        db.session.commit()
    admin: FlaskClient = app.test_client()
    assert sign_in(admin) == 302
    page = f"/admin/stores/{shop.store.store.id}/credentials"
    form = {"csrf_token": csrf_token(admin, page), "kind": "r2", **R2}
    answer = admin.post(page, data={**form, "endpoint_url": "http://127.0.0.1:4566"})
    assert answer.status_code == 422
    assert answer.mimetype == "text/html"
    html = answer.get_data(as_text=True)
    assert "endpoint_url is, or resolves to, a private or local network address" in html
    assert f"{SETTING}=true" in html
    assert R2["secret_access_key"] not in html
    assert shop.admin("GET", "/credentials/r2").status_code == 404


def saved_before(app: Flask, shop: WebhookSender, values: dict[str, Any]) -> None:
    """Credentials as saved when their name still resolved to a public address (or before
    this Keygate refused private endpoints): the save-time check is not asked."""
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        put_credentials(db.session, store, "r2", values, actor="test")
        db.session.commit()


def by_name(endpoint: str) -> str:
    """LocalStack's own endpoint, by the name localhost (a name that resolves privately)."""
    return endpoint.replace("127.0.0.1", "localhost")


@pytest.mark.slow
@pytest.mark.xdist_group("localstack")
@pytest.mark.parametrize("app_settings", [{}, ALLOWED])
def test_the_check_says_the_endpoint_is_private_and_names_the_setting(
    app: Flask, shop: WebhookSender, localstack_endpoint: str, app_settings: dict[str, Any]
) -> None:
    """LocalStack answers at that endpoint: allowed, the check passes; not allowed, the check
    says why and what to do, without trying the endpoint."""
    bucket = f"keygate-{uuid.uuid4().hex[:12]}"
    s3_client(localstack_endpoint).create_bucket(Bucket=bucket)
    saved_before(app, shop, own_bucket(by_name(localstack_endpoint), bucket))
    answer = shop.admin("POST", "/credentials/r2/check")
    assert answer.status_code == 200
    check = answer.get_json()["check"]
    if app_settings:
        assert check == {"ok": True, "problem": None, "reason": None}
        return
    assert check["ok"] is False
    assert check["problem"] == "private_address"
    assert "endpoint_url is, or resolves to, a private or local network address" in check["reason"]
    assert f"{SETTING}=true" in check["reason"]


@pytest.mark.slow
@pytest.mark.xdist_group("localstack")
@pytest.mark.parametrize("app_settings", [{}, ALLOWED])
def test_a_download_from_a_private_endpoint_is_storage_unavailable(
    app: Flask, shop: WebhookSender, localstack_endpoint: str, app_settings: dict[str, Any]
) -> None:
    """The buyer's click is the friendly 503 page and costs no download; allowed, the same
    credentials serve the file."""
    bucket = f"keygate-{uuid.uuid4().hex[:12]}"
    s3 = s3_client(localstack_endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="apps/tool.zip", Body=b"PK tool")
    saved_before(app, shop, own_bucket(by_name(localstack_endpoint), bucket))
    path = paid_link(shop, 8301, [{"object_key": "apps/tool.zip", "filename": "tool.zip"}])
    before = shop.order(8301)["downloads"][0]["downloads_left"]
    click = shop.client.get(path)
    if app_settings:
        assert click.status_code == 302
        return
    assert click.status_code == 503
    assert click.mimetype == "text/html"
    assert "Traceback" not in click.get_data(as_text=True)
    assert shop.order(8301)["downloads"][0]["downloads_left"] == before


@pytest.mark.slow
@pytest.mark.xdist_group("localstack")
def test_every_request_to_a_private_endpoint_is_refused(
    localstack_endpoint: str, tmp_path: Path
) -> None:
    """Reads, writes, listings and deletes alike: an unavailable store, never the bucket."""
    bucket = f"keygate-{uuid.uuid4().hex[:12]}"
    s3 = s3_client(localstack_endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a.bin", Body=b"a")
    endpoint = by_name(localstack_endpoint)
    store = R2ObjectStore(R2Config("acct", ACCESS_KEY_ID, SECRET_ACCESS_KEY, bucket, endpoint))
    source = tmp_path / "b.bin"
    source.write_bytes(b"b")
    calls = [
        lambda: store.exists("a.bin"),
        lambda: store.download("a.bin", tmp_path / "a.bin"),
        lambda: store.upload("b.bin", source),
        lambda: store.delete("a.bin"),
        lambda: store.delete_prefix(""),
    ]
    for call in calls:
        with pytest.raises(StorageUnavailable, match=SETTING):
            call()
    assert [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["a.bin"]
    allowed = R2ObjectStore(
        R2Config("acct", ACCESS_KEY_ID, SECRET_ACCESS_KEY, bucket, endpoint, private_ok=True)
    )
    assert allowed.exists("a.bin")


class _Counting(BaseHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_PUT = do_DELETE = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def internal_service() -> Iterator[tuple[str, list[str]]]:
    """A service on 127.0.0.1 (the instance's own network): its port and what reached it."""
    handler = type("Handler", (_Counting,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield str(server.server_address[1]), handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_name_that_turns_private_between_check_and_connect_reaches_nothing(
    internal_service: tuple[str, list[str]], dns: dict[str, Iterator[str]]
) -> None:
    """DNS rebinding: the name answers a public address to the check, then a private one to
    the next lookup. The connection goes only to the addresses it checked, so the internal
    service is never reached (neither by boto3's requests nor by the check's GET)."""
    port, reached = internal_service
    dns["rebind.example.net"] = itertools.cycle(["1.1.1.1", "127.0.0.1"])
    config = R2Config("acct", "key-id", "secret", "bucket", f"http://rebind.example.net:{port}")
    store = R2ObjectStore(config)
    with pytest.raises(StorageUnavailable):
        store.exists("a.bin")
    dns["rebind.example.net"] = itertools.cycle(["1.1.1.1", "127.0.0.1"])
    problem = store.check_access()
    assert problem is not None and problem.kind == "private_address"
    assert reached == []


def test_through_a_proxy_the_endpoints_name_is_checked_and_the_proxy_is_used(
    internal_service: tuple[str, list[str]],
    dns: dict[str, Iterator[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An egress proxy from the environment (the operator's, on a private address) still
    carries requests to a public endpoint; a private endpoint is refused before it."""
    port, reached = internal_service
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    dns["s3.example.net"] = itertools.repeat("1.1.1.1")
    public = R2ObjectStore(R2Config("acct", "key-id", "secret", "bucket", "http://s3.example.net"))
    assert public.exists(f"a-{port}.bin") is False  # the proxy answered 404
    assert [urlsplit(path).hostname for path in reached] == ["s3.example.net"]
    private = R2ObjectStore(R2Config("acct", "key-id", "secret", "bucket", "http://localhost:9"))
    with pytest.raises(StorageUnavailable, match=SETTING):
        private.exists("a.bin")
    assert len(reached) == 1


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hosts sockets were asked to connect to (the loopback guard still applies)."""
    tried: list[str] = []
    guarded = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            tried.append(str(address[0]))
        return guarded(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


@pytest.mark.parametrize("app_settings", [ALLOWED])
def test_where_private_endpoints_are_allowed_a_name_of_the_metadata_service_is_still_refused(
    shop: WebhookSender, dns: dict[str, Iterator[str]]
) -> None:
    """README: cloud metadata services are refused either way. A name the owner controls
    that resolves to 169.254.169.254 was saved, as only the spelling was checked."""
    dns["meta.example.net"] = itertools.repeat("169.254.169.254")
    dns["minio.example.net"] = itertools.repeat("10.0.0.9")
    refused = shop.admin(
        "PUT", "/credentials/r2", {**R2, "endpoint_url": "http://meta.example.net"}
    )
    assert refused.status_code == 422, refused.get_data(as_text=True)
    assert refused.get_json()["field"] == "endpoint_url"
    assert "link-local" in refused.get_json()["detail"]
    assert shop.admin("GET", "/credentials/r2").status_code == 404
    saved = shop.admin(
        "PUT", "/credentials/r2", {**R2, "endpoint_url": "http://minio.example.net:9000"}
    )
    assert saved.status_code == 200, saved.get_data(as_text=True)


def test_where_private_endpoints_are_allowed_no_connection_goes_to_the_metadata_service(
    dns: dict[str, Iterator[str]], connections: list[str]
) -> None:
    """Credentials saved while the name answered otherwise (or rebinding it): boto3's
    requests and the check's GET never connect to the metadata address; the check says why."""
    dns["files.example.net"] = itertools.repeat("169.254.169.254")
    config = R2Config(
        "acct", "key-id", "secret", "bucket", "http://files.example.net", private_ok=True
    )
    store = R2ObjectStore(config)
    with pytest.raises(StorageUnavailable, match="metadata"):
        store.exists("a.bin")
    problem = store.check_access()
    assert problem is not None and problem.kind == "metadata_address"
    dns["files.example.net"] = itertools.cycle(["10.0.0.9", "169.254.169.254"])
    problem = store.check_access()
    assert problem is not None and problem.kind == "metadata_address"
    assert "169.254.169.254" not in connections

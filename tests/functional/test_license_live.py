"""Against real servers on loopback: the client library, and seats across two processes."""

from __future__ import annotations

import email.utils
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from connector.client import (
    KeygateClient,
    RequestRejected,
    Result,
    SignatureError,
    Unavailable,
    verify_response,
)
from connector.db import db
from connector.models import Activation
from tests.conftest import MASTER_KEY, SECRET_KEY
from tests.factories import WebhookSender
from tests.licensing_helpers import free_port, issue_key, public_keys, wait_until_serving


class LiveServer:
    """The test app served over real HTTP in a thread, on a free loopback port.

    werkzeug's threaded server, because it stops cleanly from another thread (each
    connection is closed after its request).
    """

    def __init__(self, app: Flask) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def live(app: Flask) -> Iterator[LiveServer]:
    server = LiveServer(app)
    wait_until_serving(server.port)
    yield server
    server.stop()


def _pinned(live: LiveServer) -> dict[str, str]:
    with urllib.request.urlopen(live.url + "/api/v1/signing-keys", timeout=5) as response:
        return {k["kid"]: k["public_key"] for k in json.load(response)["keys"]}


def test_client_activates_and_validates_against_the_live_server(
    shop: WebhookSender, live: LiveServer
) -> None:
    """The client verifies each real answer (signature, digest, date, nonce) and reads it."""
    key = issue_key(shop, activation_limit=1)
    client = KeygateClient(live.url, _pinned(live), product="501")
    activated = client.activate(key, site="https://www.customer-shop.com/")
    assert (activated.valid, activated.code) == (True, "VALID")
    assert activated.data["activation"]["site"] == "customer-shop.com"
    result = client.validate(key, site="customer-shop.com")
    assert (result.valid, result.code, result.offline) == (True, "VALID", False)
    assert result.license is not None and result.license["activations_used"] == 1
    refused = client.activate(key, site="another-shop.com")
    assert refused.code == "TOO_MANY_ACTIVATIONS"
    with pytest.raises(RequestRejected) as rejected:
        client.activate(key)
    assert rejected.value.status == 422
    file = client.checkout(key, site="customer-shop.com").data["license_file"]
    from connector.client import verify_license_file

    assert verify_license_file(file, _pinned(live), key=key)["site"] == "customer-shop.com"


def test_client_refuses_answers_from_an_unpinned_key(shop: WebhookSender, live: LiveServer) -> None:
    """Pinned keys that are not Keygate's: every answer is refused."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = issue_key(shop)
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    pinned = {kid: stranger for kid in _pinned(live)}
    with pytest.raises(SignatureError):
        KeygateClient(live.url, pinned).validate(key)


def test_offline_grace_uses_the_last_good_answer(
    shop: WebhookSender, app: Flask, tmp_path: Path
) -> None:
    """Keygate down: the last verified answer serves within the grace period, from the file
    too; a tampered cache file or an elapsed grace period gives Unavailable."""
    key = issue_key(shop)
    server = LiveServer(app)
    wait_until_serving(server.port)
    cache = tmp_path / "cache.json"
    keys = _pinned(server)
    client = KeygateClient(server.url, keys, product="501", cache_path=cache)
    assert client.validate(key).offline is False
    server.stop()

    offline = client.validate(key)
    assert (offline.valid, offline.code, offline.offline) == (True, "VALID", True)
    restarted = KeygateClient(server.url, keys, product="501", cache_path=cache, timeout=2)
    assert restarted.validate(key).offline is True
    with pytest.raises(Unavailable):
        KeygateClient(server.url, keys, product="501", cache_path=cache, grace_period=0).validate(
            key
        )
    with pytest.raises(Unavailable):
        client.validate(key, site="never-validated.com")

    stored = json.loads(cache.read_text())
    for record in stored.values():
        record["body"] = record["body"].replace('"status":"active"', '"status":"revoked"')
    cache.write_text(json.dumps(stored))
    with pytest.raises(Unavailable):
        KeygateClient(server.url, keys, product="501", cache_path=cache).validate(key)


def test_a_saved_answer_never_stands_in_for_another_question(
    shop: WebhookSender, app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copied into the cache slot of another site, key or product, a saved answer is refused
    offline (its signed nonce names the question it answered); so is one dated in the future
    (a clock set back)."""
    key = issue_key(shop)
    server = LiveServer(app)
    wait_until_serving(server.port)
    cache = tmp_path / "cache.json"
    keys = _pinned(server)
    client = KeygateClient(server.url, keys, product="501", cache_path=cache)
    assert client.activate(key, site="a.com").valid
    assert client.validate(key, site="a.com").valid
    server.stop()
    [saved] = json.loads(cache.read_text()).values()

    def offline(product: str, key: str, site: str) -> KeygateClient:
        other = KeygateClient(server.url, keys, product=product, cache_path=cache, timeout=2)
        slot = other._cache_key(key, site, None)
        cache.write_text(json.dumps({slot: saved}))
        return KeygateClient(server.url, keys, product=product, cache_path=cache, timeout=2)

    assert offline("501", key, "a.com").validate(key, site="a.com").offline is True
    for product, other_key, site in [
        ("501", key, "b.com"),
        ("501", "KG-ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ", "a.com"),
        ("999", key, "a.com"),
    ]:
        with pytest.raises(Unavailable):
            offline(product, other_key, site).validate(other_key, site=site)
    later = offline("501", key, "a.com")
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600)
    with pytest.raises(Unavailable):
        later.validate(key, site="a.com")


def test_broken_answers_are_unavailable_and_fall_back_to_the_saved_one(
    shop: WebhookSender, app: Flask, tmp_path: Path
) -> None:
    """A garbage status line, a body cut short or one larger than any answer is "Keygate
    unavailable" (the saved answer serves), never a raw exception; a Digest of other
    characters is a bad signature; an unwritable cache never fails a live call."""
    import socket

    key = issue_key(shop)
    server = LiveServer(app)
    wait_until_serving(server.port)
    keys = _pinned(server)
    cache = tmp_path / "cache.json"
    assert KeygateClient(server.url, keys, product="501", cache_path=cache).validate(key).valid
    unwritable = KeygateClient(
        server.url, keys, product="501", cache_path=tmp_path / "file" / "sub" / "c.json"
    )
    (tmp_path / "file").write_text("not a folder")
    assert unwritable.validate(key).valid
    server.stop()

    answers = [
        b"GARBAGE\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
        b"HTTP/1.1 503 Unavailable\r\nContent-Length: 2000000\r\n\r\n" + b"x" * 2_000_000,
    ]
    for answer in answers:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def reply(listener: socket.socket = listener, answer: bytes = answer) -> None:
            connection, _ = listener.accept()
            connection.recv(65536)
            connection.sendall(answer)
            connection.close()

        thread = threading.Thread(target=reply, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = KeygateClient(url, keys, product="501", cache_path=cache, timeout=5)
        client._cache = {  # the saved answer, under this client's slot for the same question
            client._cache_key(key, None, None): next(iter(json.loads(cache.read_text()).values()))
        }
        result = client.validate(key)
        assert (result.valid, result.offline) == (True, True), answer[:20]
        thread.join(timeout=10)
        listener.close()

    with pytest.raises(SignatureError):
        verify_response(
            method="POST",
            url="http://keygate.test/api/v1/licenses/validate",
            headers={
                "Digest": "sha-256=é",
                "Date": "x",
                "Keygate-Signature": f'keyid="{next(iter(keys))}", algorithm="ed25519", '
                'signature="AAAA", headers="(request-target) host date digest"',
            },
            body=b"{}",
            public_keys=keys,
        )


Rewrite = Callable[[list[tuple[str, str]]], list[tuple[str, str]]]


def _rewriting_proxy(
    target_port: int,
    rewrite: Rewrite,
    rewrite_request: Callable[[bytes], bytes] | None = None,
    rewrite_answer: Callable[[bytes], bytes] | None = None,
) -> tuple[str, threading.Thread]:
    """A one-request proxy to the live server that passes the answer's headers through
    ``rewrite``, as a server or proxy in front of Keygate might (and the request's body
    through ``rewrite_request``, the answer's through ``rewrite_answer``, as one in the
    middle might)."""
    import http.client
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        stream = connection.makefile("rb")
        method, target, _ = stream.readline().decode().split()
        headers = {}
        while (line := stream.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        body = stream.read(int(headers.get("Content-Length", "0")))
        if rewrite_request is not None:
            body = rewrite_request(body)
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=10)
        upstream.request(method, target, body=body, headers=headers)
        answer = upstream.getresponse()
        content = answer.read()
        answer_headers = answer.getheaders()
        if rewrite_answer is not None:
            content = rewrite_answer(content)
            answer_headers = [
                (k, str(len(content)) if k.lower() == "content-length" else v)
                for k, v in answer_headers
            ]
        lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
        lines += [f"{name}: {value}" for name, value in rewrite(answer_headers)]
        connection.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + content)
        connection.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", thread


def _repeat(header: str) -> Rewrite:
    return lambda headers: [h for h in headers for _ in range(2 if h[0].lower() == header else 1)]


def _date_moved(seconds: int) -> Rewrite:
    """Keygate's signed Date replaced by a later one, as gunicorn and nginx replace it."""

    def rewrite(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        signed = next(v for k, v in headers if k.lower() == "date")
        later = email.utils.parsedate_to_datetime(signed).timestamp() + seconds
        others = [(k, v) for k, v in headers if k.lower() != "date"]
        return [*others, ("Date", email.utils.formatdate(later, usegmt=True))]

    return rewrite


def _through(live: LiveServer, key: str, rewrite: Rewrite) -> Result:
    url, thread = _rewriting_proxy(live.port, rewrite)
    try:
        return KeygateClient(url, _pinned(live), product="501").validate(key)
    finally:
        thread.join(timeout=10)


def test_answers_verify_through_servers_that_rewrite_or_repeat_headers(
    shop: WebhookSender, live: LiveServer
) -> None:
    """gunicorn (and nginx) replace Keygate's Date with their own, made a moment later and so
    sometimes in the next second; werkzeug sends its Date besides Keygate's; a CDN may repeat
    headers of its own. The client finds the Date that was signed."""
    key = issue_key(shop)
    for rewrite in (_date_moved(1), _repeat("date"), _repeat("x-content-type-options")):
        assert _through(live, key, rewrite).valid


@pytest.mark.parametrize("header", ["digest", "keygate-signature"])
def test_an_answer_repeating_its_digest_or_signature_is_refused(
    shop: WebhookSender, live: LiveServer, header: str
) -> None:
    """Which Digest or signature counts must not depend on who reads the answer: one sent
    twice, even with the same value, is a bad signature."""
    key = issue_key(shop)
    with pytest.raises(SignatureError, match="twice"):
        _through(live, key, _repeat(header))


def test_a_date_moved_by_more_than_a_second_does_not_verify(
    shop: WebhookSender, live: LiveServer
) -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        _through(live, issue_key(shop), _date_moved(2))


def test_fifty_parallel_activations_of_three_seats_from_two_processes(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """Two server processes, 50 activations of a 3-seat key at once: exactly 3 succeed
    (and every answer waitress delivers verifies)."""
    key = issue_key(shop, activation_limit=3)
    keys = public_keys(shop.client)  # the signing key exists before the servers race for it
    env = dict(
        os.environ,
        KEYGATE_DATABASE_URL=app.extensions["keygate.settings"].database_url,
        KEYGATE_MASTER_KEY=MASTER_KEY,
        KEYGATE_SECRET_KEY=SECRET_KEY,
        KEYGATE_INSTANCE_DIR=str(tmp_path / "instance"),
        KEYGATE_WORKER="off",
        KEYGATE_RATELIMIT_ENABLED="false",
    )
    ports = [free_port(), free_port()]
    servers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "waitress",
                "--listen",
                f"127.0.0.1:{port}",
                "--threads",
                "8",
                "--call",
                "connector:create_app",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port in ports:
            wait_until_serving(port)
        barrier = threading.Barrier(50)

        def activate(i: int) -> str:
            body = json.dumps({"key": key, "site": f"shop-{i}.com"}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{ports[i % 2]}/api/v1/licenses/activate",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            barrier.wait(timeout=30)
            with urllib.request.urlopen(request, timeout=60) as response:
                data = verify_response(
                    method="POST",
                    url=request.full_url,
                    headers=dict(response.headers.items()),
                    body=response.read(),
                    public_keys=keys,
                )
                code: str = data["code"]
                return code

        with ThreadPoolExecutor(max_workers=50) as pool:
            codes = list(pool.map(activate, range(50)))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
    assert codes.count("VALID") == 3, codes
    assert codes.count("TOO_MANY_ACTIVATIONS") == 47
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Activation)).scalar_one() == 3


def test_the_client_activates_only_a_key_of_its_own_product(
    app: Flask, shop: WebhookSender, live: LiveServer
) -> None:
    """The client sends its product with activate: another product's key is refused
    (PRODUCT_MISMATCH, no seat taken), as validate would refuse it afterwards."""
    key = issue_key(shop, activation_limit=1)
    keys = _pinned(live)
    other = KeygateClient(live.url, keys, product="777")
    refused = other.activate(key, site="a.com")
    assert (refused.valid, refused.code) == (False, "PRODUCT_MISMATCH")
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Activation)).scalar_one() == 0
    assert KeygateClient(live.url, keys, product="501").activate(key, site="b.com").valid


def test_a_key_of_another_store_sharing_the_instance_is_refused_when_the_store_is_named(
    app: Flask, shop: WebhookSender, live: LiveServer
) -> None:
    """Two shops on one Keygate both sell a product 501: store B's key is not a key for
    store A's product once the product names its store, in every call and offline file."""
    from connector.client import LicenseFileError, verify_license_file
    from tests.functional.test_admin_licenses_pages import other_shop

    store_a = shop.store.store.public_id
    other = other_shop(app)
    store_b = other.store.store.public_id
    key_b = issue_key(other)
    keys = _pinned(live)
    as_a = KeygateClient(live.url, keys, product="501", store=store_a)
    as_b = KeygateClient(live.url, keys, product="501", store=store_b)
    unnamed = KeygateClient(live.url, keys, product="501")
    refused = as_a.validate(key_b)
    assert (refused.valid, refused.code) == (False, "PRODUCT_MISMATCH")
    assert "another store" in refused.detail
    assert as_a.activate(key_b, site="a.com").code == "PRODUCT_MISMATCH"
    assert as_a.check_update(key_b, "1.0").code == "PRODUCT_MISMATCH"
    assert as_a.checkout(key_b).data["license_file"] is None
    assert unnamed.validate(key_b).valid  # what a product that names no store gets
    for _ in range(2):  # the second VALID comes from the one-statement fast path
        assert as_b.validate(key_b).valid
    assert as_b.activate(key_b, site="b.com").valid
    assert as_b.validate(key_b, site="b.com").valid
    file = as_b.checkout(key_b, site="b.com").data["license_file"]
    assert verify_license_file(file, keys, key=key_b, store=store_b)["store"] == store_b
    with pytest.raises(LicenseFileError, match="another store"):
        verify_license_file(file, keys, key=key_b, store=store_a)


def test_a_saved_answer_serves_offline_when_a_proxy_added_its_own_later_date(
    shop: WebhookSender, app: Flask, tmp_path: Path
) -> None:
    """A server in front of Keygate whose clock is a few seconds ahead adds its own Date
    after Keygate's: the answer verifies (by the Date that was signed), and the saved copy
    still serves offline once Keygate is down (it keeps the Date that was signed, not the
    last one received)."""
    key = issue_key(shop)
    server = LiveServer(app)
    wait_until_serving(server.port)
    keys = _pinned(server)

    def add_a_later_date(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        signed = next(v for k, v in headers if k.lower() == "date")
        later = email.utils.parsedate_to_datetime(signed).timestamp() + 3
        return [*headers, ("Date", email.utils.formatdate(later, usegmt=True))]

    url, thread = _rewriting_proxy(server.port, add_a_later_date)
    cache = tmp_path / "cache.json"
    client = KeygateClient(url, keys, product="501", cache_path=cache, timeout=2)
    assert client.validate(key).offline is False
    thread.join(timeout=10)
    server.stop()
    for offline in (client, KeygateClient(url, keys, product="501", cache_path=cache, timeout=2)):
        result = offline.validate(key)
        assert (result.valid, result.offline) == (True, True)

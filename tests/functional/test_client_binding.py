"""An answer is bound to the request it answers (``request_digest``), and the client library
trusts nothing else: not a genuine answer to another key swapped in, online or in its cache;
not an unsigned page from something in between; not an answer trickled past its timeout.

Against the live server on loopback (``LiveServer``), with the real client."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import delete, update

from connector import create_app
from connector.client import (
    KeygateClient,
    RequestRejected,
    SignatureError,
    Unavailable,
    UnverifiedAnswer,
    verify_response,
)
from connector.db import db, utcnow
from connector.jobs import stop_worker_thread
from connector.models import Activation, License
from tests.conftest import app_overrides
from tests.factories import WebhookSender
from tests.functional.test_license_live import LiveServer, _pinned, _rewriting_proxy, live
from tests.licensing_helpers import issue_key

__all__ = ["live"]  # a fixture (on this module's app), used by name

PER_KEY = 3  # validate calls a key may make a minute here


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """The test app with a small per-key budget (the 429 test)."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(
        app_overrides(tmp_path, database_url, ratelimit_license_per_key=f"{PER_KEY}/minute")
    )
    application.config["TESTING"] = True
    yield application
    stop_worker_thread(application)
    application.extensions["keygate.db"].engine.dispose()


def _raw_validate(live: LiveServer, body: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """A validate answer as any caller can get one: its headers and body."""
    request = urllib.request.Request(
        live.url + "/api/v1/licenses/validate",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(response.headers.items()), response.read()


def test_every_answer_names_the_request_it_answers(shop: WebhookSender, live: LiveServer) -> None:
    key = issue_key(shop)
    sent = {"key": key, "nonce": "n1"}
    headers, body = _raw_validate(live, sent)
    keys = _pinned(live)

    def answer_to(request: dict[str, str]) -> dict[str, object]:
        return verify_response(
            method="POST",
            url=live.url + "/api/v1/licenses/validate",
            headers=headers,
            body=body,
            public_keys=keys,
            nonce="n1",
            request_body=json.dumps(request).encode(),
        )

    checked = answer_to(sent)
    assert checked["valid"] is True
    assert str(checked["request_digest"]).startswith("sha-256=")
    # The same genuine answer offered as the answer to another key's question: refused.
    with pytest.raises(SignatureError, match="request_digest"):
        answer_to({**sent, "key": "KG-OTHER"})


def test_a_valid_answer_to_another_key_is_refused_in_transit(
    shop: WebhookSender, live: LiveServer
) -> None:
    """Something in the middle keeps the nonce but asks about a key it owns: the genuine VALID
    it gets back is not the answer to the product's question."""
    owned = issue_key(shop)

    def ask_about_owned(body: bytes) -> bytes:
        return json.dumps({**json.loads(body), "key": owned, "site": None}).encode()

    url, thread = _rewriting_proxy(live.port, lambda headers: headers, ask_about_owned)
    try:
        with pytest.raises(SignatureError, match="not to this request"):
            KeygateClient(url, _pinned(live), product="501").validate(
                "KG-NOT-A-REAL-KEY", site="pirate.example.com"
            )
    finally:
        thread.join(timeout=10)


def test_a_forged_cache_entry_never_validates_another_key(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """A pirate with a key of their own writes a genuine VALID answer into the cache slot of
    a key that does not exist, with either request beside it: refused offline."""
    owned = issue_key(shop)
    keys = _pinned(live)
    cache = tmp_path / "cache.json"
    client = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
    forged = "KG-NOT-A-REAL-KEY"
    slot = client._cache_key(forged, "pirate.example.com", None)
    owned_request = {"key": owned, "product": "501", "nonce": "n"}
    headers, body = _raw_validate(live, owned_request)
    assert json.loads(body)["valid"] is True
    live.stop()
    forged_request = {"key": forged, "site": "pirate.example.com", "product": "501"}
    for request in (owned_request, {**forged_request, "nonce": "n"}):
        record = {
            "url": live.url + "/api/v1/licenses/validate",
            "headers": headers,
            "body": body.decode(),
            "request": json.dumps(request),
        }
        cache.write_text(json.dumps({slot: record}))
        offline = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
        with pytest.raises(Unavailable):
            offline.validate(forged, site="pirate.example.com")


def test_offline_answers_keep_to_their_version_and_the_licenses_end(
    app: Flask,
    shop: WebhookSender,
    live: LiveServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = issue_key(shop, duration_days=30)
    with app.app_context():  # it ends in an hour
        db.session.execute(update(License).values(expires_at=utcnow() + dt.timedelta(hours=1)))
        db.session.commit()
    cache = tmp_path / "cache.json"
    client = KeygateClient(live.url, _pinned(live), product="501", cache_path=cache, timeout=2)
    assert client.validate(key, version="1.9").valid
    live.stop()
    assert client.validate(key, version="1.9").offline is True
    with pytest.raises(Unavailable):  # asked about another version: not what was answered
        client.validate(key, version="2.5")
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3 * 3600)
    with pytest.raises(Unavailable):  # within the grace period, but the license has ended
        client.validate(key, version="1.9")


def test_a_rate_limited_client_serves_its_fresh_answer(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """A signed 429 asks the product to wait: its last good answer serves meanwhile; without
    one, the 429 is raised with its Retry-After."""
    key = issue_key(shop)
    client = KeygateClient(live.url, _pinned(live), product="501", cache_path=tmp_path / "c")
    for _ in range(PER_KEY):
        assert client.validate(key).offline is False
    waited = client.validate(key)
    assert (waited.valid, waited.offline, waited.offline_reason) == (True, True, "rate_limited")
    with pytest.raises(RequestRejected) as rejected:
        client.activate(key, site="a.com")
    assert rejected.value.status == 429 and rejected.value.retry_after


def _one_answer(
    answer: bytes | Callable[[str], bytes], pause: float = 0.0, *, from_byte: int = 0
) -> tuple[str, threading.Thread]:
    """A server that answers one request with ``answer`` (or what it makes of the server's
    URL): at once, or with ``pause`` set, its bytes from ``from_byte`` on one every
    ``pause`` seconds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    if callable(answer):
        answer = answer(url)

    def reply() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        try:
            connection.sendall(answer[:from_byte] if pause else answer)
            for index in range(from_byte, len(answer) if pause else 0):
                time.sleep(pause)
                connection.sendall(answer[index : index + 1])
        except OSError:
            pass  # the client gave up
        connection.close()
        listener.close()

    thread = threading.Thread(target=reply, daemon=True)
    thread.start()
    return url, thread


def test_pages_not_from_keygate_are_unavailable_and_the_saved_answer_serves(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """A captive portal's 200, a firewall's 403, a CDN's 429, a redirect: none is signed, so
    none is Keygate's answer; it counts as Keygate out of reach (a redirect is not followed)."""
    key = issue_key(shop)
    keys = _pinned(live)
    cache = tmp_path / "cache.json"
    assert KeygateClient(live.url, keys, product="501", cache_path=cache).validate(key).valid
    saved = json.loads(cache.read_text())
    pages = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 11\r\n\r\n<p>Wi-Fi</p>",
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nblocked",
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 30\r\nContent-Length: 4\r\n\r\nslow",
        b"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.example/\r\nContent-Length: 0\r\n\r\n",
    ]
    for page in pages:
        url, thread = _one_answer(page)
        client = KeygateClient(url, keys, product="501", timeout=5)
        with pytest.raises(Unavailable, match="not from Keygate"):
            client.validate("KG-SOMETHING")
        thread.join(timeout=10)
        url, thread = _one_answer(page)
        client = KeygateClient(url, keys, product="501", timeout=5)
        client._cache = {client._cache_key(key, None, None): next(iter(saved.values()))}
        result = client.validate(key)
        assert (result.valid, result.offline) == (True, True), page[:30]
        thread.join(timeout=10)


@pytest.mark.parametrize("trickled", ["status line", "body"])
def test_an_answer_trickled_past_the_timeout_is_unavailable(trickled: str) -> None:
    """``timeout`` is a deadline for the whole answer, not for each read: a server sending a
    byte at a time (of its status line and headers, or of its body) is out of reach."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"x" * 40
    start = 0 if trickled == "status line" else answer.index(b"\r\n\r\n") + 4
    url, thread = _one_answer(answer, pause=0.2, from_byte=start)
    client = KeygateClient(url, {}, product="501", timeout=1)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="in time"):
        client.validate("KG-SOMETHING")
    assert time.monotonic() - started < 1.8  # the whole answer would take 8 s or more
    thread.join(timeout=30)


def test_errors_about_unread_or_unrouted_requests_are_rejections(
    shop: WebhookSender, live: LiveServer
) -> None:
    """An unknown path, a wrong method, a body too large: signed problem answers that echo
    what they can (nonce and request digest when the body was read), and the client raises
    them as rejections, not as replays."""
    keys = _pinned(live)
    for path, method in (("/api/v1/licenses/nope", "POST"), ("/api/v1/licenses/validate", "PUT")):
        request = urllib.request.Request(
            live.url + path,
            data=b'{"key": "x", "nonce": "n3"}',
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(request, timeout=5)
        answer = verify_response(
            method=method,
            url=live.url + path,
            headers=dict(failed.value.headers.items()),
            body=failed.value.read(),
            public_keys=keys,
            nonce="n3",
            request_body=b'{"key": "x", "nonce": "n3"}',
        )
        assert answer["status"] in (404, 405) and answer["ts"]
    client = KeygateClient(live.url, keys, product="501")
    with pytest.raises(RequestRejected) as too_large:
        client.validate(issue_key(shop), site="a" * 17000)
    assert too_large.value.status == 413
    client.base_url = live.url + "/api/v1/licenses/unknown"
    with pytest.raises(RequestRejected) as unknown:
        client.validate("KG-ANY")
    assert unknown.value.status == 404


def test_a_license_file_is_checked_for_its_product_machine_and_issue_time(
    shop: WebhookSender, live: LiveServer
) -> None:
    from connector.client import LicenseFileError, verify_license_file

    keys = _pinned(live)
    key = issue_key(shop, product_id=777)
    client = KeygateClient(live.url, keys, product="777")
    assert client.activate(key, fingerprint="machine-1").valid
    file = client.checkout(key, fingerprint="machine-1").data["license_file"]
    content = verify_license_file(file, keys, key=key, product="777", fingerprint=" machine-1 ")
    assert content["fingerprint"] == "machine-1"
    assert verify_license_file(file, keys, key=key, product=777)["product"] == "777"
    with pytest.raises(LicenseFileError, match="another product"):
        verify_license_file(file, keys, key=key, product="501")
    with pytest.raises(LicenseFileError, match="another product"):
        verify_license_file(file, keys, key=key, product=501)
    with pytest.raises(LicenseFileError, match="another machine"):
        verify_license_file(file, keys, key=key, fingerprint="machine-2")
    a_year_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=365)
    with pytest.raises(LicenseFileError, match="issued after"):
        verify_license_file(file, keys, key=key, now=a_year_ago)


def test_a_free_staging_sites_license_file_is_no_machines_license(
    shop: WebhookSender, live: LiveServer
) -> None:
    """A product bound to machines (fingerprint only) has its one seat taken. Anyone with
    the key can check out a file for a free staging site with another machine's
    fingerprint (no activation, no seat, up to a year): that file must not verify as that
    machine's license, or one key licenses every machine offline."""
    from connector.client import LicenseFileError, verify_license_file

    keys = _pinned(live)
    key = issue_key(shop, product_id=777, activation_limit=1)
    client = KeygateClient(live.url, keys, product="777")
    assert client.activate(key, fingerprint="machine-1").valid
    assert not client.checkout(key, fingerprint="machine-2").valid

    staged = client.checkout(key, site="localhost", fingerprint="machine-2", ttl=31536000)
    if staged.valid:  # Keygate may refuse it; a file it gives must not pass as machine-2's
        with pytest.raises(LicenseFileError, match="pass site="):
            verify_license_file(
                staged.data["license_file"], keys, key=key, product="777", fingerprint="machine-2"
            )
        # On the staging site it was checked out for, it is that site's license.
        for site in ("localhost", "http://LOCALHOST:8080/wp/", " localhost. "):
            assert (
                verify_license_file(
                    staged.data["license_file"], keys, key=key, site=site, fingerprint="machine-2"
                )["site"]
                == "localhost"
            )
        with pytest.raises(LicenseFileError, match="another site"):
            verify_license_file(
                staged.data["license_file"], keys, key=key, site="shop.com", fingerprint="machine-2"
            )


def test_a_license_file_is_checked_for_its_site_as_keygate_names_it(
    shop: WebhookSender, live: LiveServer
) -> None:
    """A site passed as the product sent it to checkout, or as Keygate answered it, is the
    file's site (scheme, case, www., port, path and IDNA forgiven); another site is not."""
    from connector.client import LicenseFileError, verify_license_file

    keys = _pinned(live)
    key = issue_key(shop, product_id=778, activation_limit=1)
    client = KeygateClient(live.url, keys, product="778")
    sent = "https://WWW.Bücher.example:443/shop/"
    assert client.activate(key, site=sent).valid
    file = client.checkout(key, site=sent).data["license_file"]
    for site in (sent, "bücher.example", "xn--bcher-kva.example", "http://www.bücher.example."):
        assert verify_license_file(file, keys, key=key, site=site)["site"] == (
            "xn--bcher-kva.example"
        )
    for other in ("bucher.example", "shop.bücher.example", "localhost", "http://[::1]/"):
        with pytest.raises(LicenseFileError, match="another site"):
            verify_license_file(file, keys, key=key, site=other)


def test_a_variation_keys_license_file_verifies_for_the_parent_it_was_asked_for(
    shop: WebhookSender, live: LiveServer
) -> None:
    from connector.client import LicenseFileError, verify_license_file
    from tests.factories import line_item, wc_order

    shop.configure(500)
    shop.configure(502)
    shop.deliver(wc_order(6003, "processing", [line_item(500, variation_id=502)]))
    key = shop.order(6003)["licenses"][0]["key"]
    keys = _pinned(live)
    client = KeygateClient(live.url, keys, product="500")
    assert client.validate(key).valid
    file = client.checkout(key).data["license_file"]
    for product in ("500", "502"):
        assert verify_license_file(file, keys, key=key, product=product)["license"]
    with pytest.raises(LicenseFileError, match="another product"):
        verify_license_file(file, keys, key=key, product="501")


def test_a_keygate_older_than_the_client_is_unavailable_not_forged(
    shop: WebhookSender, live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that signs answers without request_digest (an older Keygate, a fleet half
    upgraded): nothing it says is trusted, and the saved answer serves meanwhile."""
    from connector.licensing import views

    key = issue_key(shop)
    cache = tmp_path / "cache.json"
    client = KeygateClient(live.url, _pinned(live), product="501", cache_path=cache)
    assert client.validate(key).offline is False
    echo = views._echo

    def older(body: dict[str, object]) -> dict[str, object]:
        echoed = echo(body)
        del echoed["request_digest"]
        return echoed

    monkeypatch.setattr(views, "_echo", older)
    assert client.validate(key).offline is True
    with pytest.raises(Unavailable, match="older than this client"):
        client.activate(key, site="a.com")


def test_an_unsigned_date_written_beside_a_saved_answer_does_not_renew_it(
    shop: WebhookSender, live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved answer is aged by the Date its signature covers: a second Date written into
    the cache beside it (in another case, so the file keeps both) makes a month-old answer
    no fresher, and the grace period can't be renewed by editing the file."""
    key = issue_key(shop)
    keys, cache = _pinned(live), tmp_path / "cache.json"
    client = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
    assert client.validate(key).valid
    live.stop()
    month_later = time.time() + 30 * 24 * 3600
    monkeypatch.setattr(time, "time", lambda: month_later)
    [(slot, record)] = json.loads(cache.read_text()).items()
    assert "Date" in record["headers"]
    record["headers"]["date"] = email.utils.formatdate(month_later, usegmt=True)
    cache.write_text(json.dumps({slot: record}))
    offline = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
    with pytest.raises(Unavailable):
        offline.validate(key)


def test_a_signed_429_holds_the_clients_calls_for_that_key_until_retry_after(
    shop: WebhookSender, live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keygate asked the client to wait: until Retry-After has passed it sends nothing more
    for that key (Keygate is stopped here, so a call that went out would be Unavailable):
    validate serves its saved answer, other calls raise the 429 again with the seconds
    left. Another key is not held, and once the time is up the key's calls go out again."""
    key, other = issue_key(shop), issue_key(shop)
    client = KeygateClient(live.url, _pinned(live), product="501", cache_path=tmp_path / "c")
    for _ in range(PER_KEY):
        assert client.validate(key).offline is False
    assert client.validate(key).offline is True  # the 429, answered from the saved answer
    live.stop()
    with pytest.raises(RequestRejected) as held:
        client.activate(key, site="a.com")
    assert held.value.status == 429
    assert held.value.retry_after is not None and 0 < held.value.retry_after <= 60
    with pytest.raises(RequestRejected):
        client.validate(key, site="never-saved.com")
    assert client.validate(key).offline is True
    with pytest.raises(Unavailable):
        client.validate(other)
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 61)
    with pytest.raises(Unavailable):
        client.activate(key, site="a.com")


def _flipped(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    """An answer body edited on its way, as someone in the middle would edit it."""

    def edit(body: bytes) -> bytes:
        assert old in body
        return body.replace(old, new)

    return edit


def test_an_altered_answer_is_never_trusted_and_counts_as_keygate_out_of_reach(
    shop: WebhookSender, live: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone in the middle edits answers. A NOT_FOUND made VALID is never accepted; an
    answer altered either way is no worse than no answer (they could block the network as
    well): validate serves the saved answer, saying why, or raises what an unreachable
    Keygate raises (still a SignatureError for code that catches that). A warning is
    logged, naming no key."""
    key = issue_key(shop)
    keys, cache = _pinned(live), tmp_path / "cache.json"
    assert KeygateClient(live.url, keys, product="501", cache_path=cache).validate(key).valid

    forged = "KG-NOT-A-REAL-KEY"
    url, thread = _rewriting_proxy(
        live.port,
        lambda headers: headers,
        rewrite_answer=_flipped(b'"valid":false', b'"valid":true'),
    )
    with caplog.at_level("WARNING"), pytest.raises(Unavailable) as raised:
        KeygateClient(url, keys, product="501", cache_path=cache).validate(forged)
    thread.join(timeout=10)
    assert isinstance(raised.value, SignatureError)
    assert isinstance(raised.value, UnverifiedAnswer)
    assert "Digest" in str(raised.value)
    assert "did not verify" in caplog.text and forged not in caplog.text

    caplog.clear()
    url, thread = _rewriting_proxy(
        live.port,
        lambda headers: headers,
        rewrite_answer=_flipped(b'"valid":true', b'"valid":false'),
    )
    client = KeygateClient(url, keys, product="501", cache_path=cache)
    with caplog.at_level("WARNING"):
        served = client.validate(key)
    thread.join(timeout=10)
    assert (served.valid, served.offline, served.offline_reason) == (True, True, "unverified")
    assert "did not verify" in caplog.text and key not in caplog.text
    live.stop()  # the saved answer was kept: it serves while Keygate is down too
    again = client.validate(key)
    assert (again.valid, again.offline, again.offline_reason) == (True, True, "unreachable")


def test_a_hanging_resolver_holds_a_call_no_longer_than_its_timeout(
    shop: WebhookSender, live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``timeout`` bounds the whole call, name resolution included: a DNS server that does
    not answer (the system resolver retries for as long as it likes) is Keygate out of
    reach once the time is up, and validate serves its saved answer."""
    key = issue_key(shop)
    url, keys = f"http://localhost:{live.port}", _pinned(live)  # a name to resolve
    client = KeygateClient(url, keys, product="501", cache_path=tmp_path / "c")
    assert client.validate(key).offline is False
    released = threading.Event()

    def hanging_resolver(*args: object, **kwargs: object) -> object:
        released.wait(timeout=10)
        raise socket.gaierror("the resolver gave up")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_resolver)
    client.timeout = 0.5
    never_answered = KeygateClient(url, keys, product="501", timeout=0.5)
    try:
        started = time.monotonic()
        served = client.validate(key)
        # 0.5 s and what a busy machine adds, far from the resolver's 10 s.
        assert time.monotonic() - started < 4
        assert (served.valid, served.offline, served.offline_reason) == (True, True, "unreachable")
        started = time.monotonic()
        with pytest.raises(Unavailable, match="in time"):
            never_answered.activate(key, site="a.com")
        assert time.monotonic() - started < 4
    finally:
        released.set()


def test_an_empty_site_is_a_mistake_the_client_names_not_no_site(
    shop: WebhookSender, live: LiveServer
) -> None:
    """site="" (a setting never filled in) is refused before anything is sent, naming the
    argument, by every call and by verify_license_file (whose site-less file it passed):
    a product never gets a site-less activation or license by mistake. None is no site."""
    from connector.client import verify_license_file

    keys = _pinned(live)
    key = issue_key(shop, product_id=779)
    client = KeygateClient(live.url, keys, product="779")
    calls = [
        (client.activate, (key,), {"fingerprint": "machine-1"}),
        (client.validate, (key,), {}),
        (client.deactivate, (key,), {"fingerprint": "machine-1"}),
        (client.check_update, (key, "1.0"), {}),
        (client.checkout, (key,), {}),
    ]
    for empty in ("", "  "):
        for method, args, kwargs in calls:
            with pytest.raises(ValueError, match="site is empty"):
                method(*args, site=empty, **kwargs)  # type: ignore[operator]
    assert client.validate(key).data["license"]["activations_used"] == 0
    assert client.activate(key, fingerprint="machine-1").valid
    file = client.checkout(key, fingerprint="machine-1").data["license_file"]
    assert verify_license_file(file, keys, key=key, fingerprint="machine-1")
    with pytest.raises(ValueError, match="site is empty"):
        verify_license_file(file, keys, key=key, site="", fingerprint="machine-1")


def test_a_replayed_rejection_of_another_request_does_not_cost_the_grace_period(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """A 413 is the one answer that names no request (its body was never read). Someone in
    the middle keeps a genuine one, signed for Keygate's host, and plays it back as the
    answer to any call: validate serves its saved answer, as when the network is blocked;
    without one the 413 is raised as before."""
    key = issue_key(shop)
    keys, cache = _pinned(live), tmp_path / "cache.json"

    def replayed_413(url: str) -> bytes:
        request = urllib.request.Request(
            live.url + "/api/v1/licenses/validate",
            data=b"x" * 17000,
            method="POST",
            headers={"Host": url.removeprefix("http://")},  # the host the client calls
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        body = refused.value.read()
        assert refused.value.code == 413 and json.loads(body)["request_digest"] is None
        headers = "".join(
            f"{k}: {v}\r\n"
            for k, v in refused.value.headers.items()
            if k.lower() not in ("connection", "content-length")
        )
        return (
            f"HTTP/1.1 413 Payload Too Large\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    url, thread = _one_answer(replayed_413)
    with pytest.raises(RequestRejected) as rejected:
        KeygateClient(url, keys, product="501", cache_path=cache).validate(key)
    assert rejected.value.status == 413
    thread.join(timeout=10)

    assert KeygateClient(live.url, keys, product="501", cache_path=cache).validate(key).valid
    url, thread = _one_answer(replayed_413)
    served = KeygateClient(url, keys, product="501", cache_path=cache).validate(key)
    assert (served.valid, served.offline, served.offline_reason) == (True, True, "unverified")
    thread.join(timeout=10)


def test_a_cache_that_cannot_be_written_leaves_no_copies_behind(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """Writing the cache is best effort, and a failed write (here a folder stands where the
    file goes) removes its temporary copy: a product validating every hour must not fill
    the folder with them."""
    key = issue_key(shop)
    folder = tmp_path / "app-data"
    (folder / "cache.json").mkdir(parents=True)
    client = KeygateClient(live.url, _pinned(live), product="501", cache_path=folder / "cache.json")
    for _ in range(2):  # each valid answer is saved (it was kept in memory)
        assert client.validate(key).offline is False
    assert [path.name for path in folder.iterdir()] == ["cache.json"]


@pytest.mark.parametrize(
    ("call", "asked"),
    [
        ("activate", {"site": "shop.example.com"}),
        ("check_update", {"version": "1.0"}),  # as the README calls it: no site
        ("checkout", {}),
        ("validate", {"fingerprint": "another-machine"}),
    ],
)
def test_a_revocation_heard_by_any_call_ends_the_offline_grace(
    app: Flask,
    shop: WebhookSender,
    live: LiveServer,
    tmp_path: Path,
    call: str,
    asked: dict[str, str],
) -> None:
    """The product's other calls (activating at each start, a daily update check, a license
    file, a check for another site or machine) hear that the license was revoked: the
    answer saved for validate no longer serves while Keygate is out of reach, in this
    process or the next (it served for the rest of the grace period, as if the revocation
    had never come)."""
    key = issue_key(shop)
    keys, cache = _pinned(live), tmp_path / "cache.json"
    client = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
    assert client.activate(key, site="shop.example.com").valid
    assert client.validate(key, site="shop.example.com").valid
    with app.app_context():
        db.session.execute(update(License).values(status="revoked"))
        db.session.commit()
    heard = getattr(client, call)(key, **asked)
    assert (heard.valid, heard.code) == (False, "REVOKED")
    live.stop()
    for offline in (client, KeygateClient(live.url, keys, product="501", cache_path=cache)):
        with pytest.raises(Unavailable):
            offline.validate(key, site="shop.example.com")


def test_a_seat_the_product_freed_itself_has_no_offline_grace(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """Deactivating forgets the answer saved for that key, site and machine, in memory and
    in the cache file: a product that gave its seat back cannot go on validating from the
    cache once Keygate is out of reach (another machine may hold the seat by then)."""
    key = issue_key(shop)
    keys, cache = _pinned(live), tmp_path / "cache.json"
    client = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
    assert client.activate(key, site="shop.example.com").valid
    assert client.validate(key, site="shop.example.com").valid
    freed = client.deactivate(key, site="shop.example.com")
    assert (freed.valid, freed.code) == (True, "DEACTIVATED")
    live.stop()
    for offline in (client, KeygateClient(live.url, keys, product="501", cache_path=cache)):
        with pytest.raises(Unavailable):
            offline.validate(key, site="shop.example.com")


@pytest.mark.parametrize(
    ("taken_by", "call", "code"),
    [
        (None, "check_update", "NO_ACTIVATION"),
        ("other.example.com", "check_update", "SITE_MISMATCH"),
        ("other.example.com", "activate", "TOO_MANY_ACTIVATIONS"),
    ],
)
def test_a_seat_freed_on_keygate_ends_the_offline_grace_when_heard(
    app: Flask,
    shop: WebhookSender,
    live: LiveServer,
    tmp_path: Path,
    taken_by: str | None,
    call: str,
    code: str,
) -> None:
    """The owner frees the product's seat on Keygate (and another site may take it): the
    next call the product makes for its site (the daily update check, activating at start)
    hears that the license is not activated there, and the answer saved for validate no
    longer serves while Keygate is out of reach, in this process or the next."""
    key = issue_key(shop, activation_limit=1)
    keys, cache = _pinned(live), tmp_path / "cache.json"
    client = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
    assert client.activate(key, site="shop.example.com").valid
    assert client.validate(key, site="shop.example.com").valid
    with app.app_context():  # freed; or freed and taken by another site
        if taken_by is None:
            db.session.execute(delete(Activation))
        else:
            db.session.execute(update(Activation).values(site=taken_by))
        db.session.commit()
    asked = {"version": "1.0"} if call == "check_update" else {}
    heard = getattr(client, call)(key, site="shop.example.com", **asked)
    assert (heard.valid, heard.code) == (False, code)
    live.stop()
    for offline in (client, KeygateClient(live.url, keys, product="501", cache_path=cache)):
        with pytest.raises(Unavailable):
            offline.validate(key, site="shop.example.com")

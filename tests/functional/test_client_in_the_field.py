"""The client library as products use it in the field: Keygate behind a path prefix, one
client shared by threads. Against the live server on loopback (``LiveServer``), with the
real client."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from connector.client import (
    KeygateClient,
    LicenseFileError,
    RequestRejected,
    Unavailable,
    verify_license_file,
)
from tests.factories import WebhookSender
from tests.functional.test_license_live import LiveServer, _pinned, live
from tests.licensing_helpers import issue_key

__all__ = ["live"]  # a fixture, used by name

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _under_prefix(app: WSGIApp, prefix: str) -> WSGIApp:
    """``app`` served under ``prefix``, as gunicorn's SCRIPT_NAME or a proxy's location
    block serves it: the request for /keygate/api/... reaches Keygate as /api/..."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(prefix + "/"):
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = prefix, path[len(prefix) :]
        return app(environ, start_response)

    return serve


class Prefixed(LiveServer):
    """The live app served under /keygate: ``url`` is the product's base URL."""

    def __init__(self, app: Flask) -> None:
        self.server = make_server(
            "127.0.0.1", 0, _under_prefix(app.wsgi_app, "/keygate"), threaded=True
        )
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/keygate"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def prefixed(app: Flask) -> Iterator[Prefixed]:
    server = Prefixed(app)
    yield server
    server.stop()


@pytest.mark.parametrize("slash", ["", "/"])
def test_keygate_under_a_path_prefix_answers_and_its_saved_answer_serves_offline(
    shop: WebhookSender, live: LiveServer, prefixed: Prefixed, tmp_path: Path, slash: str
) -> None:
    """A product configured with https://example.com/keygate (or .../keygate/): Keygate signs
    the path it routes, /api/v1/licenses/..., and the client accepts it (every answer was
    an UnverifiedAnswer); the answer it saved serves while Keygate is down."""
    key = issue_key(shop)
    keys, cache = _pinned(live), tmp_path / "cache.json"
    client = KeygateClient(prefixed.url + slash, keys, product="501", cache_path=cache, timeout=2)
    assert client.activate(key, site="shop.example.com").valid
    fresh = client.validate(key, site="shop.example.com")
    assert (fresh.valid, fresh.offline) == (True, False)
    prefixed.stop()
    for offline in (client, KeygateClient(prefixed.url, keys, product="501", cache_path=cache)):
        served = offline.validate(key, site="shop.example.com")
        assert (served.valid, served.offline, served.offline_reason) == (
            True,
            True,
            "unreachable",
        )


def test_one_client_shared_by_threads_saves_every_answer(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """A server product validating many installations from a thread pool, with one client:
    no call fails because another thread saved an answer while it was writing the cache
    (json.dump iterating the answers while one was added raised RuntimeError), and every
    valid answer ends up in the file."""
    keys = [issue_key(shop) for _ in range(12)]
    cache = tmp_path / "cache.json"
    # Answers saved by an earlier client (no request kept): never served, kept in the file,
    # and enough of them that writing the file takes a while.
    earlier = {"url": live.url + "/api/v1/licenses/validate", "headers": {}, "body": "{}"}
    cache.write_text(json.dumps({f"{slot:064x}": earlier for slot in range(3000)}))
    client = KeygateClient(live.url, _pinned(live), product="501", cache_path=cache)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda index: client.validate(keys[index % 12]), range(24)))
    assert all(result.valid and not result.offline for result in results)
    saved = json.loads(cache.read_text())
    assert len(saved) == 3000 + len(keys)
    assert all(client._cache_key(key, None, None) in saved for key in keys)


def test_a_cache_path_that_cannot_be_looked_at_never_fails_the_product(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """A cache path the system refuses to look at (here a name too long; a folder closed to
    the product's user is the same error, which root running these tests cannot meet):
    the client starts and answers, keeping its answers in memory (the product crashed in
    the constructor, on Python 3.11)."""
    key = issue_key(shop)
    unlookable = tmp_path / ("x" * 300) / "cache.json"
    client = KeygateClient(live.url, _pinned(live), product="501", cache_path=unlookable)
    assert client.validate(key).offline is False
    live.stop()
    served = client.validate(key)
    assert (served.valid, served.offline, served.offline_reason) == (True, True, "unreachable")


def test_clients_sharing_a_cache_file_keep_each_others_saved_answers(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """A vendor's two products (or two processes of one) with one cache file, both started
    before either saved an answer: each validate writes its own answer without erasing the
    other's (it wrote its whole memory over the file), so after a restart without Keygate
    both are served from the file."""
    cache = tmp_path / "cache.json"
    keys = _pinned(live)
    first, second = issue_key(shop, product_id=501), issue_key(shop, product_id=777)
    suite = {
        "501": KeygateClient(live.url, keys, product="501", cache_path=cache),
        "777": KeygateClient(live.url, keys, product="777", cache_path=cache),
    }
    assert suite["501"].validate(first).valid
    assert suite["777"].validate(second).valid
    live.stop()
    for product, key in (("501", first), ("777", second)):
        restarted = KeygateClient(live.url, keys, product=product, cache_path=cache, timeout=2)
        served = restarted.validate(key)
        assert (served.valid, served.offline) == (True, True), product


@pytest.mark.parametrize("bound_to", ["fingerprint", "site"])
def test_each_machine_or_site_keeps_its_own_saved_answer(
    shop: WebhookSender, live: LiveServer, tmp_path: Path, bound_to: str
) -> None:
    """A product validating several machines (or sites) with one key keeps one saved answer
    for each: a newer answer for one does not replace another's, and one refused (not
    activated there) does not end the others' offline grace: only the license's own end
    (revoked, suspended, gone) does."""
    key = issue_key(shop, activation_limit=2)
    keys, cache = _pinned(live), tmp_path / "cache.json"
    client = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
    seats = [{bound_to: f"seat-{n}.example.com"} for n in (1, 2)]
    for seat in seats:
        assert client.activate(key, **seat).valid
    for seat in seats:
        assert client.validate(key, **seat).valid
    refused = client.validate(key, **{bound_to: "seat-3.example.com"})
    assert (refused.valid, refused.code) == (False, f"{bound_to.upper()}_MISMATCH")
    live.stop()
    for offline in (client, KeygateClient(live.url, keys, product="501", cache_path=cache)):
        for seat in seats:
            served = offline.validate(key, **seat)
            assert (served.valid, served.offline) == (True, True), seat


def test_an_answer_one_client_forgot_is_not_brought_back_by_another_sharing_the_file(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """Two processes of a product share the cache file and both saved the key's good answer.
    Keygate revokes the key: the one that hears it forgets the answer; the other, saving an
    answer of its own later, must not write the revoked key's good answer back (it wrote
    every slot it had in memory), to be served offline after a restart."""
    cache = tmp_path / "cache.json"
    keys = _pinned(live)
    revoked, other = issue_key(shop), issue_key(shop)
    hears, saves = (KeygateClient(live.url, keys, product="501", cache_path=cache) for _ in "ab")
    assert hears.validate(revoked).valid and saves.validate(revoked).valid
    assert shop.admin("POST", f"/licenses/{revoked}/revoke").status_code == 200
    assert hears.validate(revoked).code == "REVOKED"
    assert saves.validate(other).valid
    live.stop()
    restarted = KeygateClient(live.url, keys, product="501", cache_path=cache, timeout=2)
    assert restarted.validate(other).offline
    with pytest.raises(Unavailable):
        restarted.validate(revoked)


def test_processes_sharing_a_cache_file_serve_offline_what_it_holds_now(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """Workers of a product share the cache file, each with its own client, and one cannot
    reach Keygate. It serves the answer another worker saved since it started (it had none
    in memory: Unavailable), and once that worker has heard the key revoked and forgotten
    the answer, no longer the one it kept in memory (it served it for the rest of the grace
    period)."""
    cache = tmp_path / "cache.json"
    keys = _pinned(live)
    key = issue_key(shop)
    online = KeygateClient(live.url, keys, product="501", cache_path=cache)
    cut_off = KeygateClient("http://127.0.0.1:9", keys, product="501", cache_path=cache)
    assert online.validate(key).valid
    served = cut_off.validate(key)
    assert (served.valid, served.offline) == (True, True)
    assert shop.admin("POST", f"/licenses/{key}/revoke").status_code == 200
    assert online.validate(key).code == "REVOKED"
    with pytest.raises(Unavailable):
        cut_off.validate(key)


def test_a_key_or_site_read_from_bytes_that_are_not_utf8_is_refused_not_a_crash(
    shop: WebhookSender, live: LiveServer
) -> None:
    """A key or site the product read from argv, the environment or a file holding bytes that
    are not UTF-8 (Python makes them lone surrogates): validate and deactivate send it and
    raise Keygate's 422 as activate does, which the product can catch (they raised
    UnicodeEncodeError before sending), and a license file checked with such a key is one
    for another key (it said "damaged")."""
    key = issue_key(shop)
    keys = _pinned(live)
    client = KeygateClient(live.url, keys, product="501")
    typed = key + os.fsdecode(b"\xff")
    assert "\udcff" in typed
    bad_site = os.fsdecode(b"b\xfcd.example.com")
    for call in (client.validate, client.deactivate, client.activate):
        for asked in ({"key": typed, "site": "shop.example.com"}, {"key": key, "site": bad_site}):
            with pytest.raises(RequestRejected) as refused:
                call(**asked)
            assert refused.value.status == 422
    file = client.checkout(key).data["license_file"]
    with pytest.raises(LicenseFileError, match="another key"):
        verify_license_file(file, keys, key=typed)


def test_pinned_keys_given_wrong_are_named_and_a_clients_keys_check_a_file(
    shop: WebhookSender, live: LiveServer
) -> None:
    """A developer pinning a key wrong (its hex, a line break pasted with it, the signing-keys
    list itself) hears which key and what Keygate publishes, when the client is made (it
    was binascii's "Incorrect padding" or an AttributeError); and the client's own checked
    keys, passed to verify_license_file, check a file (a TypeError)."""
    keys = _pinned(live)
    [(kid, public_key)] = keys.items()
    as_hex = base64.b64decode(public_key).hex()
    for wrong in (as_hex, public_key + "\n", public_key[:-4]):
        with pytest.raises(ValueError, match=f"pinned as '{kid}'.*signing-keys") as raised:
            KeygateClient(live.url, {kid: wrong}, product="501")
        assert public_key not in str(raised.value)
    listed = [{"kid": kid, "public_key": public_key}]
    with pytest.raises(TypeError, match=r"\{kid: public_key\}"):
        KeygateClient(live.url, listed, product="501")  # type: ignore[arg-type]
    key = issue_key(shop)
    client = KeygateClient(live.url, keys, product="501")
    file = client.checkout(key).data["license_file"]
    assert verify_license_file(file, client.public_keys, key=key)["license"]


def test_a_product_id_given_as_a_number_works_as_its_text(
    shop: WebhookSender, live: LiveServer, tmp_path: Path
) -> None:
    """``product=501`` (an id as WooCommerce's REST API gives it) works in every call as
    ``"501"`` does, its saved answer serving offline too: validate was a TypeError while
    the client named the answer's slot in the cache (the other calls took the number)."""
    key = issue_key(shop)
    keys, cache = _pinned(live), tmp_path / "cache.json"
    client = KeygateClient(live.url, keys, product=501, cache_path=cache, timeout=2)
    assert client.activate(key, site="shop.com").valid
    assert client.validate(key, site="shop.com").valid
    assert client.check_update(key, "1.0").code == "VALID"
    file = client.checkout(key, site="shop.com").data["license_file"]
    assert verify_license_file(file, keys, key=key, product=501, site="shop.com")
    live.stop()
    for offline in (client, KeygateClient(live.url, keys, product="501", cache_path=cache)):
        served = offline.validate(key, site="shop.com")
        assert (served.valid, served.offline) == (True, True)


class BehindNginx(LiveServer):
    """The live app behind nginx with ``proxy_set_header Host $host;``, as "At scale"
    advises: Keygate receives the host name alone, in lower case, without the port the
    product's base URL names."""

    def __init__(self, app: Flask) -> None:
        def host_only(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            environ["HTTP_HOST"] = environ["HTTP_HOST"].rpartition(":")[0].lower()
            return app.wsgi_app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, host_only, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


def test_answers_verify_behind_a_proxy_passing_the_host_without_its_port(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """Keygate on a port of its own behind nginx's ``$host`` signs the host name without
    the port (and in lower case): the client accepts that name too (every answer was an
    UnverifiedAnswer, for every customer), online and for its saved answer offline."""
    key = issue_key(shop)
    server = BehindNginx(app)
    keys, cache = _pinned(server), tmp_path / "cache.json"
    try:
        client = KeygateClient(server.url, keys, product="501", cache_path=cache, timeout=2)
        assert client.activate(key, site="shop.com").valid
        fresh = client.validate(key, site="shop.com")
        assert (fresh.valid, fresh.offline) == (True, False)
    finally:
        server.stop()
    served = KeygateClient(server.url, keys, product="501", cache_path=cache).validate(
        key, site="shop.com"
    )
    assert (served.valid, served.offline, served.offline_reason) == (True, True, "unreachable")

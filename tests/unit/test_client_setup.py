"""Making a client: the address of Keygate given wrong is named when the client is made,
not at the first call (urllib's "unknown url type", or a call gone to the wrong place)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connector.client import KeygateClient, verify_license_file

PUBLIC_KEY = base64.b64encode(
    Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()


@pytest.mark.parametrize(
    "base_url",
    [
        "keygate.example.com",  # no scheme
        "keygate.example.com/api",
        "ftp://keygate.example.com",
        "https://",
        "https://keygate.example.com:99999",
        "https://keygate.example.com/?store=1",
        "https://keygate.example.com/#top",
        "",
        # Host names no resolver takes: every call raised UnicodeError, not Unavailable.
        "https://licenses..example.com",
        "https://" + "a" * 64 + ".example.com",
    ],
)
def test_an_address_that_is_not_keygates_is_refused_naming_it(base_url: str) -> None:
    with pytest.raises(ValueError, match="is not the address Keygate is served at") as refused:
        KeygateClient(base_url, {"k1": PUBLIC_KEY})
    assert repr(base_url) in str(refused.value)


def test_an_address_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError, match="no user name") as refused:
        KeygateClient("https://vendor:hunter2@keygate.example.com", {"k1": PUBLIC_KEY})
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("base_url", "kept"),
    [
        ("https://keygate.example.com/", "https://keygate.example.com"),
        ("HTTPS://Keygate.Example.com", "HTTPS://Keygate.Example.com"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://example.com/keygate/", "https://example.com/keygate"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_an_http_address_with_or_without_a_path_prefix_is_taken(base_url: str, kept: str) -> None:
    assert KeygateClient(base_url, {"k1": PUBLIC_KEY}).base_url == kept


def test_a_cache_under_a_home_that_cannot_be_found_keeps_answers_in_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``~`` with no home to expand to (a container's user without HOME or passwd entry;
    here a user that does not exist) is a client without a cache file, not a RuntimeError
    from the product's start."""
    client = KeygateClient(
        "https://keygate.example.com", {"k1": PUBLIC_KEY}, cache_path="~nosuchuser-kg/cache.json"
    )
    assert client.cache_path is None
    assert "kept in memory" in caplog.text


@pytest.mark.parametrize(("name", "value"), [("product", ""), ("product", "  "), ("store", "")])
def test_an_empty_product_or_store_is_named_when_the_client_is_made(name: str, value: str) -> None:
    """A product or store setting never filled in (``os.environ.get(..., "")``) is a
    ValueError naming it, as an empty site is: Keygate reads ``""`` as a product and store
    no key is for, so every buyer's key was ``PRODUCT_MISMATCH``. None is none."""
    with pytest.raises(ValueError, match=f"{name} is empty"):
        KeygateClient("https://keygate.example.com", {"k1": PUBLIC_KEY}, **{name: value})
    assert getattr(KeygateClient("https://k.example.com", {"k1": PUBLIC_KEY}), name) is None


CALLS_TAKING_A_KEY: dict[str, Any] = {
    "validate": lambda client, key: client.validate(key, site="shop.com"),
    "activate": lambda client, key: client.activate(key, site="shop.com"),
    "deactivate": lambda client, key: client.deactivate(key, site="shop.com"),
    "check_update": lambda client, key: client.check_update(key, "1.0.0"),
    "checkout": lambda client, key: client.checkout(key, site="shop.com"),
    # key=None is no key there (a plain file checked without one): not a mistake.
    "verify_license_file": lambda client, key: verify_license_file(
        "not a file", {"k1": PUBLIC_KEY}, key=key
    ),
}


@pytest.mark.parametrize("call", sorted(CALLS_TAKING_A_KEY))
@pytest.mark.parametrize("key", [None, 12345, b"KG-AAAAA-BBBBB", ["KG-AAAAA-BBBBB"]])
def test_a_key_that_is_not_text_is_a_type_error_naming_it_before_anything_is_sent(
    call: str, key: object
) -> None:
    """``client.validate(None)`` (a setting never filled in) says the key must be text, in
    every call taking a key and in ``verify_license_file``, not an AttributeError from deep
    inside, nor a request sent without a key. Port 9 on loopback answers nothing: a call
    that went out would be ``Unavailable``."""
    if call == "verify_license_file" and key is None:
        pytest.skip("verify_license_file(key=None) checks a file without a key")
    client = KeygateClient("http://127.0.0.1:9", {"k1": PUBLIC_KEY}, timeout=2)
    with pytest.raises(TypeError, match=r"key must be the license key as text \(str\)"):
        CALLS_TAKING_A_KEY[call](client, key)

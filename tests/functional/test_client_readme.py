"""The client library as a product developer meets it: the README's snippet, run as written
(``connector/client.py`` vendored as ``keygate_client``) against the live server on loopback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from flask import Flask

from connector.client import KeygateClient, LicenseFileError, SignatureError, verify_license_file
from connector.db import db
from tests.factories import WebhookSender
from tests.functional.test_license_live import LiveServer, _pinned, live
from tests.licensing_helpers import issue_key, wait_until_serving

__all__ = ["live"]  # a fixture, used by name

ROOT = Path(__file__).resolve().parents[2]


def _readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("**Client library.**", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readmes_client_snippet_runs_as_written(
    shop: WebhookSender, live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the URL, the pinned keys and the store id are this test's; the rest is the
    README's text: it activates, validates, asks for updates and checks out a file that
    verifies offline."""
    shutil.copy(ROOT / "connector" / "client.py", tmp_path / "keygate_client.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # the snippet's cache_path is under ~
    snippet = _readme_snippet()
    for placeholder in ('"https://licenses.example.com"', '"1b607c89daa6a50f"', "PINNED = {"):
        assert placeholder in snippet
    code = snippet.replace('"https://licenses.example.com"', repr(live.url))
    code = code.replace('"1b607c89daa6a50f"', repr(shop.store.store.public_id))
    code = re.sub(r"PINNED = \{.*\}", f"PINNED = {_pinned(live)!r}", code)
    key = issue_key(shop)
    names: dict[str, object] = {"key": key}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - the README's own snippet
    result = names["result"]
    assert (result.valid, result.code, result.offline) == (True, "VALID", False)  # type: ignore[attr-defined]
    assert names["update"] is None  # no release published
    content = names["content"]
    assert isinstance(content, dict) and content["site"] == "shop.example.com"
    assert (tmp_path / ".myapp" / "keygate-cache.json").exists()


def test_a_refused_checkout_is_a_license_file_error_not_a_crash(
    shop: WebhookSender, live: LiveServer
) -> None:
    """A refused checkout answers ``license_file: null``: handed to ``verify_license_file`` as
    the README's snippet does, it is a LicenseFileError the product can catch (not an
    AttributeError); a file read from disk as bytes verifies like its text."""
    keys = _pinned(live)
    key = issue_key(shop, activation_limit=1)
    client = KeygateClient(live.url, keys, product="501")
    refused = client.checkout(key, site="never-activated.com")
    assert (refused.code, refused.data["license_file"]) == ("NO_ACTIVATION", None)
    for missing in (None, 42):
        with pytest.raises(LicenseFileError, match="not a Keygate license file"):
            verify_license_file(missing, keys, key=key)  # type: ignore[arg-type]
    file = client.checkout(key).data["license_file"]
    assert verify_license_file(file.encode(), keys, key=key)["license"]["status"] == "active"  # type: ignore[arg-type]
    with pytest.raises(LicenseFileError, match="not a Keygate license file"):
        verify_license_file(b"\xff" + file.encode(), keys, key=key)  # type: ignore[arg-type]


def test_after_a_rotation_what_the_retired_key_signed_still_verifies(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """The README's rotation, as a product lives it: it pinned the active and the next key
    (``--prepare``); after the rotation new answers verify, and the saved answer and the
    license file the retired key signed still do (its key stays pinned). A product that
    pinned only the old key refuses the new key's answers (it must ship the next key)."""
    from connector.signing import forget_cached_signer, prepare_signing_key, rotate_signing_key

    key = issue_key(shop)
    server = LiveServer(app)
    wait_until_serving(server.port)
    old = _pinned(server)
    with app.app_context():
        prepare_signing_key(db.session)
        db.session.commit()
    forget_cached_signer(app)
    pinned = _pinned(server)  # the active and the next key
    assert len(pinned) == 2
    cache = tmp_path / "cache.json"
    client = KeygateClient(server.url, pinned, product="501", cache_path=cache, timeout=2)
    assert client.validate(key).valid
    file = client.checkout(key).data["license_file"]
    with app.app_context():
        rotate_signing_key(db.session)
        db.session.commit()
    forget_cached_signer(app)
    assert client.activate(key, site="a.com").valid  # signed by the new key
    with pytest.raises(SignatureError, match="unknown signing key"):
        KeygateClient(server.url, old, product="501").activate(key, site="a.com")
    server.stop()
    assert verify_license_file(file, pinned, key=key)["license"]["status"] == "active"
    offline = KeygateClient(server.url, pinned, product="501", cache_path=cache, timeout=2)
    assert offline.validate(key).offline is True  # the answer the retired key signed

"""The client fetching the update an update-check offers, against the live server: it keeps
the file only if it is the release Keygate's signed answer describes."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from connector import get_settings
from connector.client import KeygateClient, Unavailable, UpdateRejected
from tests.factories import WebhookSender
from tests.licensing_helpers import free_port, issue_key, public_keys, wait_until_serving

RELEASE = b"PK zip bytes of release 1.4.0 " * 1000


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """The app's base URL is where it is served: download URLs are made with it."""
    return {"base_url": f"http://127.0.0.1:{free_port()}"}


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    url = app.extensions["keygate.settings"].base_url
    port = int(url.rsplit(":", 1)[1])
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    wait_until_serving(port)
    yield url
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def release(app: Flask, shop: WebhookSender, stored: bytes, **published: Any) -> None:
    """Release 1.4.0 of product 501, published as RELEASE, with ``stored`` in storage."""
    with app.app_context():
        target = get_settings().storage_dir / "releases" / "plugin-1.4.0.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(stored)
    body = {
        "version": "1.4.0",
        "object_key": "releases/plugin-1.4.0.zip",
        "sha256": hashlib.sha256(RELEASE).hexdigest(),
        "size": len(RELEASE),
        "published_at": (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(),
        **published,
    }
    assert shop.admin("POST", "/products/501/releases", body).status_code == 201


def client_for(shop: WebhookSender, url: str) -> KeygateClient:
    return KeygateClient(url, public_keys(shop.client), product="501")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The product's own folder, where it installs the update."""
    made = tmp_path / "product"
    made.mkdir()
    return made


def test_the_offered_release_is_fetched_and_checked(
    app: Flask, shop: WebhookSender, served: str, folder: Path
) -> None:
    key = issue_key(shop)
    release(app, shop, RELEASE)
    client = client_for(shop, served)
    update = client.check_update(key, "1.0.0").data["update"]
    saved = client.download_update(update, folder / "plugin.zip")
    assert saved == folder / "plugin.zip"
    assert saved.read_bytes() == RELEASE
    assert sorted(p.name for p in folder.iterdir()) == ["plugin.zip"]  # no part left


@pytest.mark.parametrize(
    "stored",
    [
        RELEASE[:-1] + b"!",  # same size, other bytes: a file swapped in storage
        RELEASE + b"more",  # longer than the release
        RELEASE[:100],  # shorter
    ],
    ids=["swapped", "longer", "shorter"],
)
def test_a_file_that_is_not_the_release_is_refused_and_nothing_kept(
    app: Flask, shop: WebhookSender, served: str, folder: Path, stored: bytes
) -> None:
    key = issue_key(shop)
    release(app, shop, stored)
    client = client_for(shop, served)
    update = client.check_update(key, "1.0.0").data["update"]
    destination = folder / "plugin.zip"
    destination.write_bytes(b"the version installed now")
    with pytest.raises(UpdateRejected):
        client.download_update(update, destination)
    assert destination.read_bytes() == b"the version installed now"
    assert sorted(p.name for p in folder.iterdir()) == ["plugin.zip"]


def test_a_url_that_no_longer_works_or_no_offer_is_said_so(
    app: Flask, shop: WebhookSender, served: str, folder: Path
) -> None:
    key = issue_key(shop)
    release(app, shop, RELEASE)
    client = client_for(shop, served)
    update = dict(client.check_update(key, "1.0.0").data["update"])
    update["download_url"] = update["download_url"][:-4] + "abcd"  # expired or tampered
    with pytest.raises(Unavailable, match="ask check_update again"):
        client.download_update(update, folder / "plugin.zip")
    none_offered = client.check_update(key, "1.4.0").data["update"]
    assert none_offered is None
    with pytest.raises(ValueError, match="None when no update is offered"):
        client.download_update(none_offered, folder / "plugin.zip")
    with pytest.raises(ValueError, match="no http"):
        client.download_update({**update, "download_url": "file:///etc/passwd"}, folder / "x")
    assert list(folder.iterdir()) == []


def test_the_readmes_snippet_installs_an_offered_update(
    app: Flask,
    shop: WebhookSender,
    served: str,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's client snippet with a release out: its ``if update:`` branch runs as
    written (test_client_readme runs it with none offered), and the release lands where
    the snippet puts it."""
    from tests.functional.test_client_readme import ROOT, _readme_snippet

    shutil.copy(ROOT / "connector" / "client.py", tmp_path / "keygate_client.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    key = issue_key(shop)
    release(app, shop, RELEASE)
    snippet = _readme_snippet()
    for placeholder in ('"https://licenses.example.com"', '"/opt/myapp/updates/myapp.zip"'):
        assert placeholder in snippet
    code = snippet.replace('"https://licenses.example.com"', repr(served))
    code = code.replace('"/opt/myapp/updates/myapp.zip"', repr(str(folder / "myapp.zip")))
    code = code.replace('"1b607c89daa6a50f"', repr(shop.store.store.public_id))
    code = re.sub(r"PINNED = \{.*\}", f"PINNED = {public_keys(shop.client)!r}", code)
    names: dict[str, object] = {"key": key}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - the README's own snippet
    assert names["update"]["version"] == "1.4.0"  # type: ignore[index]
    assert (folder / "myapp.zip").read_bytes() == RELEASE
    assert sorted(p.name for p in folder.iterdir()) == ["myapp.zip"]

"""The client library as a product developer meets it: the README's snippet, run as written
(``connector/client.py`` vendored as ``keygate_client``) against the live server on loopback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from connector.client import KeygateClient, LicenseFileError, verify_license_file
from tests.factories import WebhookSender
from tests.functional.test_license_live import LiveServer, _pinned, live
from tests.licensing_helpers import issue_key

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

"""Site identity: one canonical host per site; staging by whole labels only."""

from __future__ import annotations

import pytest

from connector.errors import ValidationFailed
from connector.licensing.sites import is_staging_site, normalize_site, shown_site


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("https://WWW.Bücher.example:443/shop/", "xn--bcher-kva.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example.", "xn--bcher-kva.example"),
        ("HTTP://Shop.COM", "shop.com"),
        ("shop.com:8080/path?query=1#frag", "shop.com"),
        ("user:secret@shop.com", "shop.com"),
        ("www.shop.co.uk", "shop.co.uk"),
        ("www.com", "www.com"),
        ("WWW.LOCALHOST:8080", "localhost"),
        ("www.example", "www.example"),
        ("faß.de", "xn--fa-hia.de"),
        ("ШОП.рф", "xn--n1acz.xn--p1ai"),
        ("192.0.2.10", "192.0.2.10"),
        ("http://192.0.2.10:8080/", "192.0.2.10"),
        ("[2001:DB8::1]:443", "2001:db8::1"),
        ("localhost:3000", "localhost"),
        # Bare IPv6, as Keygate answers it; a zone names the sender's interface, not a site.
        ("2001:db8::1", "2001:db8::1"),
        ("::1", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("http://[fe80::1%25" + "a" * 1000 + "]/", "fe80::1"),
        # Dots IDNA maps to ".": a trailing one goes like an ASCII one.
        ("shop.com\u3002", "shop.com"),
        ("Shop.com\uff0e", "shop.com"),
        ("shop.com\uff61", "shop.com"),
    ],
)
def test_site_forms_normalize_to_one_host(raw: str, canonical: str) -> None:
    """Scheme, www., port, path, trailing dot, case and IDNA never make a second site."""
    assert normalize_site(raw) == canonical


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "not a site",
        "http://",
        "a_b.com",
        "-bad-.com",
        "999.1.1.1",
        "192.168.001.1",
        "example",
        "exa mple.com",
        "http://[::1",
        "x" * 300 + ".com",
        "shop\n.com",
    ],
)
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(ValidationFailed):
        normalize_site(garbage)


@pytest.mark.parametrize(
    "site",
    [
        "localhost",
        "127.0.0.1",
        "::1",
        "::ffff:7f00:1",  # ::ffff:127.0.0.1 as normalize_site keeps it
        "shop.test",
        "shop.local",
        "app.localhost",
        "x.example",
        "shop.invalid",
        "staging.shop.com",
        "stage.shop.com",
        "dev.shop.com",
        "test.shop.com",
        "local.shop.com",
        "shop.staging.example.com",
        "a.b.staging.shop.co",
        "dev.shop.co.uk",
        "a.staging.shop.com.au",
        # co.com and net.com are domains: only under a country's two-letter TLD is "co" or
        # "net" a second level that domains are registered under.
        "dev.co.com",
        "shop.staging.net.com",
    ],
)
def test_staging_sites(site: str) -> None:
    assert is_staging_site(site)
    if not site[-1].isdigit() and ":" not in site:  # a name, however its trailing dot is written
        assert is_staging_site(normalize_site(site + "\u3002"))


@pytest.mark.parametrize(
    "site",
    [
        "devices.com",
        "shop.com",
        "mystaging.com",
        "staging-shop.com",
        "shop.dev",
        "testing.com",
        "developer.shop.com",
        "shop.localdomain.com",
        "shop.com.staging",
        "192.0.2.10",
        "test.de",
        "test.co.uk",
        "dev.com.au",
        "shop.staging.co.uk",
        "local.ch",
        "dev.to",
        "staging.io",
        "::ffff:c000:20a",  # ::ffff:192.0.2.10
    ],
)
def test_production_sites(site: str) -> None:
    """Substrings never count: devices.com is production; staging must be a whole label
    before the registrable domain (the last two labels), and a staging first label that is
    the domain itself (test.de, a real shop) is production."""
    assert not is_staging_site(site)


@pytest.mark.parametrize(
    ("site", "shown"),
    [
        ("xn--bcher-kva.example", "bücher.example (xn--bcher-kva.example)"),
        # A Cyrillic a (U+0430) in paypal.com: both forms, so it cannot pass for the real one.
        ("xn--pypal-4ve.com", "p\u0430ypal.com (xn--pypal-4ve.com)"),
        ("shop.example.com", "shop.example.com"),
        ("2001:db8::1", "2001:db8::1"),
        ("xn--a.example", "xn--a.example"),  # not valid punycode: as kept
    ],
)
def test_a_site_is_shown_in_its_own_script_beside_its_ascii_form(site: str, shown: str) -> None:
    assert shown_site(site) == shown
    if shown != site:  # what is shown first is the same site again
        assert normalize_site(shown.partition(" (")[0]) == site

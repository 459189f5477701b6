"""Site identity: one canonical host per site, and which sites are staging sites.

A site is a host: lowercased, IDNA (UTS #46) to its ASCII form, a leading ``www.`` and a
trailing dot dropped; scheme, user info, port, path and query are ignored. An IP literal is a
host too (IPv6 in its compressed form, without brackets or zone). So ``https://WWW.Bücher.example:443/shop/``
and ``bücher.example`` are both ``xn--bcher-kva.example``.
"""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

import idna

from connector.errors import ValidationFailed

MAX_SITE_INPUT = 2048
STAGING_TLDS = frozenset({"test", "local", "localhost", "example", "invalid"})
STAGING_FIRST_LABELS = frozenset({"staging", "stage", "dev", "test", "local"})
# Second-level labels under which a country's domains are registered (``shop.co.uk``,
# ``shop.com.au``): there the registrable domain is three labels, not two.
COUNTRY_SECOND_LEVELS = frozenset({"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or"})


def _invalid(detail: str) -> ValidationFailed:
    return ValidationFailed(f"site {detail}", field="site")


@functools.lru_cache(maxsize=4096)
def normalize_site(raw: str) -> str:
    """The canonical host of ``raw`` (a URL or a bare host).

    Raises:
        ValidationFailed: ``raw`` does not name a host (422).
    """
    text = raw.strip()
    if not text or len(text) > MAX_SITE_INPUT or any(ord(c) < 33 for c in text):
        raise _invalid("must be a host name or URL without spaces")
    if "://" not in text:
        bare_ip = _ip_literal(text)  # "2001:db8::1" as Keygate answers it, without brackets
        if bare_ip is not None:
            return bare_ip
        text = "//" + text
    try:
        host = urlsplit(text).hostname
    except ValueError:
        raise _invalid("is not a valid URL") from None
    if not host:
        raise _invalid("has no host")
    host = host.rstrip(".")
    ip = _ip_literal(host)
    if ip is not None:
        return ip
    if all(label.isdigit() for label in host.split(".")):
        raise _invalid("is not a valid IP address")
    try:
        ascii_host = idna.encode(host, uts46=True, std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        raise _invalid("is not a valid host name") from None
    # Lowercase, and without a trailing dot the IDNA mapping made ("shop.com。").
    ascii_host = ascii_host.lower().rstrip(".")
    # ``www.`` goes when what remains is a site itself: www.shop.com and www.localhost are
    # shop.com and localhost; www.com and www.example stay (com, example name no site).
    rest = ascii_host.removeprefix("www.")
    if rest != ascii_host and ("." in rest or rest == "localhost"):
        ascii_host = rest
    if len(ascii_host) > 253 or ("." not in ascii_host and ascii_host != "localhost"):
        raise _invalid("must be a full host name such as example.com")
    return ascii_host


def shown_site(site: str) -> str:
    """A site as people read it: a host with IDNA labels in its own script first, then the
    ``xn--`` form it is kept and answered in (``bücher.example (xn--bcher-kva.example)``).
    Both, so that a look-alike host (a Cyrillic letter for a Latin one) cannot pass for another;
    any other site, or one that does not decode, as kept."""
    if not any(label.startswith("xn--") for label in site.split(".")):
        return site
    try:
        unicode_host = idna.decode(site)
    except (idna.IDNAError, UnicodeError, ValueError):
        return site
    return f"{unicode_host} ({site})"


def _ip_literal(host: str) -> str | None:
    """The IP address ``host`` is, compressed, or None. An IPv6 zone (``%eth0``) is dropped:
    it names an interface of the machine that sent it, not a site."""
    try:
        return ipaddress.ip_address(host.partition("%")[0]).compressed
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def is_staging_site(site: str) -> bool:
    """Whether a canonical site is a staging site. Whole labels only, never substrings.

    ``localhost``; a TLD of test, local, localhost, example or invalid; a first label of
    staging, stage, dev, test or local in front of a domain (``dev.shop.com``; not the
    domain itself: ``test.de``, ``local.ch`` and ``test.co.uk`` are real shops); or a
    ``staging`` label before the registrable domain (``shop.staging.example.com``): its
    last two labels, or three under a country's second level (``co.uk``, ``com.au``: see
    :data:`COUNTRY_SECOND_LEVELS`). Loopback IP addresses
    count as ``localhost``, an IPv4-mapped one (``::ffff:127.0.0.1``, kept as
    ``::ffff:7f00:1``) as its IPv4 address.
    """
    try:
        address = ipaddress.ip_address(site)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped.is_loopback
        return address.is_loopback
    labels = site.split(".")
    if site == "localhost" or labels[-1] in STAGING_TLDS:
        return True
    domain = 3 if len(labels[-1]) == 2 and labels[-2] in COUNTRY_SECOND_LEVELS else 2
    if len(labels) > domain and labels[0] in STAGING_FIRST_LABELS:
        return True
    return "staging" in labels[:-domain]

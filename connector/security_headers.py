"""Security headers on every answer, added by one after-request hook.

Every response: ``X-Content-Type-Options: nosniff`` (a download or a JSON body is never
sniffed into a page). Pages (``text/html``): no framing (``X-Frame-Options`` and CSP
``frame-ancestors``), no ``<base>`` or plugins, and a ``Referer`` only to Keygate itself
(``same-origin``): portal and download pages carry their bearer token in the URL, and
Flask-WTF refuses a form posted over https without a same-origin ``Referer``; a view that
sends none keeps its ``no-referrer`` (a download link's answers). Nothing but
Keygate's own images and the pages' inline styles loads (``default-src 'none'``): no
script runs on a page (an injected one would not either), injected markup fetches nothing
from elsewhere, and forms post to Keygate only (``form-action 'self'``).
Pages are ``Cache-Control: no-store`` (they show keys, addresses, orders), and so are the
owner's JSON answers (``/api/v1/admin/``: license keys, download and portal links, emails).
``Strict-Transport-Security`` when the public base URL is https (then every browser-facing
answer carries it, pages or not).

The license API (``/api/v1/licenses/``) is the hot path and is called by products, not
browsers: it gets ``nosniff`` and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, request

LICENSE_PREFIX = "/api/v1/licenses/"
ADMIN_API_PREFIX = "/api/v1/admin/"
HSTS = ("Strict-Transport-Security", "max-age=31536000")
PAGE_HEADERS = (
    ("X-Frame-Options", "DENY"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
)
REFERRER_POLICY = ("Referrer-Policy", "same-origin")


def security_headers(*, https: bool) -> Callable[[Response], Response]:
    """The after-request hook for an app whose public base URL is https (or not).

    Args:
        https: whether the configured public base URL is https: only then is HSTS sent
            (over plain http a browser ignores it, and a test or local setup must not
            be pinned to https).
    """
    page_headers = (*PAGE_HEADERS, HSTS) if https else PAGE_HEADERS

    def add_security_headers(response: Response) -> Response:
        headers = response.headers
        headers["X-Content-Type-Options"] = "nosniff"
        if response.mimetype == "text/html":
            for name, value in page_headers:
                headers[name] = value
            # A view's own policy stays: a download link's answers send no Referer at all
            # (its redirect to the bucket is a page too, and same-origin would send the
            # buyer's order page, its token in it, to a bucket at Keygate's own origin).
            headers.setdefault(*REFERRER_POLICY)
            # Pages show keys, addresses and orders: never kept in a browser's or proxy's
            # cache (a page that says more keeps its own).
            headers.setdefault("Cache-Control", "no-store")
            return response
        if request.path.startswith(ADMIN_API_PREFIX):
            # Keys, links and addresses: no browser or proxy keeps a copy either.
            headers.setdefault("Cache-Control", "no-store")
        if https and not request.path.startswith(LICENSE_PREFIX):
            headers[HSTS[0]] = HSTS[1]
        return response

    return add_security_headers

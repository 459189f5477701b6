"""Unbound Flask extensions, bound in ``create_app``."""

from __future__ import annotations

from flask import request
from flask_limiter import Limiter
from flask_wtf.csrf import CSRFProtect


def client_ip() -> str:
    """The caller's address as the WSGI server saw it.

    Behind a proxy, set KEYGATE_PROXY_HOPS (werkzeug's ProxyFix) so that ``remote_addr`` is
    the client and not the proxy; otherwise forwarded headers are ignored (they can be forged).
    """
    return request.remote_addr or "unknown"


class DecoratorLimiter(Limiter):
    """Flask-Limiter with its limits on the routes that name them, and nowhere else.

    Keygate sets no default or application-wide limits: routes opt in with
    ``@limiter.limit``, which checks in the decorator. Flask-Limiter's before-request pass
    over every other request (license calls, download clicks, webhooks) would only look
    for limits and find none, so it is skipped.
    """

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        if not in_middleware:
            super()._check_request_limit(callable_name=callable_name, in_middleware=False)


limiter = DecoratorLimiter(key_func=client_ip, default_limits=[], headers_enabled=True)
csrf = CSRFProtect()

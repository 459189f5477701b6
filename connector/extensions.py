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


limiter = Limiter(key_func=client_ip, default_limits=[], headers_enabled=True)
csrf = CSRFProtect()

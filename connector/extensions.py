"""Unbound Flask extensions, bound in ``create_app``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import partial, wraps
from typing import Any, TypeVar

from flask import Flask, g, request
from flask_limiter import Limiter
from flask_wtf.csrf import CSRFProtect

from connector.vault.crypto import keyed_hash

T = TypeVar("T")
RATELIMIT_IP_HASH = "ratelimit-ip"
_IP_KEY = "_keygate_ratelimit_ip"
_NETWORK_KEY = "_keygate_ratelimit_network"


def client_ip() -> str:
    """The caller's address as the WSGI server saw it.

    Behind a proxy, set KEYGATE_PROXY_HOPS (werkzeug's ProxyFix) so that ``remote_addr`` is
    the client and not the proxy; otherwise forwarded headers are ignored (they can be forged).
    """
    return request.remote_addr or "unknown"


def client_ip_key() -> str:
    """The caller's address as a rate-limit key: a keyed hash, never the address itself.

    Rate-limit counters live in their storage (Redis at scale) under this key; one address
    is still one key, so limits count per IP exactly as before. Made once per request.
    """
    key: str | None = g.get(_IP_KEY)
    if key is None:
        key = keyed_hash(RATELIMIT_IP_HASH, client_ip())
        setattr(g, _IP_KEY, key)
    return key


def client_network() -> str:
    """The caller as one holder of addresses: an IPv6 address is its /64 (one subscriber's
    network, whose 2^64 addresses its holder can rotate through), an IPv4-mapped IPv6
    address (``::ffff:192.0.2.1``, as a dual-stack socket sees an IPv4 caller) the IPv4
    address itself, any other address (or none) as :func:`client_ip` gives it."""
    ip = client_ip()
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return ip


def client_network_key() -> str:
    """The caller's network (:func:`client_network`) as a rate-limit key, for the license
    API's per-IP budget and the owner's sign-in and password page: a guesser cannot rotate
    through a /64 with a limit for each address. A keyed hash, never the address; an IPv4
    caller's is :func:`client_ip_key`. Made once per request."""
    key: str | None = g.get(_NETWORK_KEY)
    if key is None:
        network = client_network()
        key = client_ip_key() if network == client_ip() else keyed_hash(RATELIMIT_IP_HASH, network)
        setattr(g, _NETWORK_KEY, key)
    return key


_CHECKED = "_keygate_limits_checked"


class DecoratorLimiter(Limiter):
    """Flask-Limiter with its limits on the routes that name them, and nowhere else.

    Keygate sets no default or application-wide limits: routes opt in with
    ``@limiter.limit``, which checks in the decorator. On every other request (license
    calls, download clicks, webhooks) Flask-Limiter's hooks would only look for limits and
    find none: its before-request pass is skipped, and its after-request (rate-limit
    headers) and teardown hooks run only on requests whose limits it checked.
    """

    def init_app(self, app: Flask) -> None:
        # One limiter object serves every app of the process (tests build many): an app
        # starts with its own storage reachable, not with an earlier app's fallback state.
        self._storage_dead = False
        super().init_app(app)
        for hooks in (app.after_request_funcs[None], app.teardown_request_funcs[None]):
            hooks[:] = [_only_if_checked(h) if _bound_to(h, self) else h for h in hooks]

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        if not in_middleware:
            setattr(g, _CHECKED, True)
            super()._check_request_limit(callable_name=callable_name, in_middleware=False)


def _bound_to(hook: Callable[..., Any], owner: object) -> bool:
    if isinstance(hook, partial):
        return any(arg is owner for arg in hook.args)
    return getattr(hook, "__self__", None) is owner


def _only_if_checked(hook: Callable[[T], T]) -> Callable[[T], T]:
    @wraps(hook)
    def run(value: T) -> T:
        return hook(value) if g.get(_CHECKED) else value

    return run


# Each caller's network (an IPv6 /64, an IPv4 address): the buyer's portal forms too.
limiter = DecoratorLimiter(key_func=client_network_key, default_limits=[], headers_enabled=True)
csrf = CSRFProtect()

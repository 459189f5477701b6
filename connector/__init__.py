"""Keygate's connector: the Flask service.

``create_app(overrides)`` reads settings once, binds extensions, registers the blueprints and
the error handlers. There is no module-level app (``connector.wsgi`` builds one for servers).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
from pathlib import Path
from types import TracebackType
from typing import Any

from flask import Flask, Request, Response, current_app, g, redirect, request, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy.exc import DBAPIError
from werkzeug.routing import IntegerConverter, Map

from connector.config import ConfigError, Settings, load_settings
from connector.db import Disconnected, reads_survive_a_dropped_connection, shown_utc
from connector.db import db as database
from connector.errors import (
    JSON_PREFIXES,
    database_unavailable,
    register_error_handlers,
    route_for_log,
)
from connector.extensions import csrf, limiter
from connector.integrations.mail import header_text
from connector.licensing.sites import shown_site
from connector.ratelimit import Budgets, storage_uri
from connector.redact import DATABASE_REDACTOR, redact_loggers
from connector.security_headers import security_headers
from connector.validation import MAX_ROW_ID, KeygateRequest, refuse_nul_in_address
from connector.vault.crypto import Keyring

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SESSIONLESS_PREFIXES = (*JSON_PREFIXES, "/d/")

# (module, blueprint attribute, CSRF exempt): JSON APIs authenticate by token or signature.
BLUEPRINTS: list[tuple[str, str, bool]] = [
    ("connector.orders.views", "bp", True),
    ("connector.admin.api", "bp", True),
    ("connector.admin.views", "bp", False),
    ("connector.admin.products", "bp", False),
    ("connector.admin.licenses", "bp", False),
    ("connector.admin.customers", "bp", False),
    ("connector.licensing.views", "bp", True),
    ("connector.licensing.admin_api", "bp", True),
    ("connector.licensing.portal", "bp", False),
    ("connector.downloads.views", "bp", False),
    ("connector.downloads.admin_api", "bp", True),
    ("connector.portal.views", "bp", False),
    ("connector.vault.views", "bp", True),
    ("connector.privacy.views", "bp", True),
    ("connector.health", "bp", True),
]


class _Keygate(Flask):
    """Flask, with its last-resort exception log naming the route instead of the path.

    Flask logs ``Exception on <path>`` for an exception no handler answered (one raised by an
    after-request hook, such as a failed commit at the boundary); paths carry keys, emails
    and tokens (see ``connector.errors.route_for_log``).
    """

    def log_exception(
        self,
        exc_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        self.logger.error("Exception on %s %s", request.method, route_for_log(), exc_info=exc_info)


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions for pages, with the serializer built once per key set.

    Flask builds it on every request (license API calls and clicks included); it only
    depends on the secret key and its fallbacks, so it is rebuilt only when they change.
    """

    def __init__(self) -> None:
        self._cached: tuple[object, URLSafeTimedSerializer | None] | None = None

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # Machine endpoints (JSON APIs, webhooks) authenticate by token or signature, and a
        # download link is its own credential: none of them uses the cookie session. None
        # gives them Flask's null session, unread and never saved.
        if request.path.startswith(SESSIONLESS_PREFIXES):
            return None
        return super().open_session(app, request)

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        cached = self._cached
        if cached is not None and cached[0] == keys:
            return cached[1]
        serializer = super().get_signing_serializer(app)
        self._cached = (keys, serializer)
        return serializer


class _RowIdConverter(IntegerConverter):
    """``<int:...>`` in every route: a number a database id can be (64-bit), else 404.

    Werkzeug's own accepts any number of digits, and a 20-digit id overflows the database
    driver (a 500) instead of finding nothing.
    """

    def __init__(
        self,
        map: Map,
        fixed_digits: int = 0,
        min: int | None = None,
        max: int | None = MAX_ROW_ID,
        signed: bool = False,
    ) -> None:
        super().__init__(map, fixed_digits, min, max, signed)


def get_settings() -> Settings:
    from flask import current_app

    settings: Settings = current_app.extensions["keygate.settings"]
    return settings


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build a Keygate app.

    Args:
        overrides: settings that win over the environment (field names of ``Settings``),
            plus ``start_worker`` (bool) to control the in-process job thread and
            ``check_database`` (bool, default True: refuse to start on a database that is
            not migrated or was made with other keys; ``keygate init`` migrates first),
            ``database_may_be_away`` (bool, default True: a database that cannot be
            reached skips that check with a warning, as a server or worker may start
            before it; False lets the connection error through, for a command that is
            about to fail on it anyway), and ``defaults``: settings used only where
            neither the environment nor ``keygate.toml`` sets them.
    """
    overrides = dict(overrides or {})
    start_worker = overrides.pop("start_worker", None)
    check_database = overrides.pop("check_database", True)
    may_be_away = overrides.pop("database_may_be_away", True)
    settings = load_settings(overrides, defaults=overrides.pop("defaults", None))
    https = settings.base_url.startswith("https://")

    app = _Keygate("connector", template_folder=str(TEMPLATES))
    app.request_class = KeygateRequest
    app.url_map.converters["int"] = _RowIdConverter
    app.session_interface = _SessionInterface()
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        # A signed session cookie is honoured for 12 hours at most (Flask's default: 31 days).
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
        RATELIMIT_STORAGE_URI=storage_uri(settings.ratelimit_storage_uri),
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_HEADERS_ENABLED=True,
        # A rate-limit storage that cannot be reached (Redis down): sign-in and the portal's
        # forms keep their limits in this process's memory until it is back, and any other
        # storage error lets the request through (logged), never a 500.
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_SWALLOW_ERRORS=True,
        WTF_CSRF_TIME_LIMIT=None,
    )
    # Mails are plain text too: drop the blank lines block tags would leave.
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    app.jinja_env.filters["utc"] = shown_utc
    app.jinja_env.filters["site"] = shown_site
    # A name a plain-text mail writes before a key or a link: product names may hold line
    # breaks, which would start that key's line elsewhere.
    app.jinja_env.filters["one_line"] = header_text
    app.extensions["keygate.settings"] = settings
    app.extensions["keygate.keyring"] = Keyring(
        settings.master_keys, settings.secret_key, key_file=settings.master_key_file
    )
    logging.getLogger("connector").setLevel(settings.log_level.upper())

    if settings.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Client address and scheme only: the Host header stays as received (it is signed).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops
        )
    database.init_app(app, settings.database_url)
    if check_database:
        _check_database(app, may_be_away=may_be_away)
    app.before_request(refuse_nul_in_address)
    limiter.init_app(app)
    app.extensions["keygate.license_budgets"] = Budgets(
        settings.ratelimit_storage_uri,
        {
            "license-ip": settings.ratelimit_license_per_ip,
            "license-key": settings.ratelimit_license_per_key,
        },
        enabled=settings.ratelimit_enabled,
    )
    csrf.init_app(app)

    for module_name, attribute, csrf_exempt in BLUEPRINTS:
        blueprint = getattr(importlib.import_module(module_name), attribute)
        if csrf_exempt:
            csrf.exempt(blueprint)
        app.register_blueprint(blueprint)

    app.add_url_rule("/", "home", _home)
    reads_survive_a_dropped_connection(app)
    register_error_handlers(app)
    # Unexpected errors are logged with their traceback (by app.logger, "connector"), where a
    # database error's detail would name the values of the row it refused (a buyer's address
    # and name). Modules' own loggers have the redactor from keygate_logger.
    redact_loggers(("connector", "plugin"), DATABASE_REDACTOR)
    # Runs before the blueprints' hooks (the license API's signing): the signed headers are
    # Date, Digest, Host and the request target only, so these stay out of the signature.
    app.after_request(security_headers(https=https))
    app.after_request(_commit_at_boundary)

    if start_worker if start_worker is not None else settings.worker == "thread":
        from connector.jobs import start_worker_thread

        start_worker_thread(app)
    return app


def _check_database(app: Flask, *, may_be_away: bool) -> None:
    """Refuse to start on a restored backup `keygate init` has not settled, or on a
    database not migrated for this code or made with other keys
    (:mod:`connector.vault.keycheck`)."""
    from connector.backup import unsettled_restore
    from connector.vault.keycheck import check_database

    # A file in the instance folder: said whether the database answers or not (a worker
    # started before it would wait for it, then give away ids of links already mailed).
    unsettled = unsettled_restore(app.extensions["keygate.settings"].instance_dir)
    if unsettled is not None:
        raise ConfigError(unsettled)

    with app.app_context():
        try:
            check_database(
                database.engine,
                database.session,
                app.extensions["keygate.keyring"],
                may_be_away=may_be_away,
            )
        finally:
            database.session.close()
            # No connection opened at start stays pooled: a server that forks workers after
            # loading the app (gunicorn --preload) must not share one between processes.
            database.engine.dispose()


def _home() -> ResponseReturnValue:
    """The bare address leads to the admin pages (buyers come through their own links)."""
    return redirect(url_for("admin_views.dashboard"))


def _commit_at_boundary(response: Response) -> Response:
    """The one commit of a request (Indico's pattern): services only flush.

    Runs first of the after-request hooks, so an answer it replaces is still signed and
    given the security headers. The database lost at the commit (the view's answer made,
    nothing stored) is answered as any outage is: 503 with Retry-After, never the view's
    answer, nor a bare 500 from outside every error handler.
    """
    session = g.get("_keygate_session")
    if session is None or response.status_code >= 500:
        return response
    try:
        session.commit()
    except (DBAPIError, Disconnected) as exc:
        unavailable = database_unavailable(exc)
        if unavailable is None:
            raise
        with contextlib.suppress(DBAPIError):
            session.rollback()
        g.pop("_license_echoed", None)  # the answer made now echoes the request too
        return current_app.make_response(current_app.handle_user_exception(unavailable))
    return response

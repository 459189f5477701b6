"""Bearer-token authentication for the admin JSON API, scoped to one store."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import g, request

from connector.db import db
from connector.errors import Unauthorized
from connector.models import Store
from connector.stores import store_for_api_token

F = TypeVar("F", bound=Callable[..., Any])


def require_store_token(view: F) -> F:
    """Resolve ``Authorization: Bearer <api_token>`` to ``g.store`` or answer 401."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        store = (
            store_for_api_token(db.session, token.strip()) if scheme.lower() == "bearer" else None
        )
        if store is None:
            raise Unauthorized(
                "Send the store's admin API token as 'Authorization: Bearer <token>'."
            )
        g.store = store
        return view(*args, **kwargs)

    return cast(F, wrapper)


def current_store() -> Store:
    store: Store = g.store
    return store

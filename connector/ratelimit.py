"""Rate-limit storage and the license API's budgets.

Flask-Limiter's in-process storage, without a timer thread per burst of requests:

``limits``' ``MemoryStorage`` schedules its expiry sweep on a ``threading.Timer`` of 10 ms
and starts a new one whenever the last has fired: under steady traffic that is a new thread
about every 10 ms, and each ``Thread.start()`` waits for the new thread to be scheduled,
which a busy server pays for on its request threads. This storage sweeps inline instead,
at most once per ``SWEEP_SECONDS``, on whichever request gets there first. Counting is
unchanged (``get`` already drops an expired window before it is read), so limits hold
exactly as before; the sweep only bounds memory for keys that are never seen again.

``memory://`` (the default ``KEYGATE_RATELIMIT_STORAGE_URI``) is served by this storage;
other URIs (Redis, memcached) go to ``limits`` as given.

:class:`Budgets` spends the license API's per-IP and per-key budgets in that same storage.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from limits import parse_many
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from connector.redact import keygate_logger

log = keygate_logger(__name__)

SCHEME = "keygate-memory"
SWEEP_SECONDS = 1.0


class SweepingMemoryStorage(MemoryStorage):
    STORAGE_SCHEME = [SCHEME]  # noqa: RUF012 - the base class declares it a list

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._sweep_lock = threading.Lock()
        self._next_sweep = time.monotonic() + SWEEP_SECONDS

    def _sweep_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + SWEEP_SECONDS
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        finally:
            self._sweep_lock.release()

    # MemoryStorage calls ``self.__schedule_expiry()`` (name-mangled) before each change.
    _MemoryStorage__schedule_expiry = _sweep_if_due


def storage_uri(configured: str) -> str:
    """The storage URI to give Flask-Limiter for the configured one."""
    if configured.rstrip("/") in ("memory:", "memory:/"):
        return f"{SCHEME}://"
    return configured


@dataclass(frozen=True)
class Breach:
    """A spent budget: which one, and in how many seconds it refills."""

    scope: str
    retry_after: int


class Budgets:
    """Named per-caller budgets, checked with ``limits`` (the library under Flask-Limiter).

    The license API spends two per request (per IP, per key). Flask-Limiter's decorators
    resolve, filter and re-evaluate every limit through its request context on each call,
    which cost about a quarter of a validate request; these are the same fixed windows in
    the same storage (``KEYGATE_RATELIMIT_STORAGE_URI``: memory, or Redis shared by all
    servers), spent with one ``hit`` each. A storage that cannot be reached lets requests
    through (logged, at most once a minute): a product must not stop working because the
    rate-limit store is down.
    """

    def __init__(self, configured_uri: str, budgets: dict[str, str], *, enabled: bool) -> None:
        self.enabled = enabled
        self._strategy = FixedWindowRateLimiter(storage_from_string(storage_uri(configured_uri)))
        self._limits = {scope: parse_many(spec) for scope, spec in budgets.items()}
        self._next_warning = 0.0

    def spend(self, scope: str, identifier: str) -> Breach | None:
        """Spend one unit of ``scope``'s budget for ``identifier``; the breach if it is spent."""
        if not self.enabled:
            return None
        try:
            for item in self._limits[scope]:
                if not self._strategy.hit(item, scope, identifier):
                    reset = self._strategy.get_window_stats(item, scope, identifier).reset_time
                    return Breach(scope, max(1, math.ceil(reset - time.time())))
        except Exception:  # any storage failure: Redis down, a timeout
            self._warn_unreachable()
        return None

    def _warn_unreachable(self) -> None:
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + 60.0
            log.warning("rate-limit storage unreachable; license calls are not limited now")

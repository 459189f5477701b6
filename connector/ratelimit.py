"""Flask-Limiter's in-process storage, without a timer thread per burst of requests.

``limits``' ``MemoryStorage`` schedules its expiry sweep on a ``threading.Timer`` of 10 ms
and starts a new one whenever the last has fired: under steady traffic that is a new thread
about every 10 ms, and each ``Thread.start()`` waits for the new thread to be scheduled,
which a busy server pays for on its request threads. This storage sweeps inline instead,
at most once per ``SWEEP_SECONDS``, on whichever request gets there first. Counting is
unchanged (``get`` already drops an expired window before it is read), so limits hold
exactly as before; the sweep only bounds memory for keys that are never seen again.

``memory://`` (the default ``KEYGATE_RATELIMIT_STORAGE_URI``) is served by this storage;
other URIs (Redis, memcached) go to ``limits`` as given.
"""

from __future__ import annotations

import threading
import time

from limits.storage import MemoryStorage

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

"""Real HTTP peers on 127.0.0.1 that outside SDKs talk to in tests."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask

from connector.db import DatabaseState, db, make_engine


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeBrevo:
    """Brevo's v3 API as far as Keygate uses it: /smtp/email, /contacts and
    /contacts/lists/<id>/contacts/remove; GET /account and /contacts/lists/<id> (the
    credentials check).

    ``failures`` is a list of HTTP statuses to answer (in order) before answering normally.
    ``lists`` are the account's list ids: removing from another list is a 404, as in Brevo.
    """

    host: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    accepted_mails: list[RecordedRequest] = field(default_factory=list)
    # Like Brevo: a mail whose headers.idempotencyKey was used in the last 30 minutes is not
    # sent again, and is answered 400 ``duplicate_parameter`` (Brevo's "Idempotency for batch
    # emails": "the API returns a duplicate_parameter error and does not process the
    # request"). Keys seen, with the messageId of the mail each sent; :meth:`keys_expire`
    # ends their 30 minutes.
    idempotency: dict[str, str] = field(default_factory=dict)
    # Accept this many mails or contact pushes, then drop the connection instead of answering
    # (a lost answer).
    lost_answers: int = 0
    # Seconds to wait before answering (a stalled Brevo).
    stall_seconds: float = 0.0
    # A mail refused by one of ``failures`` keeps its idempotency key all the same (Brevo
    # does not say whether it does).
    keeps_refused_keys: bool = False
    # Answer 400 invalid_parameter when an address to take out of a list is not in it.
    refuses_non_members: bool = False
    lists: set[int] = field(default_factory=lambda: {7})
    # Called with each request's path as it arrives, before it is answered.
    on_request: Callable[[str], None] | None = None

    def in_list(self, email: str, list_id: int) -> bool:
        return list_id in (self.contacts.get(email, {}).get("listIds") or [])

    def sent(self) -> list[RecordedRequest]:
        """Mails Brevo sent (whether or not its answer arrived)."""
        return list(self.accepted_mails)

    def keys_expire(self) -> None:
        """The idempotency keys' 30 minutes are over: a key used again sends a mail again."""
        self.idempotency.clear()


REMOVE_FROM_LIST = re.compile(r"/v3/contacts/lists/(\d+)/contacts/remove")
LIST = re.compile(r"/v3/contacts/lists/(\d+)")
# GET /account as Brevo answers it (the fields the SDK's GetAccount requires).
ACCOUNT = {
    "email": "owner@shop.test",
    "firstName": "Shop",
    "lastName": "Owner",
    "companyName": "Shop",
    "address": {"street": "1 Main St", "city": "Town", "zipCode": "12345", "country": "FR"},
    "plan": [{"type": "free", "credits": 300, "creditsType": "sendLimit"}],
    "relay": {
        "enabled": True,
        "data": {"userName": "owner@shop.test", "relay": "smtp-relay.brevo.com", "port": 587},
    },
}


@contextmanager
def fake_brevo() -> Iterator[FakeBrevo]:
    state = FakeBrevo()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:  # keep test output clean
            return

        def _answer(self, status: int, body: Any = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _admitted(self, method: str, body: Any) -> RecordedRequest | None:
            """Record the request, then answer as Brevo does before its endpoint would: 401
            for another key, a failure queued by the test; or stall. The request: go on."""
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = RecordedRequest(method, self.path, headers, body)
            state.requests.append(request)
            if state.on_request is not None:
                state.on_request(self.path)
            if self.headers.get("api-key") != "xkeysib-test-key":
                self._answer(401, {"code": "unauthorized", "message": "Key not found"})
                return None
            if state.failures:
                status = state.failures.pop(0)
                key = ((body or {}).get("headers") or {}).get("idempotencyKey")
                if key and state.keeps_refused_keys and 400 <= status < 500 and status != 429:
                    state.idempotency[key] = ""
                self._answer(status, {"code": "error", "message": "try later"})
                return None
            if state.stall_seconds:
                time.sleep(state.stall_seconds)
            return request

        def do_GET(self) -> None:
            if self._admitted("GET", None) is None:
                return
            listed = LIST.fullmatch(self.path)
            if self.path == "/v3/account":
                self._answer(200, ACCOUNT)
            elif listed is not None and int(listed.group(1)) in state.lists:
                list_id = int(listed.group(1))
                members = sum(state.in_list(e, list_id) for e in state.contacts)
                self._answer(
                    200,
                    {
                        "id": list_id,
                        "name": f"List {list_id}",
                        "totalBlacklisted": 0,
                        "totalSubscribers": members,
                        "uniqueSubscribers": members,
                        "folderId": 1,
                        "createdAt": "2026-01-01T00:00:00.000+00:00",
                    },
                )
            elif listed is not None:
                self._answer(
                    404, {"code": "document_not_found", "message": "List ID does not exist"}
                )
            else:
                self._answer(404, {"code": "not_found", "message": "no such endpoint"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            body = json.loads(raw) if raw else None
            request = self._admitted("POST", body)
            if request is None:
                return
            if self.path == "/v3/smtp/email":
                key = (body.get("headers") or {}).get("idempotencyKey")
                if key in state.idempotency:
                    message = "Request with this idempotency key was already processed"
                    self._answer(400, {"code": "duplicate_parameter", "message": message})
                    return
                state.accepted_mails.append(request)
                message_id = f"<{len(state.accepted_mails)}@smtp-relay.brevo.test>"
                if key:
                    state.idempotency[key] = message_id
                if state.lost_answers:
                    state.lost_answers -= 1
                    self.close_connection = True  # accepted, but the answer never arrives
                    return
                self._answer(201, {"messageId": message_id})
            elif self.path == "/v3/contacts":
                email = body["email"]
                existed = email in state.contacts
                if existed and not body.get("updateEnabled"):
                    self._answer(
                        400, {"code": "duplicate_parameter", "message": "Contact already exist"}
                    )
                    return
                # An update adds the contact to the lists named, as Brevo does; it leaves it
                # in the others.
                kept = state.contacts.get(email, {}).get("listIds") or []
                listed = sorted({*kept, *(body.get("listIds") or [])})
                state.contacts[email] = {**body, "listIds": listed}
                if state.lost_answers:
                    state.lost_answers -= 1
                    self.close_connection = True
                    return
                if existed:
                    self._answer(204)
                else:
                    self._answer(201, {"id": len(state.contacts)})
            elif (removal := REMOVE_FROM_LIST.fullmatch(self.path)) is not None:
                self._remove_from_list(int(removal.group(1)), body.get("emails") or [])
            else:
                self._answer(404, {"code": "not_found", "message": "no such endpoint"})

        def _remove_from_list(self, list_id: int, emails: list[str]) -> None:
            if list_id not in state.lists:
                self._answer(404, {"code": "document_not_found", "message": "List ID not found"})
                return
            if state.refuses_non_members and not all(state.in_list(e, list_id) for e in emails):
                # As Brevo may: one address not in the list is a bad request, not a failure.
                message = "Contact already removed from list and/or does not exist"
                self._answer(400, {"code": "invalid_parameter", "message": message})
                return
            removed, failed = [], []
            for email in emails:
                if state.in_list(email, list_id):
                    state.contacts[email]["listIds"].remove(list_id)
                    removed.append(email)
                else:
                    failed.append(email)
            self._answer(201, {"contacts": {"success": removed, "failure": failed}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.host = f"http://127.0.0.1:{server.server_address[1]}/v3"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def drop_database_connections(app: Flask) -> None:
    """What a database restart does to a running Keygate: every pooled connection is dead.

    PostgreSQL: the server terminates every session on the test database. SQLite has no
    server: the pooled connections' files are closed under them."""
    with app.app_context():
        engine = db.engine
        held = [engine.raw_connection() for _ in range(3)]  # three pooled connections
        dbapi_connections = [connection.driver_connection for connection in held]
        for connection in held:
            connection.close()
        if engine.dialect.name == "postgresql":
            with psycopg.connect(
                "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
            ) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (engine.url.database,),
                )
        else:
            for dbapi_connection in dbapi_connections:
                dbapi_connection.close()  # type: ignore[union-attr]


@contextmanager
def unreachable_database(app: Flask, database_url: str, folder: Path) -> Iterator[None]:
    """While inside, the app's database cannot be reached: PostgreSQL on a port where nothing
    listens, SQLite in a folder that does not exist. The working one is back afterwards."""
    working = app.extensions["keygate.db"]
    url = (
        "postgresql://postgres@127.0.0.1:9/keygate"  # discard port: nothing listens
        if database_url.startswith("postgresql")
        else f"sqlite:///{folder}/no-such-folder/keygate.db"
    )
    app.extensions["keygate.db"] = DatabaseState(make_engine(url))
    try:
        yield
    finally:
        app.extensions["keygate.db"].engine.dispose()
        app.extensions["keygate.db"] = working

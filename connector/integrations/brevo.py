"""Brevo (sib-api-v3-sdk): transactional mail and contact push for stores that configured it.

The SDK talks to ``KEYGATE_BREVO_API_HOST`` (Brevo's v3 base by default; a local server in
tests). 429 and 5xx answers, and a network failure, become ``RetryLater`` so the outbox
retries with backoff: a customer's mail is never lost because Brevo was briefly down.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sib_api_v3_sdk
from sib_api_v3_sdk.rest import ApiException
from urllib3.exceptions import HTTPError

from connector.integrations.mail import OutgoingMail, header_text
from connector.jobs import RetryLater
from connector.redact import keygate_logger

log = keygate_logger(__name__)


class BrevoRejected(RuntimeError):
    """Brevo refused the request for good (4xx other than 429); retrying will not help."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # Brevo's error code (invalid_parameter, ...), never the message


class BrevoNotFound(BrevoRejected):
    """Brevo answered 404: what the request names (a list, a contact) does not exist."""


@dataclass(frozen=True)
class BrevoConfig:
    api_key: str
    sender_email: str
    sender_name: str
    list_id: int | None = None
    template_id: int | None = None
    # Order meta key of the buyer's consent to the list; None: every buyer is pushed.
    consent_meta_key: str | None = None

    def __repr__(self) -> str:  # never show the key in a traceback or log
        return f"BrevoConfig(sender_email={self.sender_email!r}, list_id={self.list_id!r})"

    @classmethod
    def from_credentials(cls, values: dict[str, Any]) -> BrevoConfig:
        return cls(
            api_key=values["api_key"],
            sender_email=values["sender_email"],
            sender_name=values.get("sender_name") or values["sender_email"],
            list_id=values.get("list_id"),
            template_id=values.get("template_id"),
            consent_meta_key=values.get("consent_meta_key"),
        )


def _quiet_configuration() -> sib_api_v3_sdk.Configuration:
    """The SDK's settings without the log handler it adds: each ``Configuration()`` adds a
    stream handler to the ``urllib3`` and ``sib_api_v3_sdk`` loggers, so one per call
    printed every warning once more each time, and the handlers piled up for ever. Made
    once; each call copies it (Keygate's logging configuration decides what is shown)."""
    configuration = sib_api_v3_sdk.Configuration()
    for logger in configuration.logger.values():
        logger.removeHandler(configuration.logger_stream_handler)
    configuration.logger_stream_handler = None
    return configuration


_CONFIGURATION = _quiet_configuration()


def _client(config: BrevoConfig, host: str) -> sib_api_v3_sdk.ApiClient:
    configuration = copy.copy(_CONFIGURATION)
    configuration.api_key = {"api-key": config.api_key}  # its own: never another store's
    configuration.host = host
    return sib_api_v3_sdk.ApiClient(configuration)


# (connect, read) seconds: a Brevo that stalls must not hold the job worker (and, on SQLite,
# the write lock its job holds) for ever; a timeout is "try later" like any outage.
TIMEOUT = (5.0, 30.0)


def _error_code(body: Any) -> str:
    """Brevo's error ``code`` from an error body (its message may echo an address)."""
    try:
        code = json.loads(body).get("code")
    except (TypeError, ValueError, AttributeError):
        return ""
    return code if isinstance(code, str) and code.isidentifier() else ""


# The starts of BrevoRejected's messages (see key_refusals).
REQUEST_REFUSED = "Brevo refused the request"
MAIL_REFUSED = "Brevo refused the mail"
NOT_MADE = "the request to Brevo could not be made"
KEY_STATUSES = (401, 403)  # a wrong or deleted key, or this server's address not allowed
# Brevo's answer to a mail whose idempotency key was used in the last 30 minutes: not sent
# again (developers.brevo.com, "Idempotency for batch emails"). A Keygate mail names one
# recipient, so nothing else in it can be a duplicate.
ALREADY_SENT = "duplicate_parameter"
KEY_KEPT = "Brevo keeps the key of the attempt it refused"
# How long Brevo keeps an idempotency key: 30 minutes at most ("15-30 minutes"), from when it
# took the request, which is before Keygate reads its answer: measured from that reading, it
# is over by then.
KEY_LIFETIME = dt.timedelta(minutes=30)


def refused_before(
    last_error: str | None, refused_at: dt.datetime | None, now: dt.datetime
) -> bool:
    """Whether Brevo's "key used" answer to an attempt of a mail job may be about an attempt
    it refused, which sent nothing, rather than one it took: the last attempt (its
    ``last_error``) ended with nothing sent for sure (Brevo refused it, or kept the key of
    one it refused, see :meth:`BrevoMailer.send`), or Brevo refused one at ``refused_at``,
    less than the key's lifetime ago. The last attempt alone is not enough: one between
    that never reached Brevo (a connection refused, a 503) would hide the refusal, and the
    mail be recorded as sent while nothing went. One between that Brevo took, its answer
    lost, is taken for one it did not: waiting out the key may mail the buyer twice, never
    leave them without their keys."""
    if (last_error or "").startswith(
        (f"{BrevoRejected.__name__}:", f"{RetryLater.__name__}: {KEY_KEPT}")
    ):
        return True
    return refused_at is not None and now - refused_at < KEY_LIFETIME


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, _request_timeout=TIMEOUT, **kwargs)
    except ApiException as exc:
        status = exc.status or 0
        if status == 0:  # the SDK's word for a failed TLS handshake: no answer at all
            raise RetryLater("Brevo unreachable: TLS") from None
        if status == 429 or status >= 500:
            raise RetryLater(f"Brevo answered {status}") from None
        # Only the status and reason: the body may echo the address we sent.
        code = _error_code(exc.body)
        if status == 404:
            raise BrevoNotFound(
                f"Brevo found nothing to act on: {status} {exc.reason}", status, code
            ) from None
        raise BrevoRejected(f"{REQUEST_REFUSED}: {status} {exc.reason}", status, code) from None
    except (HTTPError, OSError) as exc:
        raise RetryLater(f"Brevo unreachable: {type(exc).__name__}") from None
    except ValueError as exc:
        # The HTTP library refusing a header (a key with a line break, saved before keys
        # were checked): its message quotes the value, so only the type is kept.
        raise BrevoRejected(f"{NOT_MADE} ({type(exc).__name__})") from None


def _mail_refusal(exc: BrevoRejected) -> str:
    """Why Brevo refused a mail and what the owner checks, short enough for the outbox's
    last error (200 characters): its status and code, never its message (which may echo the
    addresses)."""
    answered = f"{exc.status} {exc.code}".strip()
    if exc.status in KEY_STATUSES:
        hint = (
            "check the store's Brevo api_key (its credentials page's Check tries it), or an IP"
            " restriction on the key in Brevo"
        )
    elif exc.status == 400:
        hint = (
            "is sender_email a sender or domain verified in Brevo (Senders & IPs)? Else the"
            " buyer's address"
        )
    else:
        hint = "check the store's Brevo settings"
    return f"{MAIL_REFUSED} ({answered}): {hint}; then retry the job"


def key_refusals() -> list[str]:
    """How the last error of a mail or removal job starts when Brevo refused the store's
    key (401, 403), or a key it could not send (a line break in it): new credentials may
    cure those, as they do a job held for want of any."""
    rejected = BrevoRejected.__name__
    return [
        f"{rejected}: {NOT_MADE}",
        *(f"{rejected}: {MAIL_REFUSED} ({status}" for status in KEY_STATUSES),
        *(f"{rejected}: {REQUEST_REFUSED}: {status} " for status in KEY_STATUSES),
    ]


class BrevoMailer:
    """Sends through Brevo's transactional API; returns Brevo's messageId."""

    name = "brevo"

    def __init__(self, config: BrevoConfig, host: str) -> None:
        self.config = config
        self.host = host

    def send(self, mail: OutgoingMail) -> str | None:
        recipient: dict[str, str] = {"email": mail.to_email}
        if mail.to_name and (to_name := header_text(mail.to_name)):
            recipient["name"] = to_name
        # A sender name saved before names were checked may hold a line break.
        sender_name = header_text(self.config.sender_name) or self.config.sender_email
        message = sib_api_v3_sdk.SendSmtpEmail(
            to=[recipient],
            sender={"email": self.config.sender_email, "name": sender_name},
            subject=header_text(mail.subject),
            html_content=mail.html or None,
            text_content=mail.text,
            # Brevo sends a mail once per key (for 15-30 minutes): a retry after a lost
            # answer does not mail the buyer twice.
            headers={"idempotencyKey": mail.idempotency_key} if mail.idempotency_key else None,
        )
        api = sib_api_v3_sdk.TransactionalEmailsApi(_client(self.config, self.host))
        try:
            result = _call(api.send_transac_email, message)
        except BrevoRejected as exc:
            if not exc.status:  # the request could not be made: its message says why
                raise
            if mail.idempotency_key and exc.code == ALREADY_SENT:
                if mail.refused_before:
                    # Brevo may keep the key of the attempt it refused, which sent nothing:
                    # the mail goes once the key's 30 minutes are over, never lost.
                    raise RetryLater(KEY_KEPT) from None
                # Brevo sent this mail for an earlier attempt whose answer was lost: it is
                # sent (its messageId went with that answer). Taken for a refusal, the job
                # would retry until the key's 30 minutes are over, and then mail it again.
                log.info("Brevo had sent this mail already (its idempotency key was used)")
                return None
            raise BrevoRejected(_mail_refusal(exc), exc.status, exc.code) from None
        message_id = getattr(result, "message_id", None)
        return str(message_id) if message_id else None


def push_contact(
    config: BrevoConfig, host: str, email: str, first: str | None, last: str | None
) -> None:
    """Create or update the buyer as a Brevo contact, in the store's list when it has one."""
    attributes = {k: v for k, v in {"FIRSTNAME": first, "LASTNAME": last}.items() if v}
    contact = sib_api_v3_sdk.CreateContact(
        email=email,
        attributes=attributes or None,
        list_ids=[config.list_id] if config.list_id is not None else None,
        update_enabled=True,
    )
    api = sib_api_v3_sdk.ContactsApi(_client(config, host))
    _call(api.create_contact, contact)


def remove_from_list(config: BrevoConfig, host: str, list_id: int, email: str) -> str:
    """Take ``email`` out of the Brevo list ``list_id`` (the contact itself stays in Brevo).

    Returns:
        ``removed``; ``not_in_list`` when Brevo reports the address as not removed (it was
        not a member); ``gone`` when Brevo answers 404 (no such list or contact). Each means
        the address is not in the list any more.

    Raises:
        RetryLater: Brevo is down, rate limiting or unreachable.
        BrevoRejected: Brevo refused the request (the key, say).
    """
    api = sib_api_v3_sdk.ContactsApi(_client(config, host))
    try:
        result = _call(
            api.remove_contact_from_list,
            list_id,
            sib_api_v3_sdk.RemoveContactFromList(emails=[email]),
        )
    except BrevoNotFound:
        return "gone"
    except BrevoRejected as exc:
        # For one address, Brevo answers "invalid parameter" when it is not in the list (or
        # not a contact at all): there is nothing to remove, and asking again never helps.
        if exc.status == 400 and exc.code == "invalid_parameter":
            return "not_in_list"
        raise
    contacts = getattr(result, "contacts", None)
    removed = [str(e).lower() for e in (getattr(contacts, "success", None) or [])]
    return "removed" if email.lower() in removed else "not_in_list"


# What a credentials check found wrong (connector.vault.checks words it for the owner).
KEY_REFUSED = "refused"  # 401/403: a wrong or deleted key, or this server's IP not allowed
UNREACHABLE = "unreachable"  # no answer, or 429/5xx: Brevo down, busy or not this host
NO_LIST = "no_list"  # the list_id set is not a list of the account
OTHER = "other"


@dataclass(frozen=True)
class AccessProblem:
    """What a check found: ``kind`` (one of the names above) and Brevo's status and error
    code when it answered (never its message, which may echo what was sent)."""

    kind: str
    status: int = 0
    code: str = ""


def check_access(config: BrevoConfig, host: str) -> AccessProblem | None:
    """Whether Brevo takes the store's key (GET /account) and knows its list_id, when one is
    set (GET /contacts/lists/<id>): None when both work. With the mail's timeout.

    The answers are not read into the SDK's models: only the status counts (a field the
    2023 SDK does not know must not make a working key look refused).
    """
    client = _client(config, host)
    calls: list[tuple[Any, tuple[Any, ...]]] = [(sib_api_v3_sdk.AccountApi(client).get_account, ())]
    if config.list_id is not None:
        calls.append((sib_api_v3_sdk.ContactsApi(client).get_list, (config.list_id,)))
    for fn, args in calls:
        try:
            answer = _call(fn, *args, _preload_content=False)
        except RetryLater:
            return AccessProblem(UNREACHABLE)
        except BrevoNotFound as exc:
            return AccessProblem(NO_LIST if args else OTHER, exc.status, exc.code)
        except BrevoRejected as exc:
            # No status: the request could not be made, its only variable header being the
            # key (one saved before keys were checked, with a line break): type it again.
            kind = KEY_REFUSED if exc.status in (0, *KEY_STATUSES) else OTHER
            return AccessProblem(kind, exc.status, exc.code)
        answer.release_conn()
    return None

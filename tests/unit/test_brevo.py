"""Brevo through the real sib-api-v3-sdk, against a local server that speaks its API."""

from __future__ import annotations

import pytest

from connector.integrations.brevo import (
    BrevoConfig,
    BrevoMailer,
    BrevoRejected,
    _call,
    push_contact,
)
from connector.integrations.mail import OutgoingMail
from connector.jobs import RetryLater
from tests.peers import FakeBrevo, fake_brevo

CONFIG = BrevoConfig(
    api_key="xkeysib-test-key", sender_email="shop@example.org", sender_name="Shop", list_id=7
)
MAIL = OutgoingMail(
    to_email="zoe@example.org",
    to_name="Zoë Ørsted",
    subject="Your keys",
    text="KEY",
    html="<b>KEY</b>",
)


def test_mail_is_sent_with_sender_recipient_and_both_bodies(brevo: FakeBrevo) -> None:
    message_id = BrevoMailer(CONFIG, brevo.host).send(MAIL)
    assert message_id == "<1@smtp-relay.brevo.test>"
    (request,) = brevo.sent()
    assert request.headers["api-key"] == "xkeysib-test-key"
    assert request.body["to"] == [{"email": "zoe@example.org", "name": "Zoë Ørsted"}]
    assert request.body["sender"] == {"email": "shop@example.org", "name": "Shop"}
    assert request.body["subject"] == "Your keys"
    assert request.body["textContent"] == "KEY"
    assert request.body["htmlContent"] == "<b>KEY</b>"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limits_and_outages_retry_later(brevo: FakeBrevo, status: int) -> None:
    brevo.failures.append(status)
    with pytest.raises(RetryLater):
        BrevoMailer(CONFIG, brevo.host).send(MAIL)
    assert BrevoMailer(CONFIG, brevo.host).send(MAIL) is not None


def test_a_wrong_key_is_refused_for_good_without_echoing_it(brevo: FakeBrevo) -> None:
    bad = BrevoConfig(api_key="xkeysib-wrong", sender_email="s@example.org", sender_name="S")
    with pytest.raises(BrevoRejected) as caught:
        BrevoMailer(bad, brevo.host).send(MAIL)
    assert "401" in str(caught.value)
    assert "xkeysib-wrong" not in str(caught.value)
    assert "xkeysib-wrong" not in repr(bad)


def test_an_unreachable_brevo_retries_later() -> None:
    with fake_brevo() as server:
        host = server.host
    with pytest.raises(RetryLater):
        BrevoMailer(CONFIG, host).send(MAIL)


def test_a_failed_tls_handshake_retries_later() -> None:
    """The SDK turns urllib3's SSLError into an ApiException with status 0 (its rest.py):
    no answer came, so it is an outage to retry, not a refusal for good."""
    from sib_api_v3_sdk.rest import ApiException

    def handshake_fails(*args: object, **kwargs: object) -> None:
        raise ApiException(status=0, reason="SSLError\nwrong version number")

    with pytest.raises(RetryLater):
        _call(handshake_fails)


def test_contacts_are_created_then_updated_in_the_list(brevo: FakeBrevo) -> None:
    push_contact(CONFIG, brevo.host, "zoe@example.org", "Zoë", "Ørsted")
    push_contact(CONFIG, brevo.host, "zoe@example.org", "Zoë", "Ørsted-Yamada")
    contact = brevo.contacts["zoe@example.org"]
    assert contact["attributes"] == {"FIRSTNAME": "Zoë", "LASTNAME": "Ørsted-Yamada"}
    assert contact["listIds"] == [7]
    assert contact["updateEnabled"] is True


def test_calls_leave_the_loggers_as_they_were(brevo: FakeBrevo) -> None:
    """The SDK's Configuration() adds a stream handler to two loggers each time: made once
    and copied, each retry no longer prints every warning once more."""
    import logging

    handlers = {
        name: list(logging.getLogger(name).handlers) for name in ("urllib3", "sib_api_v3_sdk")
    }
    for _ in range(3):
        BrevoMailer(CONFIG, brevo.host).send(MAIL)
    assert {name: logging.getLogger(name).handlers for name in handlers} == handlers


def test_a_mail_jobs_idempotency_key_is_its_own_in_every_store() -> None:
    """Stores (of one instance or several) may send through one Brevo account: a key made
    of the job id alone would make Brevo drop another store's mail as a duplicate of this."""
    from connector.mail.service import idempotency_key
    from connector.models import Store

    shop, other = Store(public_id="st_shop"), Store(public_id="st_other")
    assert idempotency_key(shop, 7) == idempotency_key(shop, 7)  # every attempt alike
    keys = {idempotency_key(shop, 7), idempotency_key(other, 7), idempotency_key(shop, 8)}
    assert len(keys) == 3

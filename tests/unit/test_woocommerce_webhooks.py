"""WooCommerce webhook checks and parsing into neutral dataclasses."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pytest

from plugin.shop import PayloadError, parse_utc_datetime
from plugin.woocommerce import webhooks as wc
from tests.factories import line_item, sign, wc_order


def test_signature_matches_what_woocommerce_sends() -> None:
    body = b'{"id": 1}'
    assert wc.signature_valid(body, sign(body, "s3cret"), "s3cret")
    assert not wc.signature_valid(body, sign(body, "other"), "s3cret")
    assert not wc.signature_valid(body + b" ", sign(body, "s3cret"), "s3cret")
    assert not wc.signature_valid(body, None, "s3cret")
    assert not wc.signature_valid(body, "", "s3cret")
    assert not wc.signature_valid(body, "ünïcode", "s3cret")


def test_ping_is_only_the_unsigned_form_body() -> None:
    assert wc.is_ping(b"webhook_id=15", {})
    assert not wc.is_ping(b"webhook_id=15", {wc.TOPIC_HEADER: "order.created"})
    assert not wc.is_ping(b'{"webhook_id": 15}', {})
    # Only the whole body: anything after the id is a delivery to check, not a ping.
    assert not wc.is_ping(b"webhook_id=15&status=completed", {})


def test_a_full_rest_v3_order_parses() -> None:
    order = wc.parse_order(wc_order(7, "completed", [line_item(501, quantity=2, variation_id=9)]))
    assert order.id == "7"
    assert order.status == "completed"
    assert order.is_paid
    assert order.full_name == "Jürgen Ørsted 山田"
    assert order.customer_id is None  # 0 is a guest
    assert order.date_modified == dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    (item,) = order.line_items
    assert (item.product_id, item.variation_id, item.quantity) == ("501", "9", 2)
    assert item.total == Decimal("98.00")


def test_missing_optional_fields_and_extra_fields_are_fine() -> None:
    order = wc.parse_order({"id": 3, "status": "wc-on-hold", "unexpected": {"x": 1}})
    assert order.status == "on-hold"
    assert order.line_items == ()
    assert order.email is None


def test_deleted_payload_needs_only_an_id() -> None:
    order = wc.parse_order({"id": 3}, deleted=True)
    assert order.deleted and order.is_revoking


def test_refund_lines_give_refunded_quantities() -> None:
    refund = wc.parse_refund(
        {
            "id": 88,
            "reason": "changed mind",
            "amount": "49.00",
            "line_items": [
                {
                    "id": 5,
                    "quantity": -1,
                    "meta_data": [{"key": "_refunded_item_id", "value": "71"}],
                }
            ],
        }
    )
    assert refund.line_quantities == {"71": 1}
    assert refund.total == Decimal("49.00")


def test_refund_lines_of_one_item_add_up_and_totals_are_amounts_returned() -> None:
    """A refund may list one item on two lines (a partial unit twice): their quantities add
    up; its total, negative as the refunds endpoint lists it, is the amount returned."""
    refunded_item = [{"key": "_refunded_item_id", "value": "71"}]
    refund = wc.parse_refund(
        {
            "id": 89,
            "total": "-73.50",
            "line_items": [
                {"id": 5, "quantity": -1, "meta_data": refunded_item},
                {"id": 6, "quantity": "-0.5", "meta_data": refunded_item},
            ],
        }
    )
    assert refund.line_quantities == {"71": Decimal("1.5")}
    assert refund.total == Decimal("73.50")


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"status": "processing"},
        {"id": 1},
        {"id": 1, "status": "processing", "line_items": [{"quantity": 1}]},
        {"id": 1, "status": "processing", "line_items": [{"id": 2, "quantity": -3}]},
        {"id": 1, "status": "processing", "date_modified_gmt": "yesterday"},
        {"id": 1, "status": "processing", "total": "lots"},
        {"id": {"nested": True}, "status": "processing"},
    ],
)
def test_malformed_orders_raise_payload_error(payload: object) -> None:
    with pytest.raises(PayloadError):
        wc.parse_order(payload)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T12:00:00", dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)),
        ("2026-11-20T13:00:00+01:00", dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)),
        ("2026-11-20T12:00:00Z", dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)),
        ("8999-12-31T23:59:59", dt.datetime(8999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
    ],
)
def test_dates_are_read_as_utc(text: str, expected: dt.datetime) -> None:
    assert parse_utc_datetime(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+01:00",  # year 0 once in UTC
        "9999-12-31T23:59:59-01:00",  # year 10000 once in UTC
        "9000-01-01T00:00:00",
        "1899-12-31T23:59:59",
        "yesterday",
    ],
)
def test_dates_python_or_a_license_could_not_hold_are_refused(text: str) -> None:
    """The one date parser refuses, with a ValueError, what its callers turn into a 400/422."""
    with pytest.raises(ValueError, match=r"out of range|ISO 8601"):
        parse_utc_datetime(text)


@pytest.mark.parametrize("line_items", [5, "x", {"id": 1}], ids=["number", "text", "object"])
def test_refund_lines_that_are_not_a_list_are_a_payload_error(line_items: object) -> None:
    with pytest.raises(PayloadError, match="must be a list"):
        wc.parse_refund({"id": 1, "total": "1", "line_items": line_items})


@pytest.mark.parametrize(
    "quantity", [float("inf"), float("-inf"), float("nan"), "9" * 5000, -10_001, "²", True]
)
def test_refund_line_quantities_that_are_not_numbers_in_range_are_a_payload_error(
    quantity: object,
) -> None:
    line = {"quantity": quantity, "meta_data": [{"key": "_refunded_item_id", "value": "71"}]}
    with pytest.raises(PayloadError, match="refund line quantity"):
        wc.parse_refund({"id": 1, "line_items": [line]})


def test_a_whole_float_refund_quantity_is_read() -> None:
    line = {"quantity": -2.0, "meta_data": [{"key": "_refunded_item_id", "value": "71"}]}
    assert wc.parse_refund({"id": 1, "line_items": [line]}).line_quantities == {"71": 2}


@pytest.mark.parametrize(
    ("bought", "refunded", "units", "units_refunded"),
    [(2.5, -0.5, 2, 1), ("2.5", "-1.5", 2, 2), (3, -0.25, 3, 1), (0.5, None, 0, 0)],
)
def test_decimal_quantities_are_read_as_whole_units_wholly_paid_for(
    bought: object, refunded: object, units: int, units_refunded: int
) -> None:
    """A decimal-quantity plugin sends 2.5 (kilos, metres): a unit is bought when wholly
    bought, refunded when any part of it is."""
    refunds = []
    if refunded is not None:
        meta = [{"key": "_refunded_item_id", "value": "71"}]
        refunds = [{"id": 5, "line_items": [{"quantity": refunded, "meta_data": meta}]}]
    order = wc.parse_order(
        {
            "id": 1,
            "status": "processing",
            "line_items": [{"id": 71, "product_id": 501, "quantity": bought}],
            "refunds": refunds,
        }
    )
    assert order.line_items[0].quantity == units
    assert math.ceil(sum(r.line_quantities.get("71", 0) for r in order.refunds)) == units_refunded


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12.345", Decimal("12.35")), ("-12.345", Decimal("-12.35")), ("0.005", Decimal("0.01"))],
)
def test_amounts_round_half_away_from_zero(text: str, expected: Decimal) -> None:
    """As PostgreSQL's NUMERIC does, so SQLite keeps the same cents."""
    order = wc.parse_order({"id": 1, "status": "processing", "total": text})
    assert order.total == expected


@pytest.mark.parametrize("text", ["999999999999.995", "-999999999999.995", "1e12"])
def test_amounts_that_round_past_numeric_14_2_are_a_payload_error(text: str) -> None:
    with pytest.raises(PayloadError, match="out of range"):
        wc.parse_order({"id": 1, "status": "processing", "total": text})


def test_a_line_item_id_twice_in_one_order_is_a_payload_error() -> None:
    """WooCommerce never repeats a line id; Keygate keeps one row per id, so it refuses."""
    items = [line_item(501, line_id=7), line_item(502, line_id=7)]
    with pytest.raises(PayloadError, match="line item 7 appears twice"):
        wc.parse_order(wc_order(1, "processing", items))


@pytest.mark.parametrize(
    ("value", "ticked"),
    [
        ("yes", True),
        (" Yes ", True),
        ("1", True),
        ("TRUE", True),
        ("on", True),
        (True, True),
        (1, True),
        ("no", False),
        ("", False),
        ("0", False),
        (0, False),
        (False, False),
        (None, False),
        ("y", False),
        (2, False),
        (["yes"], False),
    ],
)
def test_a_meta_checkbox_is_ticked_only_by_the_usual_yes_values(
    value: object, ticked: bool
) -> None:
    """A consent checkbox in order meta: "yes", "1", "true", "on" (any case), JSON true or 1."""
    payload = {"id": 1, "status": "processing", "meta_data": [{"key": "_ok", "value": value}]}
    order = wc.parse_order(payload)
    assert order.meta_flag("_ok") is ticked
    assert order.meta_flag("_missing") is False


@pytest.mark.parametrize(
    "address",
    [
        "jurgen@example.org\r\nBcc: attacker@evil.example",
        "jurgen@example.org, attacker@evil.example",
        "Jürgen <jurgen@example.org>",
        "jurgen@example.org\x01",
        "jurgen @example.org",
        "jurgen@localhost",
        "jurgen@@example.org",
        "@example.org",
        "jurgen@example..org",
        "a" * 310 + "@example.org",  # cut at 320 it would be another address
    ],
)
def test_an_address_that_is_not_one_plain_mailbox_is_no_address(address: str) -> None:
    """An order made over the REST API can carry anything: such an address is never mailed
    (a CR/LF or a comma could add a recipient); the order is read as one given none."""
    payload = wc_order(7, "processing", [line_item(501)], email=address)
    order = wc.parse_order(payload)
    assert order.email is None
    assert order.id == "7" and len(order.line_items) == 1


@pytest.mark.parametrize(
    "address", ["Jurgen.Orsted+shop@Example.ORG", "o'brien@mail.example.co.uk", "山田@例え.jp"]
)
def test_plain_mailboxes_are_kept_lower_cased(address: str) -> None:
    order = wc.parse_order(wc_order(7, "processing", [line_item(501)], email=address))
    assert order.email == address.lower()


def test_names_and_the_order_number_are_read_on_one_line() -> None:
    """They go into a mail's recipient and subject and onto the stamp: a CR, LF or tab is a
    space there; a zero-width non-joiner (Persian names) stays."""
    payload = wc_order(7, "processing", [line_item(501)], first_name="Jürgen\r\nBcc: x")
    payload["billing"]["last_name"] = "\u0645\u06cc\u200c\u0631\u0632\u0627\u0626\u06cc\t"
    payload["number"] = "A-7\n\nX"
    order = wc.parse_order(payload)
    assert order.first_name == "Jürgen Bcc: x"
    assert order.last_name == "\u0645\u06cc\u200c\u0631\u0632\u0627\u0626\u06cc"
    assert order.number == "A-7 X"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (
            "Phone order, card 4111 1111 1111 1111 exp 12/29",
            "Phone order, card **** **** **** 1111 exp 12/29",
        ),
        ("4111-1111-1111-1111", "****-****-****-1111"),
        ("378282246310005", "***********0005"),  # 15 digits (American Express)
        ("paid 2026-01-01 4111 1111 1111 1111", "paid 2026-01-01 **** **** **** 1111"),
        ("4111111111111111 and 5555555555554444", "************1111 and ************4444"),
        ("card 4111  1111  1111  1111", "card ****  ****  ****  1111"),
        ("card 4111.1111.1111.1111", "card ****.****.****.1111"),
        ("card 4111/1111/1111/1111", "card ****/****/****/1111"),
        ("4111\u00a01111\u00a01111\u00a01111", "****\u00a0****\u00a0****\u00a01111"),  # pasted
        ("4111 - 1111 - 1111 - 1111", "**** - **** - **** - 1111"),
        ("4111 1111 1111 1112", "4111 1111 1111 1112"),  # fails the Luhn check
        ("12345678901234567890", "12345678901234567890"),  # 20 digits: no card number
        ("0xab4111111111111111cd", "0xab4111111111111111cd"),  # inside a hash
        ("ch_3PrivCharge", "ch_3PrivCharge"),
        ("Bank transfer for order 12345", "Bank transfer for order 12345"),
    ],
)
def test_card_numbers_in_payment_text_are_masked_but_their_last_four(text: str, kept: str) -> None:
    """ "Payment status and reference (never card numbers)": what staff typed into the
    payment note or a manual gateway's reference keeps everything but a card number's
    digits before its last four."""
    payload = wc_order(1, "completed", [line_item(501)], transaction_id=text)
    payload["meta_data"].append({"id": 2, "key": wc.PAYMENT_NOTE_META, "value": text})
    order = wc.parse_order(payload)
    assert (order.transaction_id, order.payment_note) == (kept, kept)

"""The README's "What Keygate keeps" table is the privacy promise an owner copies into their
own policy: it must name every table Keygate has, and every column that holds data about a
person.

The rule for a personal column: every column that can hold text (anything but a number, a
boolean or a time: ``String``, ``Text``, ``JSON`` and the encrypted types) holds personal
data, unless :data:`NOT_PERSONAL` lists it here, under its table. A personal column must be
named, in backquotes, in the "about a person" cell of its table's row. So a new column such
as ``orders.phone`` fails these tests until it is either named in the README's row (and what
is kept, exported and erased of it said there) or listed below as not about a person, with
the reason. Numbers, flags and times are not checked: they say when or how much, never who
(an id names a row, whose own columns are checked).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from sqlalchemy import Boolean, Column, DateTime, Integer, Numeric, Table
from sqlalchemy.types import TypeDecorator

import connector.models  # noqa: F401 - every table in Base.metadata
from connector.config import Settings
from connector.db import Base

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "### What Keygate keeps"
COLUMNS = ("kept in", "about a person", "why", "how long", "export", "erasure")

# Text columns that hold nothing about a person, by table: the shop's or Keygate's own ids,
# states and kinds, product data, secrets of the store, hashes of no person's data.
NOT_PERSONAL: dict[str, set[str]] = {
    "activations": set(),
    "admin_users": set(),
    # Names of actions; details hold ids, counts, file names and states, never an address,
    # IP or key (connector.audit).
    "audit_events": {"action", "detail"},
    "binding_changes": {"kind"},
    "brevo_removals": {"reason"},
    "credentials": {"kind"},
    "download_events": {"outcome", "served"},
    # The copy's object key: watermarked/<store>/<sealed grant>/<file name>.
    "download_grants": {"revoked_reason", "watermarked_key"},
    "grant_extensions": set(),
    # Payloads carry ids (and a consent flag, when Brevo refused a mail) only; dedupe keys
    # are made of ids.
    "jobs": {"kind", "payload", "dedupe_key", "status"},
    # Proof of the keys: a known text, encrypted and hashed.
    "key_checks": {"master_check", "secret_check"},
    "license_flags": {"reason"},
    "license_renewals": set(),
    "licenses": {"status", "status_reason"},
    # The shop's ids and the product's name and SKU as sold.
    "line_items": {
        "shop_line_item_id",
        "shop_product_id",
        "shop_variation_id",
        "name",
        "sku",
        "matched_shop_product_id",
    },
    "mails": {"kind", "backend", "provider_message_id"},
    # The shop's order id and number, states and amounts' currency, the payment method's
    # name, the ids of refunds read.
    "orders": {
        "shop_order_id",
        "number",
        "status",
        "currency",
        "payment_method",
        "payment_method_title",
        "refund_ids_read",
    },
    "product_files": {"object_key", "filename", "watermark"},
    "products": {"shop_product_id", "name", "watermark_fallback", "source"},
    "releases": {"version", "object_key", "sha256", "changelog"},
    # Kinds, scopes and the route (a license call's path holds no key).
    "security_events": {"kind", "scope", "path"},
    # The shop's id of Keygate's API key, its permissions, product ids and why their meta was
    # refused, the shop's error text.
    "shop_connections": {
        "status",
        "shop_key_id",
        "key_permissions",
        "products_invalid",
        "last_error",
    },
    "shop_notes": {"marker", "shop_note_id"},
    "signing_keys": {"kid", "algorithm", "public_key", "private_key"},
    # The store's own ids, secrets and key format.
    "stores": {
        "public_id",
        "platform",
        "webhook_secret",
        "previous_webhook_secret",
        "api_token_hash",
        "key_prefix",
    },
    # Keygate's state of the copy, the original's version and why stamping failed.
    "watermark_copies": {"status", "kind", "object_key", "source_version", "error"},
    # The shop's ids (the order's among them), a hash of a body that is not kept, outcomes.
    "webhook_deliveries": {
        "topic",
        "shop_delivery_id",
        "shop_webhook_id",
        "resource_id",
        "body_sha256",
        "outcome",
        "detail",
    },
    # delivery_url: the address the shop delivers a webhook to (a Keygate's, old or new).
    "webhook_registrations": {"topic", "shop_webhook_id", "status", "delivery_url"},
}

# Rows for what is kept outside the database, by the start of their first cell.
INSTANCE_ROWS = ("`files/`", "`master.key`", "logs", "rate-limit counters", "`keygate backup`")


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def kept_table(readme: str) -> list[list[str]]:
    """The rows of the table under :data:`HEADING`, each a list of its cells."""
    section = readme.split(f"\n{HEADING}\n", 1)
    assert len(section) == 2, f"the README has no {HEADING!r} section"
    lines = section[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, rule, *rows = table
    assert tuple(header) == COLUMNS and set("".join(rule)) <= set("-:")
    for row in rows:
        assert len(row) == len(COLUMNS), f"row {row[0]!r} has {len(row)} cells"
    return rows


def table_rows(readme: str) -> dict[str, str]:
    """Database table name -> the "about a person" cell of its row: a row whose first cell
    is one backquoted snake_case name is a table's."""
    rows: dict[str, str] = {}
    for row in kept_table(readme):
        names = code_spans(row[0])
        if names and re.fullmatch(r"[a-z_]+", names[0]):
            assert row[0] == f"`{names[0]}`", f"a table's row names it alone: {row[0]!r}"
            assert names[0] not in rows, f"two rows for {names[0]}"
            rows[names[0]] = row[1]
    return rows


def can_hold_text(column: Column) -> bool:  # type: ignore[type-arg]
    kind = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    return not isinstance(kind, Integer | Boolean | Numeric | DateTime)


def personal_columns(table: Table) -> set[str]:
    return {
        column.name
        for column in table.columns
        if can_hold_text(column) and column.name not in NOT_PERSONAL.get(table.name, set())
    }


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_every_table_has_its_row_and_every_row_its_table(readme: str) -> None:
    """A new table needs its row (what it keeps about whom, for how long, in the export, on
    erasure); a row for a table dropped since is a promise about nothing."""
    rows = set(table_rows(readme))
    tables = set(Base.metadata.tables)
    without_row, without_table = sorted(tables - rows), sorted(rows - tables)
    assert (without_row, without_table) == ([], []), "(tables without a row, rows of no table)"


def test_every_personal_column_is_named_in_its_tables_row(readme: str) -> None:
    """See the module's docstring for the rule. What the row names must be columns of that
    table: a column renamed or dropped leaves no stale name behind."""
    rows = table_rows(readme)
    for name, table in Base.metadata.tables.items():
        named = {span for span in code_spans(rows.get(name, "")) if re.fullmatch(r"[a-z_]+", span)}
        missing = personal_columns(table) - named
        assert missing == set(), f"{name}: personal columns the README's row does not name"
        unknown = named - {column.name for column in table.columns}
        assert unknown == set(), f"{name}: the README's row names columns it does not have"


def test_the_columns_listed_as_not_personal_exist_and_hold_text() -> None:
    """A table or column listed here that is gone (or no longer text) is a stale excuse."""
    assert set(NOT_PERSONAL) == set(Base.metadata.tables)
    for name, columns in NOT_PERSONAL.items():
        table = Base.metadata.tables[name]
        text = {column.name for column in table.columns if can_hold_text(column)}
        assert columns - text == set(), f"{name}: not a text column of the table"


def test_every_retention_setting_says_what_it_purges(readme: str) -> None:
    """Each ``KEYGATE_RETENTION_*_DAYS`` is in the "how long" cell of what it purges."""
    how_long = " ".join(row[3] for row in kept_table(readme))
    settings = [f.name for f in dataclasses.fields(Settings) if f.name.startswith("retention_")]
    assert settings
    for setting in settings:
        default = getattr(Settings, setting)
        assert f"`KEYGATE_{setting.upper()}` ({default})" in how_long, setting


def test_what_is_kept_outside_the_database_has_its_rows(readme: str) -> None:
    """Stamped copies, the keys, logs, rate-limit counters and backups are kept too."""
    firsts = [row[0] for row in kept_table(readme)]
    for start in INSTANCE_ROWS:
        assert any(first.startswith(start) for first in firsts), start

"""Database error details lose the values PostgreSQL quotes, and keep what names the problem."""

from __future__ import annotations

import logging
import sys

from connector.redact import DATABASE_PATTERNS, RedactingFilter, redact

# As PostgreSQL words them (psycopg's str of the error, SQLAlchemy's adds "[SQL: …]").
UNIQUE = (
    'duplicate key value violates unique constraint "activations_license_id_site_key"\n'
    "DETAIL:  Key (license_id, site, fingerprint)=(4, ada.example, srv-1) already exists.\n"
    "[SQL: INSERT INTO activations …]"
)
NOT_NULL = (
    'null value in column "status" of relation "orders" violates not-null constraint\n'
    "DETAIL:  Failing row contains (1, 1, 7001, null, f, ada@example.com, Ada (home)).\n"
    "\nThe above exception was the direct cause of the following exception:"
)
BAD_INPUT = 'invalid input syntax for type integer: "ada@example.com"\nLINE 1: …'


def test_database_details_hide_the_values_they_quote() -> None:
    assert redact(UNIQUE, DATABASE_PATTERNS) == UNIQUE.replace(
        "(4, ada.example, srv-1)", "<hidden>"
    )
    assert redact(NOT_NULL, DATABASE_PATTERNS) == NOT_NULL.replace(
        "(1, 1, 7001, null, f, ada@example.com, Ada (home))", "<hidden>"
    )
    assert redact(BAD_INPUT, DATABASE_PATTERNS) == BAD_INPUT.replace(
        '"ada@example.com"', "<hidden>"
    )


def test_the_filter_redacts_a_records_traceback_too() -> None:
    try:
        raise ValueError(NOT_NULL)
    except ValueError:
        record = logging.LogRecord(
            "connector.jobs", logging.ERROR, __file__, 1, "job %s failed", (7,), sys.exc_info()
        )
    assert RedactingFilter(DATABASE_PATTERNS).filter(record)
    assert record.getMessage() == "job 7 failed"
    assert record.exc_text and "ValueError" in record.exc_text
    assert "ada@example.com" not in logging.Formatter().format(record)

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


def test_a_value_holding_a_blank_line_is_hidden_whole() -> None:
    """A quoted row ends where psycopg or a traceback goes on, not at a blank line: an
    address's lines may hold one."""
    detail = (
        'null value in column "status" of relation "orders" violates not-null constraint\n'
        "DETAIL:  Failing row contains (1, Jane\n\nDoe, jane@example.com, 7 Rue X).\n"
        "[SQL: INSERT INTO orders …]"
    )
    hidden = redact(detail, DATABASE_PATTERNS)
    assert "jane@example.com" not in hidden and "Doe" not in hidden
    assert hidden.endswith("Failing row contains <hidden>.\n[SQL: INSERT INTO orders …]")


def test_long_text_of_many_keys_is_read_once() -> None:
    """Text of many "Key (a)=(" and no end (a long log line) took seconds per 100 KB, read
    again from each: it is hidden in one pass."""
    import time

    text = "Key (a)=(x " * 40_000
    started = time.perf_counter()
    hidden = redact(text, DATABASE_PATTERNS)
    assert hidden == "Key (a)=<hidden>"
    assert time.perf_counter() - started < 2  # quadratic: about 20 s


# Run in a fresh interpreter: in the test process, earlier apps' redact_loggers went over
# every logger that existed then, lazily imported modules' too.
_EVERY_MODULE_LOGS_REDACTED = """
import importlib, logging, pkgutil, sys
import connector, plugin
from connector.redact import DATABASE_REDACTOR
for package in (connector, plugin):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        # Not the migrations, nor connector.wsgi: it builds the app when imported.
        if ".migrations." not in module.name and module.name != "connector.wsgi":
            importlib.import_module(module.name)
missing = sorted(
    name
    for name, logger in logging.root.manager.loggerDict.items()
    if name.startswith(("connector.", "plugin."))
    and name != "connector.client"  # the client library runs in the product, not in Keygate
    and isinstance(logger, logging.Logger)
    and DATABASE_REDACTOR not in logger.filters
)
print(" ".join(missing))
sys.exit(1 if missing else 0)
"""


def test_every_keygate_module_logs_with_database_details_hidden() -> None:
    """A module imported when its job first runs (the copies sweep, the product sync) made
    its logger after the app put the redactor on the loggers there were: a database error
    it logged would have named the buyer in the row."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _EVERY_MODULE_LOGS_REDACTED], capture_output=True, text=True
    )
    assert done.returncode == 0, f"loggers without the redactor: {done.stdout}{done.stderr}"

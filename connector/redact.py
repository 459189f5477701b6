"""Keep credentials out of outside libraries' log lines, and buyers' details out of
database errors.

Libraries such as botocore log whole requests at DEBUG, Authorization header included. A
``RedactingFilter`` on their loggers rewrites each record with the secret parts replaced.
PostgreSQL's error messages quote the values of the row or key they refused, which the
engines' ``hide_parameters`` does not hide: :data:`DATABASE_PATTERNS` cover those, in
Keygate's own log lines (tracebacks included) and in a job's last error.
"""

from __future__ import annotations

import logging
import re

# AWS SigV4 (R2): the access key id in Credential=, the signature, session tokens.
AWS_PATTERNS = [
    re.compile(r"((?:X-Amz-)?Credential=)[^/\s,'\"&]+", re.IGNORECASE),
    re.compile(r"((?:X-Amz-)?Signature=)[0-9a-fA-F]+", re.IGNORECASE),
    re.compile(r"((?:X-Amz-)?Security-Token=)[^\s,'\"&]+", re.IGNORECASE),
    # botocore.auth's own DEBUG line "Signature:\n<hex>": with the URL's other parameters
    # (in the CanonicalRequest line) it would rebuild a working presigned URL.
    re.compile(r"(Signature:\s*)[0-9a-fA-F]+"),
]


# PostgreSQL's details name the values of what it refused: the whole row of a NOT NULL or
# CHECK violation (a buyer's address and name in an order's), the key of a unique or
# foreign key violation, the text a type could not read.
# Where a quoted value ends at the latest: what psycopg, SQLAlchemy and a traceback write
# after the detail (never a blank line alone: a value may hold one, an address's lines).
_DETAIL_ENDS = (
    r"\n\[SQL: |\n(?:HINT|CONTEXT|LINE \d+):|\n\n(?:The above exception|During handling)"
    r"|\nTraceback \(most recent|\n\(Background on|\n?\Z"
)
DATABASE_PATTERNS = [
    re.compile(rf"(Failing row contains ).+?(?=\.?(?:{_DETAIL_ENDS}))", re.DOTALL),
    # The key's values up to PostgreSQL's words after them; else, all up to the detail's end
    # (each try then ends at the latest there: no long text is read again from each "Key (").
    re.compile(
        r"(Key \([^)\n]*\)=)(?:\(.+?\)(?= already exists| is not present| is still referenced"
        rf"| conflicts with)|.+?(?={_DETAIL_ENDS}))",
        re.DOTALL,
    ),
    re.compile(rf"(invalid input (?:syntax|value) for [\w ]+: ).+?(?={_DETAIL_ENDS})", re.DOTALL),
]


def redact(text: str, patterns: list[re.Pattern[str]]) -> str:
    """``text`` with what the patterns' second part matches replaced by ``<hidden>``."""
    for pattern in patterns:
        text = pattern.sub(r"\1<hidden>", text)
    return text


class RedactingFilter(logging.Filter):
    """Replaces what the patterns' second part matches with ``<hidden>``, in the message and
    in the traceback of a record that has one."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage(), self.patterns), None
        if record.exc_info and not record.exc_text:
            # Formatters show exc_text when it is set, rather than formatting exc_info again.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.patterns)
        return True


DATABASE_REDACTOR = RedactingFilter(DATABASE_PATTERNS)


def keygate_logger(name: str) -> logging.Logger:
    """The logger of a Keygate module, with database details hidden in its lines.

    Filters are not inherited, and a module imported only when its job first runs (the
    copies sweep, the product sync) makes its logger after :func:`redact_loggers` went over
    the existing ones: each module takes its logger from here instead."""
    logger = logging.getLogger(name)
    if DATABASE_REDACTOR not in logger.filters:
        logger.addFilter(DATABASE_REDACTOR)
    return logger


def redact_loggers(prefixes: tuple[str, ...], redactor: RedactingFilter) -> None:
    """Put ``redactor`` on every existing logger under ``prefixes`` (filters don't inherit)."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)]
    for name in [*prefixes, *names]:
        logger = logging.getLogger(name)
        if redactor not in logger.filters:
            logger.addFilter(redactor)

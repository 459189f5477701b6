"""Keep credentials out of outside libraries' log lines.

Libraries such as botocore log whole requests at DEBUG, Authorization header included. A
``RedactingFilter`` on their loggers rewrites each record with the secret parts replaced.
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


class RedactingFilter(logging.Filter):
    """Replaces what the patterns' second part matches with ``<hidden>``."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for pattern in self.patterns:
            message = pattern.sub(r"\1<hidden>", message)
        record.msg, record.args = message, None
        return True


def redact_loggers(prefixes: tuple[str, ...], redactor: RedactingFilter) -> None:
    """Put ``redactor`` on every existing logger under ``prefixes`` (filters don't inherit)."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)]
    for name in [*prefixes, *names]:
        logger = logging.getLogger(name)
        if redactor not in logger.filters:
            logger.addFilter(redactor)

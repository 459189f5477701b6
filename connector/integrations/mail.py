"""Mail backends. ``console`` (the embedded default) prints and keeps the stored copy;
``brevo`` sends through Brevo's transactional API."""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass
from typing import Protocol

from connector.redact import keygate_logger

log = keygate_logger(__name__)

# Bidirectional embeddings, overrides and isolates. A name in any script shows right without
# them (the Unicode bidi algorithm orders right-to-left letters by itself), but one left
# open turns the rest of its line around: a product named "Plugin \u202eorP" read "Plugin
# Pro" and the key after it backwards, a file "manual\u202efdp.exe" read "manualexe.pdf".
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_DROPPED = dict.fromkeys(map(ord, BIDI_CONTROLS))


def mail_text(text: str) -> str:
    """A mail's body as it is sent: without bidirectional controls, and other control
    characters (a bare CR, a terminal's escape sequence) as spaces; line breaks kept."""
    text = text.translate(_DROPPED)
    return "".join(" " if c != "\n" and unicodedata.category(c) == "Cc" else c for c in text)


def header_text(text: str) -> str:
    """A subject or a display name as it is sent: :func:`mail_text` on one line (a line
    break would start another header), runs of spaces as one."""
    flat = "".join(" " if unicodedata.category(c) in {"Zl", "Zp"} else c for c in text)
    return " ".join(mail_text(flat).split())


@dataclass(frozen=True)
class OutgoingMail:
    to_email: str
    to_name: str | None
    subject: str
    text: str
    html: str | None = None
    # The same for every attempt to send one mail: a provider that supports it sends a
    # mail once even when its answer to an earlier attempt was lost.
    idempotency_key: str | None = None
    # The provider refused an attempt with this key (a definite answer, nothing sent) that
    # it may still hold the key of: its saying the key was used now does not mean the mail
    # went.
    refused_before: bool = False


class Mailer(Protocol):
    name: str

    def send(self, mail: OutgoingMail) -> str | None:
        """Send ``mail``; return the provider's message id if it gives one.

        Raises:
            connector.jobs.RetryLater: the provider is down or rate limiting; try later.
        """
        ...


class ConsoleMailer:
    """Development mail: printed to standard output (not the log), kept in the admin outbox."""

    name = "console"

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo

    def send(self, mail: OutgoingMail) -> str | None:
        if self.echo:
            rule = "-" * 72
            printed = f"{rule}\nTo: {mail.to_email}\nSubject: {mail.subject}\n\n{mail.text}\n{rule}"
            # An output that is not UTF-8 (a latin-1 or ASCII locale, a Windows code page)
            # gets what it cannot encode escaped: a buyer's name must not fail the mail.
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            printed = printed.encode(encoding, "backslashreplace").decode(encoding)
            try:
                print(printed, file=sys.stdout, flush=True)
            except (OSError, ValueError) as exc:
                # A closed output or a broken pipe (the program reading it ended): the mail
                # is kept in the outbox all the same, and retrying would not print it.
                log.warning("console mail not printed: %s", type(exc).__name__)
        return None

"""Mail backends. ``console`` (the embedded default) prints and keeps the stored copy;
``brevo`` sends through Brevo's transactional API."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol


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
            print(
                f"{rule}\nTo: {mail.to_email}\nSubject: {mail.subject}\n\n{mail.text}\n{rule}",
                file=sys.stdout,
                flush=True,
            )
        return None

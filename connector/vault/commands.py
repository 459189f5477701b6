"""``keygate rotate-keys``: re-encrypt every secret and key copy with the newest master key."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from flask import Flask


def register(group: click.Group) -> None:
    group.add_command(rotate_keys)


@contextmanager
def command_app() -> Iterator[Flask]:
    """An app context for one command; its database connections are closed at the end."""
    from connector.cli import make_app

    app = make_app()
    try:
        with app.app_context():
            yield app
    finally:
        app.extensions["keygate.db"].get_engine().dispose()


NEW_KEY_COMMAND = (
    "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


@click.command("rotate-keys")
@click.option(
    "--check",
    is_flag=True,
    help="Only count the stored values the newest key alone cannot read (0: the older "
    "keys can be dropped).",
)
def rotate_keys(check: bool) -> None:
    """Re-encrypt every stored secret with the newest master key.

    Put the new key first in KEYGATE_MASTER_KEYS (comma separated, newest first), keeping
    the old ones; run this; then the old keys may be removed once --check finds nothing
    that needs them. Keys are named by fingerprint (the first 8 hex digits of a key's
    SHA-256), never shown.
    """
    from connector.db import db
    from connector.vault.crypto import DecryptionError, current_keyring
    from connector.vault.rotation import count_needing_older_keys, count_rows, rotate_all

    with command_app():
        session = db.session
        keyring = current_keyring()
        newest = keyring.fingerprints[0]
        if check:
            needing, stored = count_needing_older_keys(session, keyring)
            report = (
                f"{needing} of {stored} encrypted values need a master key other than "
                f"the newest (fingerprint {newest})"
            )
            if needing:
                raise click.ClickException(
                    f"{report}: keep the older keys, and run keygate rotate-keys with the "
                    "new key first"
                )
            older = ", ".join(keyring.fingerprints[1:]) or "none configured"
            click.echo(f"{report}: the older keys ({older}) can be dropped")
            return
        if len(keyring.fingerprints) == 1:
            # Re-encrypting under the one key there is would change nothing an owner could
            # want: say how to rotate instead of reporting rows "re-encrypted".
            click.echo(
                f"Only one master key is configured (fingerprint {newest}): there is no older"
                " key to rotate from, and nothing was re-encrypted. To rotate, make a new key"
                f" ({NEW_KEY_COMMAND}), put it first (the first line of master.key in the"
                " instance folder, or first in KEYGATE_MASTER_KEYS=new,old) keeping the old"
                " one, restart every server and keygate worker, then run keygate rotate-keys"
                " again."
            )
            return
        total = count_rows(session)
        session.commit()
        try:
            with click.progressbar(length=total, label="Re-encrypting", show_pos=True) as bar:
                rewritten = rotate_all(session, keyring, bar.update)
        except DecryptionError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(
        f"re-encrypted {rewritten} rows with the newest master key (fingerprint {newest}), "
        "the first in the list: is it your new key?"
    )
    if len(keyring.fingerprints) > 1:
        older = ", ".join(keyring.fingerprints[1:])
        click.echo(f"older keys: {older}; drop them once keygate rotate-keys --check says so")

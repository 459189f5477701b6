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


@click.command("rotate-keys")
def rotate_keys() -> None:
    """Re-encrypt every stored secret with the newest master key.

    Put the new key first in KEYGATE_MASTER_KEYS (comma separated, newest first), keeping
    the old ones; run this; then the old keys may be removed.
    """
    from connector.db import db
    from connector.vault.crypto import DecryptionError, current_keyring
    from connector.vault.rotation import count_rows, rotate_all

    with command_app():
        session = db.session
        total = count_rows(session)
        session.commit()
        try:
            with click.progressbar(length=total, label="Re-encrypting", show_pos=True) as bar:
                rewritten = rotate_all(session, current_keyring(), bar.update)
        except DecryptionError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"re-encrypted {rewritten} rows with the newest master key")

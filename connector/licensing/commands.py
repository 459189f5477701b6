"""``keygate rotate-signing-key``: a new Ed25519 key signs; old ones stay published."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    @group.command("rotate-signing-key")
    @click.option(
        "--prepare",
        is_flag=True,
        help="Only publish the next key (not signing yet), so products can pin it first.",
    )
    def rotate_signing_key_command(prepare: bool) -> None:
        """Retire the answer-signing key and sign with the next one.

        With --prepare, publish the next key without using it. Without, sign with the
        prepared key (or a new one). Retired public keys stay at GET /api/v1/signing-keys, so
        answers and license files signed before can still be checked. Running servers pick
        the change up within 30 seconds.
        """
        from connector.cli import make_app
        from connector.db import db, transaction
        from connector.signing import prepare_signing_key, rotate_signing_key

        app = make_app()
        with app.app_context():
            with transaction() as session:
                row = prepare_signing_key(session) if prepare else rotate_signing_key(session)
                kid, public_key = row.kid, row.public_key
            db.get_engine().dispose()
        if prepare:
            click.echo(f"next signing key {kid} (ed25519, public key {public_key})")
            click.echo("Pin it in your products; then run keygate rotate-signing-key.")
        else:
            click.echo(f"signing with key {kid} (ed25519, public key {public_key})")
            click.echo("Older keys stay published for checking earlier answers.")

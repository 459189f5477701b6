"""``keygate rotate-signing-key``: a new Ed25519 key signs; old ones stay published."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    @group.command("rotate-signing-key")
    def rotate_signing_key_command() -> None:
        """Retire the answer-signing key and start signing with a new one.

        Retired public keys stay at GET /api/v1/signing-keys, so answers and license files
        signed before the rotation can still be checked. Running servers pick the new key up
        within 30 seconds.
        """
        from connector.cli import make_app
        from connector.db import db, transaction
        from connector.signing import rotate_signing_key

        app = make_app()
        with app.app_context():
            with transaction() as session:
                row = rotate_signing_key(session)
                kid, public_key = row.kid, row.public_key
            db.get_engine().dispose()
        click.echo(f"new signing key {kid} (ed25519, public key {public_key})")
        click.echo("Pin it in your products next to the old ones; old keys stay published.")

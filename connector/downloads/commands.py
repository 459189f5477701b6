"""``keygate leak-lookup FILE``: who was this copy made for?"""

from __future__ import annotations

import json
from pathlib import Path

import click


def register(group: click.Group) -> None:
    group.add_command(leak_lookup)


@click.command("leak-lookup")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def leak_lookup(file: Path, as_json: bool) -> None:
    """Read the hidden fingerprint of a PDF or ZIP and name its order, buyer and grant."""
    from connector.cli import make_app
    from connector.db import db
    from connector.downloads.leaks import identify_leak

    app = make_app()
    with app.app_context():
        try:
            match = identify_leak(db.session, file)
        finally:
            db.session.close()
            db.get_engine().dispose()
    if match is None:
        raise click.ClickException("no Keygate fingerprint found in this file")
    body = match.as_json()
    if as_json:
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    click.echo(f"store:  {body['store_id']}")
    click.echo(f"order:  {body['order']['id']} (number {body['order']['number']})")
    click.echo(f"buyer:  {body['buyer']['name']} <{body['buyer']['email']}>")
    click.echo(f"grant:  {body['grant_id']} ({body['filename']})")

"""``keygate leak-lookup FILE``: who was this copy made for?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    for line in describe_leak(body):
        click.echo(line)


def describe_leak(body: dict[str, Any]) -> list[str]:
    """The lines ``keygate leak-lookup`` prints for a match (``LeakMatch.as_json``).

    An order without a number of its own, a buyer without a name (erased, or never given)
    or without an address says nothing of them: never a Python ``None`` to the owner.
    """
    order, buyer = body["order"], body["buyer"]
    number = order["number"]
    shown_order = str(order["id"])
    if number is not None and number != order["id"]:
        shown_order += f" (number {number})"
    who = [part for part in (buyer["name"], buyer["email"] and f"<{buyer['email']}>") if part]
    return [
        f"store:  {body['store_id']}",
        f"order:  {shown_order}",
        f"buyer:  {' '.join(who) or '(no name or address kept)'}",
        f"grant:  {body['grant_id']} ({body['filename']})",
    ]

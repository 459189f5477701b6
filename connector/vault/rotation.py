"""Key rotation: re-encrypt every ``Encrypted``/``EncryptedJSON`` value with the newest key.

Columns are found from the models, so a table added later is rotated without a change here.
Rows are rewritten in batches, each committed: every value is readable under the configured
keys at every moment, so an interrupted rotation is simply run again. Running servers keep
writing meanwhile: a value is written back only where the column still holds the token that
was read, so a secret saved since (with the newest key already) is never undone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from cryptography.fernet import InvalidToken
from sqlalchemy import (
    Column,
    CursorResult,
    Table,
    Text,
    case,
    func,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from connector.db import Base
from connector.vault.crypto import DecryptionError, Encrypted, EncryptedJSON, Keyring

BATCH = 500


@dataclass(frozen=True)
class EncryptedTable:
    table: Table
    key: Column[int]
    columns: tuple[Column[str], ...]


def encrypted_tables() -> list[EncryptedTable]:
    """Every table with at least one encrypted column, in dependency order."""
    found = []
    for table in Base.metadata.sorted_tables:
        columns = tuple(c for c in table.columns if isinstance(c.type, Encrypted | EncryptedJSON))
        if columns:
            (key,) = table.primary_key.columns
            found.append(EncryptedTable(table, key, columns))
    return found


def count_rows(session: Session) -> int:
    return sum(
        session.execute(select(func.count()).select_from(t.table)).scalar_one()
        for t in encrypted_tables()
    )


def _batches(
    session: Session, spec: EncryptedTable
) -> Iterator[list[tuple[int, list[str | None]]]]:
    last = None
    raw = [type_coerce(c, Text).label(c.name) for c in spec.columns]
    while True:
        query = select(spec.key, *raw).order_by(spec.key).limit(BATCH)
        if last is not None:
            query = query.where(spec.key > last)
        rows = session.execute(query).all()
        if not rows:
            return
        last = rows[-1][0]
        yield [(row[0], list(row[1:])) for row in rows]


def rotate_all(
    session: Session, keyring: Keyring, advance: Callable[[int], None] = lambda _: None
) -> int:
    """Re-encrypt every stored token with the newest master key; returns rows rewritten.

    Raises:
        DecryptionError: a value was made with a key that is no longer configured (names
            the table, column and row, never the value).
    """
    rewritten = 0
    for spec in encrypted_tables():
        for batch in _batches(session, spec):
            for row_id, tokens in batch:
                values: dict[str, Any] = {}
                unchanged = []
                for column, token in zip(spec.columns, tokens, strict=True):
                    if token is None:
                        continue
                    try:
                        rotated = literal(keyring.rotate(token), Text)
                    except InvalidToken:
                        raise DecryptionError(
                            f"{spec.table.name}.{column.name} of row {row_id} cannot be "
                            "decrypted with the configured master keys"
                        ) from None
                    # Only where the column still holds the token read: a value saved since
                    # (PostgreSQL lets servers write between this batch's read and its
                    # write) was made with the newest key and must stand.
                    still_read = type_coerce(column, Text) == literal(token, Text)
                    values[column.name] = case((still_read, rotated), else_=column)
                    unchanged.append(still_read)
                if values:
                    statement = (
                        update(spec.table).where(spec.key == row_id, or_(*unchanged)).values(values)
                    )
                    result = cast(CursorResult[Any], session.execute(statement))
                    rewritten += result.rowcount
            session.commit()
            advance(len(batch))
    return rewritten


def count_needing_older_keys(session: Session, keyring: Keyring) -> tuple[int, int]:
    """Stored tokens the newest master key alone cannot read, and all stored tokens.

    None left (0) means the older keys can be dropped. Reads in batches, each its own
    transaction (nothing is written).
    """
    needing = stored = 0
    for spec in encrypted_tables():
        for batch in _batches(session, spec):
            for _row_id, tokens in batch:
                present = [token for token in tokens if token is not None]
                stored += len(present)
                needing += sum(not keyring.newest_key_reads(token) for token in present)
            session.rollback()
    return needing, stored

"""Indexes on the object keys of the buyers' stamped copies

- watermark_copies.object_key: the job deleting copies (a refund, an erasure, the daily
  purge of expired links' copies) asks twice per copy whether a click stamped it again
  meanwhile, and read every copy of every store each time;
- download_grants.watermarked_key: the sweep of a bucket's copies that no row records
  (each listed batch) read every grant of the store.

Copy keys are Keygate's own (``watermarked/<store>/<sealed id>/<file name>``, the name at
most 200 bytes), well within PostgreSQL's limit on an index entry.

Revision ID: 0030
Revises: 0029
"""

from alembic import op


revision = '0030'
down_revision = '0029'
branch_labels = None
depends_on = None

INDEXES = (
    ('ix_watermark_copies_object_key', 'watermark_copies', ['object_key']),
    ('ix_download_grants_watermarked_key', 'download_grants', ['watermarked_key']),
)


def upgrade() -> None:
    # Not in batch mode: an index needs no copy of the table.
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)

"""raw mail in its own table

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 07:20:00

SQLite rewrites a whole row on every UPDATE, overflow pages of a blob included; an inbox row
is updated at least twice (claimed, processed), so the bytes move to `inbox_raw`.
`ALTER TABLE ... DROP COLUMN` is plain SQL on PostgreSQL and on SQLite 3.35+, and needs no
table rebuild (a rebuild would trip the foreign keys of messages and consumed_tokens).
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inbox_raw',
    sa.Column('inbox_id', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['inbox_id'], ['inbox.id'], ),
    sa.PrimaryKeyConstraint('inbox_id')
    )
    op.execute("INSERT INTO inbox_raw (inbox_id, raw) SELECT id, raw FROM inbox")
    op.execute("ALTER TABLE inbox DROP COLUMN raw")


def downgrade() -> None:
    op.add_column('inbox', sa.Column('raw', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE inbox SET raw = (SELECT raw FROM inbox_raw WHERE inbox_raw.inbox_id = inbox.id)")
    op.drop_table('inbox_raw')

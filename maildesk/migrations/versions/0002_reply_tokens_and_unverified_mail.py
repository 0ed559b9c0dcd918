"""reply tokens and unverified mail

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 21:00:30.746066
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import maildesk.models


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consumed_tokens',
    sa.Column('token', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('inbox_id', sa.Integer(), nullable=True),
    sa.Column('at', maildesk.models.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['inbox_id'], ['inbox.id'], ),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], ),
    sa.PrimaryKeyConstraint('token')
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unverified', sa.Boolean(), nullable=False, server_default=sa.false()))

    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('estimate_version', sa.Integer(), nullable=False, server_default='0'))



def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_column('estimate_version')

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('unverified')

    op.drop_table('consumed_tokens')

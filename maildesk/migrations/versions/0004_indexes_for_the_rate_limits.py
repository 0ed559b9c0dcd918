"""indexes for the rate limits

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 22:06:01.407662
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel
import maildesk.models


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_sender_received', ['sender', 'received_at'], unique=False)

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_to_template_created', ['to_addresses', 'template', 'created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_to_template_created')

    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_sender_received')


"""service levels, closed days and the tickets' deadline columns

The default service level "standard" (workflow.md: 4h first response, work start within 2
business days, 5-day acceptance term, Mon-Fri 09:00-17:00 Europe/Riga, Latvian holidays) is
added so that `maildesk sla list` shows what organisations without a level get.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 21:11:46.800514
"""

from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa
import sqlmodel
import maildesk.models


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('closed_days',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', maildesk.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('day')
    )
    op.create_table('service_levels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('first_response', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('work_start', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('acceptance_term', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('hours', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('timezone', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('holidays', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('created_at', maildesk.models.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    levels = sa.table('service_levels', sa.column('name', sa.String), sa.column('first_response', sa.String),
                      sa.column('work_start', sa.String), sa.column('acceptance_term', sa.String),
                      sa.column('hours', sa.String), sa.column('timezone', sa.String),
                      sa.column('holidays', sa.String), sa.column('created_at', maildesk.models.UTCDateTime()))
    op.bulk_insert(levels, [{'name': 'standard', 'first_response': '4h', 'work_start': '2d', 'acceptance_term': '5d',
                             'hours': 'Mon-Fri 09:00-17:00', 'timezone': 'Europe/Riga', 'holidays': 'LV',
                             'created_at': datetime.now(timezone.utc)}])
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_response_due_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('first_response_warn_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('first_response_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('first_response_warned_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('first_response_breached_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('estimate_accepted_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('work_start_due_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('work_start_warn_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('work_started_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('work_start_warned_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('work_start_breached_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('acceptance_started_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('acceptance_due_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('reminder_due_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('reminder_sent_at', maildesk.models.UTCDateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_tickets_acceptance_due_at'), ['acceptance_due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_first_response_due_at'), ['first_response_due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_first_response_warn_at'), ['first_response_warn_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_reminder_due_at'), ['reminder_due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_work_start_due_at'), ['work_start_due_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_work_start_warn_at'), ['work_start_warn_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tickets_work_start_warn_at'))
        batch_op.drop_index(batch_op.f('ix_tickets_work_start_due_at'))
        batch_op.drop_index(batch_op.f('ix_tickets_reminder_due_at'))
        batch_op.drop_index(batch_op.f('ix_tickets_first_response_warn_at'))
        batch_op.drop_index(batch_op.f('ix_tickets_first_response_due_at'))
        batch_op.drop_index(batch_op.f('ix_tickets_acceptance_due_at'))
        batch_op.drop_column('reminder_sent_at')
        batch_op.drop_column('reminder_due_at')
        batch_op.drop_column('acceptance_due_at')
        batch_op.drop_column('acceptance_started_at')
        batch_op.drop_column('work_start_breached_at')
        batch_op.drop_column('work_start_warned_at')
        batch_op.drop_column('work_started_at')
        batch_op.drop_column('work_start_warn_at')
        batch_op.drop_column('work_start_due_at')
        batch_op.drop_column('estimate_accepted_at')
        batch_op.drop_column('first_response_breached_at')
        batch_op.drop_column('first_response_warned_at')
        batch_op.drop_column('first_response_at')
        batch_op.drop_column('first_response_warn_at')
        batch_op.drop_column('first_response_due_at')
    op.drop_table('service_levels')
    op.drop_table('closed_days')

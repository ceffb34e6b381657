"""download history: node, model key and owning process of each pull

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 14:30:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('downloads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('node', sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column('model_key', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('owner', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_downloads_node'), ['node'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('downloads', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_downloads_node'))
        batch_op.drop_column('owner')
        batch_op.drop_column('model_key')
        batch_op.drop_column('node')

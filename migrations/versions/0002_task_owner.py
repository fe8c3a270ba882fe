"""Task ownership: the session and process behind each task.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xapi_task_owner",
        sa.Column("task", sa.String(64), primary_key=True),
        sa.Column("session", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("xapi_task_owner")

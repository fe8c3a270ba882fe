"""Host heartbeats: a private table, so that beats make no events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

from db.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xapi_host_heartbeat",
        sa.Column("host", sa.String(64), primary_key=True),
        sa.Column("beats", sa.BigInteger, nullable=False),
        sa.Column("time", UTCDateTime, nullable=False),
        sa.Column("shutting_down", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("xapi_host_heartbeat")

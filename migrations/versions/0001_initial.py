"""Initial schema: every stored class of API 2.23 plus the xapi_* tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
from pathlib import Path

from alembic import op

from migrations import snapshot

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SNAPSHOT = Path(__file__).with_suffix(".schema.json")


def upgrade() -> None:
    snapshot.create(op, SNAPSHOT)
    op.execute("INSERT INTO xapi_generation (id, generation) VALUES (1, 0)")


def downgrade() -> None:
    snapshot.drop(op, SNAPSHOT)

"""Fair share by recent use reads the shards that ended within a window at each admission pass: an index
on shards.finished_at keeps that a range scan as the table grows.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_shards_finished_at", "shards", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_shards_finished_at", table_name="shards")

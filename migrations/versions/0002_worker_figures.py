"""Worker figures on shards (queue wait, run time) for /metrics; shard status gains "waiting".

"waiting" needs no DDL: shard status is a non-native enum (a plain string column without a CHECK).

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("queue_wait_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("run_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shards") as batch:
        batch.drop_column("run_s")
        batch.drop_column("queue_wait_s")

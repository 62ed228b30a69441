"""Job lifecycle: CHECK constraints on the status columns, job status "cancelling", retry columns
(shards.not_before, shards.first_started_at), retention marks (jobs.pruned_at, jobs.expired_at).

The constraints list the statuses of services/common/lifecycle/table.py as they are at this
revision (copied, not imported: a migration must not change when the code does). Rows written by
older code hold only statuses in these lists.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = (
    "queued", "preparing", "learning", "generating", "packaging", "cancelling",
    "succeeded", "failed", "cancelled",
)  # fmt: skip
SHARD_STATUSES = ("waiting", "pending", "queued", "running", "succeeded", "failed", "cancelled")
SHARD_KINDS = ("prepare", "learn", "generate", "package")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_check_constraint("ck_jobs_status", _in("status", JOB_STATUSES))
    with op.batch_alter_table("shards") as batch:
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("first_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_check_constraint("ck_shards_status", _in("status", SHARD_STATUSES))
        batch.create_check_constraint("ck_shards_kind", _in("kind", SHARD_KINDS))
        batch.create_check_constraint("ck_shards_attempts", "attempts >= 0 AND attempts <= max_attempts")


def downgrade() -> None:
    # A job that is cancelling has no status the old code knows: it becomes cancelled.
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'cancelling'")
    with op.batch_alter_table("shards") as batch:
        batch.drop_constraint("ck_shards_attempts", type_="check")
        batch.drop_constraint("ck_shards_kind", type_="check")
        batch.drop_constraint("ck_shards_status", type_="check")
        batch.drop_column("first_started_at")
        batch.drop_column("not_before")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("ck_jobs_status", type_="check")
        batch.drop_column("expired_at")
        batch.drop_column("pruned_at")

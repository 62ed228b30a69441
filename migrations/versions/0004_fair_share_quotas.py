"""Fair share and quotas: jobs.priority and jobs.archive_bytes, owners.last_admitted_at, the per-owner
quota overrides (owner_quotas) and the live workers' slots (workers).

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("archive_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("owners") as batch:
        batch.add_column(sa.Column("last_admitted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "owner_quotas",
        sa.Column(
            "owner_id", sa.String(32), sa.ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("max_active_jobs", sa.Integer(), nullable=True),
        sa.Column("max_job_cost", sa.Float(), nullable=True),
        sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("owner_quotas")
    with op.batch_alter_table("owners") as batch:
        batch.drop_column("last_admitted_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("archive_bytes")
        batch.drop_column("priority")

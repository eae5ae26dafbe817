"""job datasets as rows with foreign keys, job lanes, resolved params, a status check

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
STATUS_CHECK = "status IN (" + ", ".join(f"'{s}'" for s in STATES) + ")"


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def upgrade() -> None:
    op.create_table(
        "job_datasets",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_job_datasets_dataset_id_datasets"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_datasets_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "role", "position", name=op.f("pk_job_datasets")),
    )
    with op.batch_alter_table("job_datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_datasets_dataset_id"), ["dataset_id"], unique=False)

    conn = op.get_bind()
    jobs = conn.execute(sa.text("SELECT id, buyer_dataset_id, seller_dataset_ids, params FROM jobs")).all()
    known = {r[0] for r in conn.execute(sa.text("SELECT id FROM datasets")).all()}
    rows = []
    for job_id, buyer, sellers, params in jobs:
        base = (_json(params) or {}).get("base_dataset_id")
        parts = [("buyer", 0, buyer)] + [("seller", i, s) for i, s in enumerate(_json(sellers) or [])]
        parts += [("base", 0, base)] if base else []
        rows += [{"job_id": job_id, "role": role, "position": pos, "dataset_id": ds if ds in known else None}
                 for role, pos, ds in parts]
    if rows:
        table = sa.table("job_datasets", sa.column("job_id"), sa.column("role"), sa.column("position"),
                         sa.column("dataset_id"))
        op.bulk_insert(table, rows)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolved_params", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("lane", sa.String(length=8), nullable=False, server_default="long"))
        batch_op.drop_index("ix_jobs_claim")
        batch_op.create_index("ix_jobs_claim", ["status", "lane", "not_before"], unique=False)
        batch_op.drop_constraint("fk_jobs_buyer_dataset_id_datasets", type_="foreignkey")
        batch_op.drop_column("buyer_dataset_id")
        batch_op.drop_column("seller_dataset_ids")
        batch_op.create_check_constraint(op.f("ck_jobs_status"), STATUS_CHECK)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("lane", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch_op.add_column(sa.Column("seller_dataset_ids", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("buyer_dataset_id", sa.String(length=32), nullable=True))
    conn = op.get_bind()
    links: dict[str, dict] = {}
    for job_id, role, _position, ds in conn.execute(
            sa.text("SELECT job_id, role, position, dataset_id FROM job_datasets ORDER BY job_id, role, position")):
        entry = links.setdefault(job_id, {"buyer": None, "sellers": []})
        if role == "buyer":
            entry["buyer"] = ds
        elif role == "seller":
            entry["sellers"].append(ds)
    for job_id, entry in links.items():
        conn.execute(sa.text("UPDATE jobs SET buyer_dataset_id = :b, seller_dataset_ids = :s WHERE id = :id"),
                     {"b": entry["buyer"], "s": json.dumps(entry["sellers"]), "id": job_id})
    conn.execute(sa.text("DELETE FROM jobs WHERE buyer_dataset_id IS NULL"))
    conn.execute(sa.text("UPDATE jobs SET seller_dataset_ids = '[]' WHERE seller_dataset_ids IS NULL"))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("seller_dataset_ids", nullable=False)
        batch_op.alter_column("buyer_dataset_id", nullable=False)
        batch_op.create_foreign_key("fk_jobs_buyer_dataset_id_datasets", "datasets", ["buyer_dataset_id"], ["id"],
                                    ondelete="RESTRICT")
        batch_op.drop_index("ix_jobs_claim")
        batch_op.create_index("ix_jobs_claim", ["status", "not_before"], unique=False)
        batch_op.drop_column("lane")
        batch_op.drop_column("resolved_params")
    with op.batch_alter_table("job_datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_datasets_dataset_id"))
    op.drop_table("job_datasets")

"""seller shares bound to the organization whose request they answer

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:10:00

A request id is a content hash: anyone who uploads the same request file gets the same id. Until now a seller's
answer was visible (and scorable) by every organization holding a request with that id; from here on a seller
share names the one buyer organization it answers (``requester_org_id``). Existing seller shares are bound to the
organization that uploaded the request first, the one the seller could have got it from.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shares") as batch:
        batch.add_column(sa.Column("requester_org_id", sa.String(length=32), nullable=True))
        batch.create_index(batch.f("ix_shares_requester_org_id"), ["requester_org_id"], unique=False)
        batch.create_foreign_key(batch.f("fk_shares_requester_org_id_organizations"), "organizations",
                                 ["requester_org_id"], ["id"], ondelete="CASCADE")
    op.execute(sa.text(
        "UPDATE shares SET requester_org_id = ("
        " SELECT r.org_id FROM shares r WHERE r.kind = 'request' AND r.request_id = shares.request_id"
        " AND r.method = shares.method ORDER BY r.created_at, r.id LIMIT 1)"
        " WHERE kind = 'seller'"))


def downgrade() -> None:
    with op.batch_alter_table("shares") as batch:
        batch.drop_constraint(batch.f("fk_shares_requester_org_id_organizations"), type_="foreignkey")
        batch.drop_index(batch.f("ix_shares_requester_org_id"))
        batch.drop_column("requester_org_id")

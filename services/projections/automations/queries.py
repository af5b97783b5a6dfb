"""Reading ``automations``: rules a page at a time, a rule, a rule's firings."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import BigInteger, Table, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection


async def list_rules(
    conn: AsyncConnection,
    tables: dict[str, Table],
    *,
    pipeline_id: UUID | None,
    status: str | None,
    after_position: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Rules not deleted, oldest first, after the rule created at ``after_position``."""
    rules = tables["rules"]
    clauses: list[Any] = [
        rules.c.deleted.is_(False),
        rules.c.created_position > literal(after_position, BigInteger),
    ]
    if pipeline_id is not None:
        clauses.append(rules.c.pipeline_id == str(pipeline_id))
    if status is not None:
        clauses.append(rules.c.status == status)
    query = select(rules).where(*clauses).order_by(rules.c.created_position).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def get_rule(
    conn: AsyncConnection, tables: dict[str, Table], rule_id: UUID
) -> dict[str, Any] | None:
    """A rule that is not deleted, or None."""
    rules = tables["rules"]
    query = select(rules).where(rules.c.rule_id == str(rule_id), rules.c.deleted.is_(False))
    row = (await conn.execute(query)).mappings().first()
    return dict(row) if row is not None else None


async def list_firings(
    conn: AsyncConnection,
    tables: dict[str, Table],
    rule_id: UUID,
    *,
    after_position: int,
    limit: int,
) -> list[dict[str, Any]]:
    """A rule's firings in log order, after ``after_position``."""
    firings = tables["firings"]
    query = (
        select(firings)
        .where(
            firings.c.rule_id == str(rule_id),
            firings.c.position > literal(after_position, BigInteger),
        )
        .order_by(firings.c.position)
        .limit(limit)
    )
    return [dict(r) for r in (await conn.execute(query)).mappings().all()]

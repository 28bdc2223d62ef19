"""Analysis queries over the warehouse. docs/MONITORING_QUERIES.md shows the same SQL (a test
checks it), so what the demo prints is what an operator can run by hand."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres.pool import pg_errors

PAIR_PNL = """
SELECT st.symbol,
       st.orders,
       st.fills,
       st.buy_volume,
       st.sell_volume,
       st.fees,
       st.realized_pnl,
       st.open_quantity,
       (SELECT count(*) FROM orders o
         WHERE o.session_id = st.session_id AND o.symbol = st.symbol
           AND o.kind = 'take_profit' AND o.status = 'filled') AS take_profits_filled
FROM session_pair_stats st
WHERE st.session_id = %(session_id)s
ORDER BY st.symbol
""".strip()


async def pair_pnl(pool: AsyncConnectionPool, session_id: str) -> list[dict[str, Any]]:
    async with pg_errors(), pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(PAIR_PNL, {"session_id": session_id})
        return list(await cur.fetchall())

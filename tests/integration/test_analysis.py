"""The analysis queries (mmops/adapters/postgres/analysis.py) against a real PostgreSQL: each
figure equals the same definition computed here in Python from the raw rows, independently of
the SQL."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres import analysis
from mmops.domain.models import Fill, Side
from mmops.domain.pnl import fifo_pnl

pytestmark = pytest.mark.integration

D = Decimal
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True)
class F:
    symbol: str
    order_id: str
    side: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    timestamp: datetime


@dataclass(frozen=True)
class TP:
    symbol: str
    order_id: str
    position: str
    tier: int | None
    markup: Decimal | None
    amount: Decimal
    generation: int
    created_at: datetime
    status: str
    price: Decimal = Decimal(1)
    amends: int = 0


async def insert(
    pool: AsyncConnectionPool,
    sid: str,
    fills: Iterable[F],
    tps: Iterable[TP] = (),
    prices: Iterable[tuple[str, datetime, Decimal, Decimal]] = (),
    *,
    started_at: datetime = T0,
    ended_at: datetime | None = None,
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO sessions (id, status, mode, exchange, started_at, ended_at, pairs)"
            " VALUES (%s, %s, 'paper', 'paper', %s, %s, '[\"BTC/USD\", \"ETH/USD\"]')",
            (sid, "ended" if ended_at else "active", started_at, ended_at),
        )
        for f in fills:
            await conn.execute(
                "INSERT INTO fills (session_id, order_id, symbol, side, price, quantity, fee,"
                " timestamp) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (sid, f.order_id, f.symbol, f.side, f.price, f.quantity, f.fee, f.timestamp),
            )
        for t in tps:
            await conn.execute(
                "INSERT INTO take_profits (session_id, order_id, symbol, position, tier, markup,"
                " price, amount, generation, amends, created_at, status)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (sid, t.order_id, t.symbol, t.position, t.tier, t.markup, t.price, t.amount,
                 t.generation, t.amends, t.created_at, t.status),
            )  # fmt: skip
        for symbol, when, bid, ask in prices:
            await conn.execute(
                "INSERT INTO prices (session_id, symbol, at, bid, ask) VALUES (%s, %s, %s, %s, %s)",
                (sid, symbol, when, bid, ask),
            )


def buy(symbol: str, oid: str, price: str, qty: str, fee: str, t: float) -> F:
    return F(symbol, oid, "buy", D(price), D(qty), D(fee), at(t))


def sell(symbol: str, oid: str, price: str, qty: str, fee: str, t: float) -> F:
    return F(symbol, oid, "sell", D(price), D(qty), D(fee), at(t))


END = at(7200)
FILLS = [
    buy("BTC/USD", "b1", "100", "1.0", "0.1", 0),
    buy("BTC/USD", "b1", "102", "1.0", "0.1", 10),
    buy("BTC/USD", "b2", "101", "1.0", "0.1", 100),
    buy("BTC/USD", "b3", "99", "0.5", "0.05", 200),
    sell("BTC/USD", "tp3", "100.5", "0.5", "0.05", 400),
    sell("BTC/USD", "tp1", "104", "1.5", "0.2", 600),
    sell("BTC/USD", "tp1", "104", "0.5", "0.05", 700),
    buy("ETH/USD", "e1", "10", "2", "0.02", 50),
    sell("ETH/USD", "tpe", "10.2", "1", "0.01", 500),
]
TPS = [
    TP("BTC/USD", "tp1", "b1", 0, D("0.01"), D("2.0"), 0, at(30), "filled"),
    TP("BTC/USD", "tp2a", "b2", 0, D("0.01"), D("1.0"), 0, at(130), "replaced"),
    TP("BTC/USD", "tp2b", "b2", 60, D("0.006"), D("1.0"), 1, at(3700), "open"),
    TP("BTC/USD", "tp3", "b3", 0, D("0.01"), D("0.5"), 0, at(220), "filled"),
    TP("ETH/USD", "tpe", "e1", 60, D("0.006"), D("2"), 0, at(80), "open", amends=2),
    TP("ETH/USD", "tpx", "e9", None, None, D("1"), 0, at(90), "gone"),  # no buy fills known
]


def nearest_rank(values: Sequence[Decimal], p: float) -> Decimal | None:
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered)) - 1] if ordered else None


def mean(values: Sequence[Decimal]) -> Decimal | None:
    return sum(values, D(0)) / len(values) if values else None


def expected_tiers(fills: Sequence[F], tps: Sequence[TP], end: datetime) -> dict[Any, Any]:
    """The tier report's definitions, from the raw rows."""
    rows: dict[tuple[str, int | None], dict[str, Any]] = {}
    first: dict[str, TP] = {}
    for t in sorted(tps, key=lambda t: (t.created_at, t.generation, t.order_id)):
        first.setdefault(t.position, t)
    for t in tps:
        buys = [f for f in fills if f.side == "buy" and f.order_id == t.position]
        sells = [f for f in fills if f.side == "sell" and f.order_id == t.order_id]
        sold = sum((f.quantity for f in sells), D(0))
        filled = bool(sells) and sold >= t.amount
        basis = opened = None
        if buys:
            qty = sum(f.quantity for f in buys)
            basis = (sum(f.price * f.quantity for f in buys) + sum(f.fee for f in buys)) / qty
            opened = min(f.timestamp for f in buys)
        r = rows.setdefault((t.symbol, t.tier), {
            "placed": 0, "filled": 0, "repriced": 0, "open": 0, "fill_to_tp": [],
            "tp_to_fill": [], "markups": [], "captured": [], "realized": D(0),
            "inventory": D(0),
        })  # fmt: skip
        r["placed"] += 1
        r["filled"] += filled
        r["repriced"] += t.amends > 0 or t.generation > 0 or t.status == "replaced"
        r["open"] += not filled and t.status == "open"
        if first[t.position] is t and opened is not None:
            r["fill_to_tp"].append(D((t.created_at - opened).total_seconds()))
        if t.markup is not None and filled:  # planned over the filled ones, as captured
            r["markups"].append(t.markup)
        if sells and basis is not None and opened is not None:
            net = sum(f.price * f.quantity for f in sells) - sum(f.fee for f in sells)
            last = max(f.timestamp for f in sells)
            r["realized"] += net - basis * sold
            r["inventory"] += basis * sold * D((last - opened).total_seconds()) / 3600
            if filled:
                r["tp_to_fill"].append(D((last - t.created_at).total_seconds()))
                r["captured"].append(net / sold / basis - 1)
        if not filled and t.status == "open" and basis is not None and opened is not None:
            held = D((end - opened).total_seconds())
            r["inventory"] += basis * (t.amount - sold) * held / 3600
    return {
        key: {
            "placed": r["placed"], "filled": r["filled"], "repriced": r["repriced"],
            "open": r["open"],
            "fill_to_tp_p50_s": nearest_rank(r["fill_to_tp"], 0.5),
            "fill_to_tp_p90_s": nearest_rank(r["fill_to_tp"], 0.9),
            "tp_to_fill_p50_s": nearest_rank(r["tp_to_fill"], 0.5),
            "tp_to_fill_p90_s": nearest_rank(r["tp_to_fill"], 0.9),
            "markup_planned": mean(r["markups"]), "markup_captured": mean(r["captured"]),
            "realized_pnl": r["realized"], "inventory_hours": r["inventory"],
        }
        for key, r in rows.items()
    }  # fmt: skip


def close(a: Decimal | None, b: Decimal | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= D("1e-12") * max(D(1), abs(b))


def assert_rows_match(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name, value in want.items():
        if isinstance(value, Decimal) or value is None:
            assert close(got[name], value), (name, got[name], value)
        else:
            assert got[name] == value, (name, got[name], value)


@pytest.fixture
def sid() -> str:
    return f"an-{uuid.uuid4().hex[:10]}"


async def test_tier_report_follows_its_definitions_on_raw_rows(
    pool: AsyncConnectionPool, sid: str
) -> None:
    await insert(pool, sid, FILLS, TPS, ended_at=END)
    rows = await analysis.tier_report(pool, sid)
    want = expected_tiers(FILLS, TPS, END)
    assert {(r["symbol"], r["tier"]) for r in rows} == set(want)
    for r in rows:
        assert r["session_id"] == sid
        assert_rows_match(r, want[(r["symbol"], r["tier"])])
    assert all(isinstance(r["realized_pnl"], Decimal) for r in rows)
    # The BTC/USD tier-0 row by hand: tp1 and tp3 filled, tp2a replaced.
    [btc0] = [r for r in rows if (r["symbol"], r["tier"]) == ("BTC/USD", 0)]
    assert (btc0["placed"], btc0["filled"], btc0["repriced"], btc0["open"]) == (3, 2, 1, 0)
    [eth60] = [r for r in rows if (r["symbol"], r["tier"]) == ("ETH/USD", 60)]
    assert eth60["repriced"] == 1  # tpe: amended in place twice, one take-profit repriced


async def test_tier_report_without_a_session_covers_every_session(
    pool: AsyncConnectionPool, sid: str
) -> None:
    other = sid + "-b"
    await insert(pool, sid, FILLS, TPS, ended_at=END)
    await insert(pool, other, FILLS[:1], TPS[:1], ended_at=END)
    rows = await analysis.tier_report(pool, None)
    mine = [r for r in rows if r["session_id"] in (sid, other)]
    assert {r["session_id"] for r in mine} == {sid, other}
    [alone] = [r for r in mine if r["session_id"] == other]
    assert (alone["placed"], alone["filled"], alone["open"]) == (1, 0, 0)


async def test_funnel_and_time_to_fill_agree_with_the_tier_report(
    pool: AsyncConnectionPool, sid: str
) -> None:
    await insert(pool, sid, FILLS, TPS, ended_at=END)
    funnel = {r["tier"]: r for r in await analysis.tp_funnel(pool, sid)}
    tiers = await analysis.tier_report(pool, sid)
    for tier, row in funnel.items():
        of_tier = [r for r in tiers if r["tier"] == tier]
        for name in ("placed", "repriced", "filled", "open"):
            assert row[name] == sum(r[name] for r in of_tier), (tier, name)
    samples = await analysis.time_to_fill(pool, sid)
    assert sorted(r["order_id"] for r in samples) == ["tp1", "tp3"]
    by_id = {r["order_id"]: r["seconds"] for r in samples}
    assert by_id == {"tp1": D(670), "tp3": D(180)}


def as_fill(sid: str, f: F) -> Fill:
    return Fill(
        session_id=sid, order_id=f.order_id, symbol=f.symbol, side=Side(f.side),
        price=f.price, quantity=f.quantity, fee=f.fee, timestamp=f.timestamp,
    )  # fmt: skip


def random_fills(rng: random.Random, symbol: str, n: int) -> list[F]:
    """Buys and sells in any order (shorts too), some at the same instant."""
    out = []
    for i in range(n):
        side = rng.choice(["buy", "buy", "sell"])
        price = D(rng.randint(900, 1100)) / 10
        qty = D(rng.randint(1, 40)) / 10
        fee = D(rng.randint(0, 20)) / 100
        out.append(F(symbol, f"o{rng.randint(0, 9)}", side, price, qty, fee, at(i // 2 * 5)))
    return out


async def test_pnl_series_is_fifo_realized_after_every_fill(
    pool: AsyncConnectionPool, sid: str
) -> None:
    rng = random.Random(7)
    fills = random_fills(rng, "BTC/USD", 60) + random_fills(rng, "ETH/USD", 25)
    fills = list(
        {(f.symbol, f.order_id, f.timestamp, f.price, f.quantity): f for f in fills}.values()
    )
    await insert(pool, sid, fills)
    series = await analysis.pnl_series(pool, sid)
    for symbol in ("BTC/USD", "ETH/USD"):
        points = [p for p in series if p["symbol"] == symbol]
        mine = sorted(
            (as_fill(sid, f) for f in fills if f.symbol == symbol),
            key=lambda f: (f.timestamp, f.order_id, f.price, f.quantity),
        )
        assert len(points) == len(mine)
        for k, point in enumerate(points):
            assert point["at"] == mine[k].timestamp
            assert point["cumulative_pnl"] == fifo_pnl(sid, symbol, mine[: k + 1]).realized, k


async def test_coverage_series_counts_a_replaced_take_profit_until_its_successor(
    pool: AsyncConnectionPool, sid: str
) -> None:
    await insert(pool, sid, FILLS, TPS, ended_at=END)
    rows = [r for r in await analysis.coverage_series(pool, sid) if r["symbol"] == "BTC/USD"]
    by_time = {r["at"]: r for r in rows}
    assert [r["at"] for r in rows] == sorted(by_time)
    assert by_time[at(0)]["bought"] == D("1.0") and by_time[at(0)]["covered"] == 0
    assert by_time[at(10)]["bought"] == D("2.0")
    assert by_time[at(30)]["covered"] == D("2.0")  # tp1 covers b1
    assert by_time[at(100)]["uncovered"] == D("1.0")  # b2 bought, not covered yet
    assert by_time[at(130)]["covered"] == D("3.0")
    assert close(by_time[at(200)]["ratio"], D("3.0") / D("3.5"))
    assert by_time[at(220)]["uncovered"] == 0
    # tp2a (replaced) keeps covering b2 until tp2b is placed, which then covers it: no double count
    assert by_time[at(3700)]["covered"] == D("3.5")


async def test_markouts_take_the_first_mid_within_ten_minutes_after_each_horizon(
    pool: AsyncConnectionPool, sid: str
) -> None:
    fills = [buy("BTC/USD", "b1", "100", "1", "0", 0), buy("BTC/USD", "b2", "110", "1", "0", 400)]
    prices = [
        ("BTC/USD", at(30), D("99"), D("101")),
        ("BTC/USD", at(60), D("100"), D("102")),  # mid 101 exactly at b1 + 1 min
        ("BTC/USD", at(320), D("103"), D("105")),  # mid 104
        ("BTC/USD", at(500), D("108"), D("110")),  # mid 109
        ("BTC/USD", at(4300), D("119"), D("121")),  # mid 120: b2 + 65 min; b1 + 71 min
        ("ETH/USD", at(3600), D("1"), D("2")),  # another pair: never used
    ]
    await insert(pool, sid, fills, prices=prices)
    rows = await analysis.markouts(pool, sid)
    by_order = {r["order_id"]: r for r in rows}
    assert by_order["b1"]["markout_1m_bps"] == D(100)  # (101 - 100) / 100 * 10 000
    assert by_order["b1"]["markout_5m_bps"] == D(400)  # first at or after 300 s: 320 s
    assert by_order["b1"]["markout_1h_bps"] is None  # 11 min past its hour: not its 1 h mid
    b2_1h = (D(120) - D(110)) / D(110) * 10000
    assert close(by_order["b2"]["markout_1h_bps"], b2_1h)
    assert close(by_order["b2"]["markout_1m_bps"], (D(109) - D(110)) / D(110) * 10000)
    assert by_order["b2"]["markout_5m_bps"] is None
    avg_1m = (D(100) + (D(109) - D(110)) / D(110) * 10000) / 2
    assert all(close(r["pair_avg_1m_bps"], avg_1m) for r in rows)
    assert all(r["pair_avg_5m_bps"] == D(400) for r in rows)
    assert all(close(r["pair_avg_1h_bps"], b2_1h) for r in rows)


async def test_overview_splits_realized_pnl_at_midnight_utc(
    pool: AsyncConnectionPool, sid: str
) -> None:
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    early = midnight - timedelta(hours=3)
    fills = [
        F("BTC/USD", "b1", "buy", D(100), D(2), D("0.1"), early),
        F("BTC/USD", "s1", "sell", D(103), D(1), D("0.1"), early + timedelta(hours=1)),
        F("BTC/USD", "s2", "sell", D(99), D(1), D("0.1"), midnight + timedelta(seconds=1)),
    ]
    tps = [TP("BTC/USD", "s1", "b1", 0, D("0.01"), D(1), 0, early, "filled")]
    # Newest (overview lists the newest first), and clear of the far-future window that
    # tests/integration/test_session_registry.py keeps for itself (100 years on) in the shared
    # database.
    await insert(pool, sid, fills, tps, started_at=now + timedelta(days=20_000))
    whole = fifo_pnl(sid, "BTC/USD", [as_fill(sid, f) for f in fills])
    before = fifo_pnl(sid, "BTC/USD", [as_fill(sid, f) for f in fills if f.timestamp < midnight])
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO session_pair_stats (session_id, symbol, realized_pnl) VALUES (%s, %s, %s)",
            (sid, "BTC/USD", whole.realized),
        )
        await conn.execute(
            "INSERT INTO settlement_runs (session_id, worker, state, started_at, finished_at,"
            " duration_ms, details) VALUES (%s, 'w', 'ok', now(), now(), 1, %s)",
            (sid, '{"stoploss": {"stoploss_level": "warn", "drawdown": "0.07"}}'),
        )
    [row] = [r for r in await analysis.overview(pool, limit=5) if r["session_id"] == sid]
    assert row["realized_pnl"] == whole.realized
    assert row["realized_pnl_today"] == whole.realized - before.realized
    assert row["coverage_ratio"] == D("0.5")  # 1 of the 2 bought covered by a filled TP
    assert row["stoploss_level"] == "warn" and row["drawdown"] == D("0.07")
    assert row["pairs"] == ["BTC/USD", "ETH/USD"]

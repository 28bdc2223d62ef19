"""Fill → take-profit latency: how long a new buy fill waits for its take-profit.

The live path, end to end: a buy fills on the venue; the fill feed reads the execution
(``PaperFeed`` here, Kraken WebSocket v2 in ``--venue kraken``), records it as a fill of its
session (which announces it on ``events:fills``); the settle trigger reads the event, waits
its debounce and settles the pair, under the session lock and the fence; the take-profit is
accepted by the venue. Latency = the venue's creation time of the take-profit minus the
moment the venue made the fill (both on this machine's clock).

Prints one JSON object per case: p50 / p99 / max over ``--fills`` fills (at least 200), with
fills spread over ``--pairs`` pairs, one every ``--every`` seconds.

Servers: MMOPS_TEST_REDIS_URL / MMOPS_TEST_DATABASE_URL as the tests use them, else embedded.
Run: .venv/bin/python bench/latency.py [--fills 200] [--latency-ms 0 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmops import logs
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.paper.feed import PaperFeed
from mmops.bootstrap import build_feed, build_trigger
from mmops.domain.exchange import OrderRequest
from mmops.domain.ids import client_order_id
from mmops.domain.models import Order, Side
from mmops.domain.rounding import round_amount_down, round_price_up
from tests.integration.world import PAIRS, World, world
from tests.servers import bench_servers

DEBOUNCE = 0.1


@dataclass
class Case:
    venue: str
    latency_ms: int
    fills: int
    pairs: int
    every: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def paper_case(redis_url: str, database_url: str, case: Case) -> dict[str, object]:
    async with world(redis_url, database_url, settle_debounce=DEBOUNCE) as w:
        pairs = PAIRS[: case.pairs]
        sid = await w.start_session(pairs)
        venue = w.venue(latency=case.latency_ms / 1000)
        settlement = w.settlement(venue)
        feed = build_feed(w.rt, venue, PaperFeed(venue, poll=0.02))
        trigger = build_trigger(w.rt, settlement)
        stop = asyncio.Event()
        loops = [asyncio.create_task(feed.run(stop)), asyncio.create_task(trigger.run(stop))]
        await w.exchange.match(w.rt.clock.now())  # starts the venue's match clock
        await asyncio.sleep(0.5)  # the feed has caught up and is streaming
        # The market maker's side and the measurement use a handle without the latency.
        filled_at = await drive_fills(w, w.exchange, sid, pairs, case)
        latencies = await wait_for_take_profits(w, w.exchange, sid, filled_at, timeout=30)
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
        return summary(case, latencies, filled_at, trigger.stats.runs)


async def drive_fills(
    w: World, venue: PaperExchange, sid: str, pairs: tuple[str, ...], case: Case
) -> dict[str, float]:
    """Buy with crossing limit orders (not post-only) and match at once: one fill each.
    Returns the wall time of each fill by its order id (= the position id)."""
    markets = await venue.markets()
    filled_at: dict[str, float] = {}
    for i in range(case.fills):
        pair = pairs[i % len(pairs)]
        market = markets[pair]
        ask = (await venue.tickers([pair]))[pair].ask
        price = round_price_up(ask * Decimal("1.002"), market.tick)
        amount = max(round_amount_down(Decimal(40) / price, market.lot), market.min_amount)
        cid = client_order_id(sid, f"bench-buy-{i}", 0)
        [result] = await venue.place_batch(
            [OrderRequest(pair, Side.BUY, amount, price, cid, post_only=False)]
        )
        if result.order is None:
            raise RuntimeError(f"bench buy refused: {result.error}")
        o = result.order  # recorded as the session's order, as a market maker records it
        await w.rt.orders.save(Order(sid, o.id, pair, Side.BUY, o.price, o.amount, o.created_at,
                                     client_order_id=cid))  # fmt: skip
        await w.exchange.match(w.rt.clock.now(), step_seconds=3600)
        filled_at[o.id] = time.time()
        await asyncio.sleep(case.every)
    return filled_at


async def wait_for_take_profits(
    w: World, venue: PaperExchange, sid: str, filled_at: dict[str, float], timeout: float
) -> dict[str, float]:
    """Per position, seconds from its fill to its take-profit's creation on the venue."""
    deadline = time.monotonic() + timeout
    latencies: dict[str, float] = {}
    while time.monotonic() < deadline and len(latencies) < len(filled_at):
        pending = [pid for pid in filled_at if pid not in latencies]
        read = await w.rt.positions.read_many(sid, pending)
        for position in read.items:
            for order_id, _ in position.take_profits:
                order = await venue.fetch_order(position.symbol, order_id)
                at = order.created_at.timestamp()
                latencies[position.position_id] = at - filled_at[position.position_id]
                break
        await asyncio.sleep(0.2)
    return latencies


async def kraken_case(
    redis_url: str, database_url: str, case: Case, tier: str
) -> dict[str, object]:
    """The same path against the local Kraken server (REST with ``case.latency_ms`` per call,
    WebSocket v2 executions): resting bids recorded as the session's orders (as a market
    maker records its quotes), filled by the server one every ``case.every`` seconds."""
    from mmops.adapters.exchanges.kraken_feed import KrakenFeed
    from tests.kraken_server import KrakenServer, make_ccxt_exchange

    with KrakenServer(rest_tier=tier) as server:
        async with (
            world(redis_url, database_url, settle_debounce=DEBOUNCE) as w,
            make_ccxt_exchange(server, ticker_ttl=0.0) as kraken,
        ):
            pairs = PAIRS[: case.pairs]
            sid = await w.start_session(pairs)
            server.fund("USD", "10000000")
            server.fund("EUR", "10000000")
            bids = await _resting_bids(w, server, kraken, sid, pairs, case.fills)
            server.latency = case.latency_ms / 1000
            feed = KrakenFeed(kraken, ws_url=server.ws_url)
            service = build_feed(w.rt, kraken, feed)
            trigger = build_trigger(w.rt, w.settlement(kraken))
            stop = asyncio.Event()
            loops = [asyncio.create_task(service.run(stop)), asyncio.create_task(trigger.run(stop))]
            while server.ws_subscribers() == 0:
                await asyncio.sleep(0.05)
            filled_at: dict[str, float] = {}
            for order_id in bids:
                server.fill(order_id)
                filled_at[order_id] = time.time()
                await asyncio.sleep(case.every)
            latencies = await _kraken_latencies(w, kraken, sid, filled_at, timeout=60)
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)
            await feed.close()
            result = summary(case, latencies, filled_at, trigger.stats.runs)
            result["rest_tier"] = tier
            result["rest_refusals"] = server.stats.rest_refusals
            return result


async def _resting_bids(
    w: World, server: object, kraken: object, sid: str, pairs: tuple[str, ...], n: int
) -> list[str]:
    """``n`` post-only bids below the book, spread over ``pairs``, recorded in the session."""
    markets = await kraken.markets()  # type: ignore[attr-defined]
    tickers = await kraken.tickers(list(pairs))  # type: ignore[attr-defined]
    by_pair: dict[str, list[OrderRequest]] = {p: [] for p in pairs}
    for i in range(n):
        pair = pairs[i % len(pairs)]
        market = markets[pair]
        price = round_price_up(tickers[pair].bid * Decimal("0.99"), market.tick)
        amount = max(round_amount_down(Decimal(40) / price, market.lot), market.min_amount)
        cid = client_order_id(sid, f"bench-bid-{i}", 0)
        by_pair[pair].append(OrderRequest(pair, Side.BUY, amount, price, cid))
    ids: list[str] = []
    for pair, requests in by_pair.items():
        for start in range(0, len(requests), 15):
            for r in await kraken.place_batch(requests[start : start + 15]):  # type: ignore[attr-defined]
                if r.order is None:
                    raise RuntimeError(f"bench bid refused: {r.error}")
                o = r.order
                cid = o.client_order_id
                order = Order(sid, o.id, pair, Side.BUY, o.price, o.amount, o.created_at,
                              client_order_id=cid)  # fmt: skip
                await w.rt.orders.save(order)
                ids.append(o.id)
    # Interleave the pairs, as fills of a multi-pair market maker arrive.
    return sorted(ids, key=lambda oid: ids.index(oid) % (n // len(pairs) or 1))


async def _kraken_latencies(
    w: World, kraken: object, sid: str, filled_at: dict[str, float], timeout: float
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    tp_of: dict[str, str] = {}
    while time.monotonic() < deadline and len(tp_of) < len(filled_at):
        pending = [pid for pid in filled_at if pid not in tp_of]
        for position in (await w.rt.positions.read_many(sid, pending)).items:
            if position.take_profits:
                tp_of[position.position_id] = position.take_profits[0][0]
        await asyncio.sleep(0.2)
    orders = await kraken.fetch_orders(list(tp_of.values()))  # type: ignore[attr-defined]
    return {
        pid: orders[oid].created_at.timestamp() - filled_at[pid]
        for pid, oid in tp_of.items()
        if oid in orders
    }


def summary(
    case: Case, latencies: dict[str, float], filled_at: dict[str, float], runs: int
) -> dict[str, object]:
    values = list(latencies.values())
    return {
        "bench": "latency",
        "venue": case.venue,
        "latency_ms": case.latency_ms,
        "fills": len(filled_at),
        "covered": len(values),
        "pairs": case.pairs,
        "fill_every_s": case.every,
        "debounce_s": DEBOUNCE,
        "triggered_runs": runs,
        "p50_s": round(statistics.median(values), 4) if values else None,
        "p99_s": round(percentile(values, 0.99), 4) if values else None,
        "max_s": round(max(values), 4) if values else None,
        "mean_s": round(statistics.fmean(values), 4) if values else None,
    }


async def main(args: argparse.Namespace) -> None:
    logs.configure("ERROR", "console")
    with bench_servers() as (redis_url, database_url):
        if "paper" in args.venue:
            for latency_ms in args.latency_ms:
                case = Case("paper", latency_ms, args.fills, args.pairs, args.every)
                print(json.dumps(await paper_case(redis_url, database_url, case)), flush=True)
        if "kraken" in args.venue:
            case = Case("kraken", args.kraken_latency_ms, args.fills, args.pairs, args.every)
            result = await kraken_case(redis_url, database_url, case, args.tier)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--every", type=float, default=0.1, help="seconds between fills")
    parser.add_argument("--latency-ms", type=int, nargs="+", default=[0, 50], help="paper")
    parser.add_argument("--venue", nargs="+", default=["paper", "kraken"])
    parser.add_argument("--kraken-latency-ms", type=int, default=50)
    parser.add_argument("--tier", default="intermediate", help="the Kraken REST counter tier")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))

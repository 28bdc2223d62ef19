"""A market maker that is not mmops: it feeds mmops through the ingest stream exactly as
docs/INGEST.md tells a user to, with redis-py and the standard library only (no mmops import).

It starts a session on the given pairs, quotes and fills buys for some seconds (an order, its
fills with the venue's trade ids, the order again as filled), sends one fill twice (a reconnect
replaying an execution) and one malformed message, ends the session, and prints a JSON summary
of what it sent on stdout.

    python tests/e2e/external_mm.py --redis-url redis://127.0.0.1:6379/15 \\
        --session my-mm-1 --pairs BTC/USD,ETH/USD --seconds 3
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime
from decimal import Decimal

import redis

PRICES = {"BTC/USD": Decimal("60000"), "ETH/USD": Decimal("3000"), "SOL/USD": Decimal("150")}


def now() -> str:
    return datetime.now(UTC).isoformat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--stream", default="mmops:ingest")
    parser.add_argument("--session", required=True)
    parser.add_argument("--pairs", default="BTC/USD,ETH/USD")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between buys")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    r = redis.Redis.from_url(args.redis_url, decode_responses=True)
    rng = random.Random(args.seed)
    pairs = args.pairs.split(",")

    def send(**fields: str) -> str:
        return str(r.xadd(args.stream, fields))

    send(type="session_start", session=args.session, pairs=args.pairs, capital="10000.00",
         started_at=now(), exchange="paper")  # fmt: skip

    fills: dict[str, list[str]] = {pair: [] for pair in pairs}  # pair → trade ids
    replayed: dict[str, str] | None = None
    n = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        pair = pairs[n % len(pairs)]
        base = PRICES.get(pair, Decimal("100"))
        price = (base * Decimal(1 - rng.random() / 100)).quantize(Decimal("0.01"))
        amount = Decimal(rng.randint(1, 100)) / 1000
        order_id = f"ext-{args.session}-{n}"
        order = {
            "type": "order", "session": args.session, "pair": pair, "order_id": order_id,
            "side": "buy", "price": str(price), "amount": str(amount), "filled": "0",
            "status": "open", "client_order_id": f"cl-{n}", "created_at": now(),
        }  # fmt: skip
        send(**order)
        first = (amount / 2).quantize(Decimal("0.0001"))
        for part, quantity in enumerate((first, amount - first)):
            trade_id = f"TR{n}x{part}"
            fill = {
                "type": "fill", "session": args.session, "pair": pair, "order_id": order_id,
                "side": "buy", "price": str(price), "quantity": str(quantity),
                "fee": str((price * quantity * Decimal("0.0016")).quantize(Decimal("0.0001"))),
                "trade_id": trade_id, "time": now(),
            }  # fmt: skip
            send(**fill)
            fills[pair].append(trade_id)
            replayed = replayed or fill
        send(**{**order, "filled": str(amount), "status": "filled"})
        n += 1
        time.sleep(args.interval)

    assert replayed is not None, "no time to trade: raise --seconds"
    duplicate_id = send(**replayed)  # a reconnect replays an execution: mmops records it once
    malformed_id = send(
        type="fill", session=args.session, pair=pairs[0], order_id=f"ext-{args.session}-0",
        side="buy", price="-5", quantity="1", time=now(), trade_id="BAD1",
    )  # fmt: skip
    send(type="session_end", session=args.session, ended_at=now())
    r.close()
    summary = {
        "session": args.session,
        "orders": n,
        "fills": {pair: len(ids) for pair, ids in fills.items()},
        "duplicate_id": duplicate_id,
        "malformed_id": malformed_id,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

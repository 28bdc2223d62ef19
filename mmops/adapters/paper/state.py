"""The paper venue's state in Redis: key names and record encoding.

All keys of one venue share the hash tag ``{V}`` so a transaction may span them on a cluster.

| key | type | contents |
|---|---|---|
| ``paper:{V}:balances`` | HASH | asset → ``"total|used"`` (decimal strings) |
| ``paper:{V}:orders`` | HASH | order id → JSON order |
| ``paper:{V}:open`` | SET | ids of open orders |
| ``paper:{V}:clients`` | HASH | client order id → order id |
| ``paper:{V}:trades`` | LIST | JSON trades, oldest first (a reader keeps its own index) |
| ``paper:{V}:rate`` | HASH | symbol → ``"value|at"``: the trading counter |
| ``paper:{V}:adjust`` | HASH | symbol → price multiplier (a test's or demo's price shock) |
| ``paper:{V}:seq`` | STRING | counter for order and trade ids |
| ``paper:{V}:matched_at`` | STRING | epoch seconds up to which resting orders were matched |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from mmops.domain.exchange import ExchangeOrder, Trade
from mmops.domain.models import ZERO, OrderStatus, Side, check_session_id


class VenueKeys:
    def __init__(self, venue: str) -> None:
        tag = "{" + check_session_id(venue) + "}"
        self.balances = f"paper:{tag}:balances"
        self.orders = f"paper:{tag}:orders"
        self.open = f"paper:{tag}:open"
        self.clients = f"paper:{tag}:clients"
        self.trades = f"paper:{tag}:trades"
        self.rate = f"paper:{tag}:rate"
        self.adjust = f"paper:{tag}:adjust"
        self.seq = f"paper:{tag}:seq"
        self.matched_at = f"paper:{tag}:matched_at"
        self.pattern = f"paper:\\{{{venue}\\}}:*"

    @property
    def all(self) -> list[str]:
        return [
            self.balances, self.orders, self.open, self.clients, self.trades,
            self.rate, self.adjust, self.seq, self.matched_at,
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Holding:
    total: Decimal
    used: Decimal

    @property
    def free(self) -> Decimal:
        return self.total - self.used

    def encode(self) -> str:
        return f"{self.total}|{self.used}"

    @staticmethod
    def decode(raw: str | None) -> Holding:
        if not raw:
            return Holding(ZERO, ZERO)
        total, used = raw.split("|")
        return Holding(Decimal(total), Decimal(used))


@dataclass(frozen=True, slots=True)
class PaperOrder:
    """An order with what the venue needs beyond ``ExchangeOrder``: the hold it reserved."""

    order: ExchangeOrder
    hold: Decimal  # amount of the held asset still reserved (base for sells, quote for buys)

    def encode(self) -> str:
        o = self.order
        return json.dumps(
            {
                "id": o.id, "symbol": o.symbol, "side": o.side.value, "price": str(o.price),
                "amount": str(o.amount), "filled": str(o.filled), "status": o.status.value,
                "created_at": o.created_at.timestamp(), "client_order_id": o.client_order_id,
                "hold": str(self.hold),
            },
            separators=(",", ":"),
        )  # fmt: skip

    @staticmethod
    def decode(raw: str) -> PaperOrder:
        d: dict[str, Any] = json.loads(raw)
        order = ExchangeOrder(
            id=d["id"],
            symbol=d["symbol"],
            side=Side(d["side"]),
            price=Decimal(d["price"]),
            amount=Decimal(d["amount"]),
            status=OrderStatus(d["status"]),
            created_at=datetime.fromtimestamp(d["created_at"], UTC),
            filled=Decimal(d["filled"]),
            client_order_id=d["client_order_id"],
        )
        return PaperOrder(order, Decimal(d["hold"]))

    def with_fill(self, qty: Decimal, hold_released: Decimal) -> PaperOrder:
        filled = self.order.filled + qty
        status = OrderStatus.FILLED if filled >= self.order.amount else OrderStatus.OPEN
        return PaperOrder(
            replace(self.order, filled=filled, status=status), self.hold - hold_released
        )


def encode_trade(t: Trade) -> str:
    return json.dumps(
        {
            "id": t.id, "order_id": t.order_id, "symbol": t.symbol, "side": t.side.value,
            "price": str(t.price), "amount": str(t.amount), "fee": str(t.fee),
            "timestamp": t.timestamp.timestamp(), "client_order_id": t.client_order_id,
        },
        separators=(",", ":"),
    )  # fmt: skip


def decode_trade(raw: str) -> Trade:
    d: dict[str, Any] = json.loads(raw)
    return Trade(
        id=d["id"],
        order_id=d["order_id"],
        symbol=d["symbol"],
        side=Side(d["side"]),
        price=Decimal(d["price"]),
        amount=Decimal(d["amount"]),
        fee=Decimal(d["fee"]),
        timestamp=datetime.fromtimestamp(d["timestamp"], UTC),
        client_order_id=d["client_order_id"],
    )
